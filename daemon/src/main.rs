//! `openledger`: the OpenLedger daemon and admin CLI. Each subcommand lives in its own file under `cli/`.

fn main() -> std::process::ExitCode {
    // before the async runtime starts any thread (see cli/malloc.rs)
    openledger_daemon::cli::malloc::tune_for_training();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(openledger_daemon::cli::main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
