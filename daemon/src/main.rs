//! `openledger`: the OpenLedger daemon and admin CLI. Each subcommand lives in its own file under `cli/`.

mod cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::main().await
}
