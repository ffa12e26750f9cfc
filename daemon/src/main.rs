//! `openledger`: the OpenLedger daemon and admin CLI. Each subcommand lives in its own file under `cli/`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    openledger_daemon::cli::main().await
}
