//! The local stack `scripts/dev.sh` runs, found through the file it writes while it runs (and removes on
//! exit): `$OPENLEDGER_DEV_STACK`, else `$XDG_STATE_HOME/openledger/dev-stack.env`, else
//! `~/.local/state/openledger/dev-stack.env`. Lines are `export NAME=value` (a shell may `source` it).
//!
//! Every subcommand but `serve` and `deploy` uses the stack's database, data directory, node, manifest
//! (an absolute path, so commands work from any directory) and API wherever neither the command line nor
//! the environment names one: `openledger status`, `keys create` or `settle list` beside `scripts/dev.sh`
//! see the stack's database instead of starting an empty one of their own.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The JSON-RPC endpoint when nothing names one.
pub const DEFAULT_RPC_URL: &str = "http://127.0.0.1:8545";
/// The daemon's address when nothing names one.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080";
/// The file's name under the state directory.
pub const FILE_NAME: &str = "dev-stack.env";

/// What a running dev stack tells the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevStack {
    /// The file it was read from.
    pub path: PathBuf,
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub rpc_url: Option<String>,
    pub manifest: Option<PathBuf>,
    pub api_url: Option<String>,
    /// The `serve` process of the stack: a file whose process is gone is stale and ignored.
    pub pid: Option<u32>,
}

static CURRENT: OnceLock<Option<DevStack>> = OnceLock::new();

/// Where the file is looked for.
pub fn file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPENLEDGER_DEV_STACK") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    if let Some(s) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(s).join("openledger").join(FILE_NAME));
    }
    std::env::var_os("HOME").map(|h| {
        PathBuf::from(h)
            .join(".local/state/openledger")
            .join(FILE_NAME)
    })
}

/// Parses the file's text; relative paths are taken from the file's directory.
pub fn parse(path: &Path, text: &str) -> DevStack {
    let mut s = DevStack {
        path: path.to_path_buf(),
        ..DevStack::default()
    };
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let value = value
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_owned();
        if value.is_empty() {
            continue;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        match name.trim() {
            "DATABASE_URL" => s.database_url = Some(value),
            "OPENLEDGER_DATA_DIR" => s.data_dir = Some(dir.join(value)),
            "OPENLEDGER_RPC_URL" => s.rpc_url = Some(value),
            "OPENLEDGER_MANIFEST" => s.manifest = Some(dir.join(value)),
            "OPENLEDGER_URL" => s.api_url = Some(value),
            "OPENLEDGER_DEV_PID" => s.pid = value.parse().ok(),
            _ => {}
        }
    }
    s
}

/// Whether process `pid` still runs (where `/proc` tells; elsewhere assumed).
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Reads the file, if there is one and its stack still runs.
pub fn find() -> Option<DevStack> {
    let path = file()?;
    let text = std::fs::read_to_string(&path).ok()?;
    let stack = parse(&path, &text);
    if let Some(pid) = stack.pid
        && !alive(pid)
    {
        tracing::debug!(file = %path.display(), pid, "ignoring the dev stack file: its daemon is gone");
        return None;
    }
    Some(stack)
}

/// Decides once, before the subcommand runs, whether this process follows a dev stack.
pub fn init(follow: bool) {
    let _ = CURRENT.set(if follow { find() } else { None });
}

/// The dev stack this process follows, if any.
pub fn current() -> Option<&'static DevStack> {
    CURRENT.get().and_then(Option::as_ref)
}

/// The JSON-RPC endpoint: the one named, else the dev stack's, else [`DEFAULT_RPC_URL`].
pub fn rpc_url(named: Option<&str>) -> String {
    named
        .map(str::to_owned)
        .or_else(|| current().and_then(|s| s.rpc_url.clone()))
        .unwrap_or_else(|| DEFAULT_RPC_URL.to_owned())
}

/// The daemon's address: the one named, else the dev stack's, else [`DEFAULT_API_URL`].
pub fn api_url(named: Option<&str>) -> String {
    named
        .map(str::to_owned)
        .or_else(|| current().and_then(|s| s.api_url.clone()))
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_read_as_a_shell_would_and_paths_are_made_absolute() {
        let p = Path::new("/home/u/.local/state/openledger/dev-stack.env");
        let s = parse(
            p,
            "# written by scripts/dev.sh\nexport DATABASE_URL=postgres://openledger@127.0.0.1:5544/openledger\n\
             export OPENLEDGER_DATA_DIR=/repo/.dev/openledger\nOPENLEDGER_RPC_URL='http://127.0.0.1:9545'\n\
             export OPENLEDGER_MANIFEST=\"/repo/deployments/7331.json\"\nexport OPENLEDGER_URL=\n\
             export OPENLEDGER_DEV_PID=4242\nexport PATH=/repo/.tools/bin:$PATH\n",
        );
        assert_eq!(
            s.database_url.as_deref(),
            Some("postgres://openledger@127.0.0.1:5544/openledger")
        );
        assert_eq!(s.data_dir, Some(PathBuf::from("/repo/.dev/openledger")));
        assert_eq!(s.rpc_url.as_deref(), Some("http://127.0.0.1:9545"));
        assert_eq!(
            s.manifest,
            Some(PathBuf::from("/repo/deployments/7331.json"))
        );
        assert_eq!(s.api_url, None, "an empty value names nothing");
        assert_eq!(s.pid, Some(4242));
        let rel = parse(p, "OPENLEDGER_MANIFEST=m.json");
        assert_eq!(
            rel.manifest,
            Some(PathBuf::from("/home/u/.local/state/openledger/m.json"))
        );
    }

    #[test]
    fn a_stack_whose_daemon_is_gone_is_not_followed() {
        assert!(alive(std::process::id()));
        // pid_max is at most 2^22 on Linux
        assert!(!alive(u32::MAX - 1));
    }
}
