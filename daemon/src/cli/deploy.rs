//! `openledger deploy`: deploys the contract suite with `scripts/deploy.sh` (forge script; idempotent) and
//! checks the manifest it writes. The deployer key comes from DEPLOYER_PRIVATE_KEY, never an argument.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use openledger_chain::Deployment;

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// JSON-RPC endpoint to deploy to.
    #[arg(
        long,
        env = "OPENLEDGER_RPC_URL",
        default_value = super::devstack::DEFAULT_RPC_URL
    )]
    pub rpc_url: String,
    /// Deployment config under contracts/script/config/.
    #[arg(long, default_value = "local.json")]
    pub config: String,
    /// Deploy a new suite even if the manifest's contracts exist on that chain.
    #[arg(long)]
    pub force: bool,
    /// Where to write the manifest [default: deployments/<chain id>.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The OpenLedger source tree (holds contracts/ and scripts/).
    #[arg(long, env = "OPENLEDGER_REPO", default_value = ".")]
    pub repo: PathBuf,
}

pub async fn run(global: &GlobalArgs, args: DeployArgs) -> anyhow::Result<()> {
    let script = args.repo.join("scripts/deploy.sh");
    anyhow::ensure!(
        script.exists(),
        "{} not found: run from the OpenLedger source tree or pass --repo",
        script.display()
    );
    let out = tempfile_path(&args)?;
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script)
        .args([
            "--rpc-url",
            &args.rpc_url,
            "--config",
            &args.config,
            "--out",
        ])
        .arg(&out);
    if args.force {
        cmd.arg("--force");
    }
    cmd.current_dir(&args.repo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let bar = indicatif::ProgressBar::new_spinner();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message(format!("deploying to {}", args.rpc_url));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let output = cmd.output().await.context("running scripts/deploy.sh")?;
    bar.finish_and_clear();
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        anyhow::bail!("deployment failed ({})", output.status);
    }
    let d = Deployment::load(&out)?;
    if global.json {
        println!(
            "{}",
            serde_json::json!({ "manifest": out, "chain_id": d.chain_id,
            "contracts": d.contracts.iter().map(|(k, v)| (k.clone(), format!("{:#x}", v.address))).collect::<std::collections::BTreeMap<_, _>>() })
        );
    } else {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        println!("manifest {} (chain {})", out.display(), d.chain_id);
        for (name, c) in &d.contracts {
            println!("  {name:<20} {:#x}  block {}", c.address, c.block);
        }
    }
    Ok(())
}

fn tempfile_path(args: &DeployArgs) -> anyhow::Result<PathBuf> {
    if let Some(o) = &args.out {
        return Ok(if o.is_absolute() {
            o.clone()
        } else {
            std::env::current_dir()?.join(o)
        });
    }
    // deploy.sh's own default is deployments/<chain id>.json under the repo; ask the node for the id
    let id = std::process::Command::new(args.repo.join(".tools/bin/cast"))
        .args(["chain-id", "--rpc-url", &args.rpc_url])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no JSON-RPC node answers at {} (or .tools/bin/cast is missing: run scripts/setup.sh)", args.rpc_url))?;
    Ok(args.repo.join(format!("deployments/{id}.json")))
}
