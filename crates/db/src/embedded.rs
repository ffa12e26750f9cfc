//! A private Postgres cluster under a data directory, for running without a `DATABASE_URL`: `initdb` once,
//! `pg_ctl start` on a free loopback port, `pg_ctl stop` when dropped. Uses the machine's Postgres install
//! (`scripts/setup.sh` installs it). Postgres refuses to run as root, so as root the cluster runs as the
//! `postgres` system user.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no Postgres server binaries (initdb, pg_ctl) found: install the postgresql package (scripts/setup.sh does), \
         set OPENLEDGER_PG_BIN to their directory, or give a DATABASE_URL"
    )]
    NoBinaries,
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error(
        "the postgres system user cannot write {0}: choose a data directory it can reach (Postgres refuses to run as root)"
    )]
    NotReachable(String),
}

/// A running private cluster; stopped on drop if this process started it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    owned: bool,
    as_postgres_user: bool,
}

const USER: &str = "openledger";
const DATABASE: &str = "openledger";

impl EmbeddedPostgres {
    /// Start (or join, if one already runs there) the cluster under `dir`.
    pub fn start(dir: &Path) -> Result<Self, EmbeddedError> {
        let bin = find_bin_dir().ok_or(EmbeddedError::NoBinaries)?;
        let as_postgres_user = is_root();
        std::fs::create_dir_all(dir).map_err(|source| EmbeddedError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| EmbeddedError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let data = dir.join("pgdata");
        let sockets = dir.join("run");
        for d in [&data, &sockets] {
            std::fs::create_dir_all(d).map_err(|source| EmbeddedError::Io {
                path: d.display().to_string(),
                source,
            })?;
        }
        let mut pg = EmbeddedPostgres {
            data,
            bin,
            port: 0,
            owned: false,
            as_postgres_user,
        };
        if as_postgres_user {
            pg.run("chown", &["-R", "postgres:postgres", &path_str(&dir)])?;
            if pg.run("test", &["-w", &path_str(&pg.data)]).is_err() {
                return Err(EmbeddedError::NotReachable(dir.display().to_string()));
            }
        }
        if !pg.data.join("PG_VERSION").exists() {
            tracing::info!(data = %pg.data.display(), "creating a private Postgres cluster");
            let initdb = pg.bin.join("initdb");
            pg.run(
                &path_str(&initdb),
                &[
                    "-D",
                    &path_str(&pg.data),
                    "-U",
                    USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                    "-N",
                ],
            )?;
        }
        if let Some(port) = pg.running_port() {
            tracing::info!(port, "joining the private Postgres cluster already running");
            pg.port = port;
        } else {
            pg.port = free_port().map_err(|source| EmbeddedError::Io {
                path: "127.0.0.1:0".into(),
                source,
            })?;
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                pg.port,
                path_str(&sockets)
            );
            let log = path_str(&dir.join("postgres.log"));
            let pg_ctl = path_str(&pg.bin.join("pg_ctl"));
            pg.run(
                &pg_ctl,
                &[
                    "-D",
                    &path_str(&pg.data),
                    "-l",
                    &log,
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &opts,
                    "start",
                ],
            )?;
            pg.owned = true;
            tracing::info!(port = pg.port, "started a private Postgres cluster");
        }
        pg.create_database()?;
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pg_ctl = path_str(&self.bin.join("pg_ctl"));
        self.run(&pg_ctl, &["-D", &path_str(&self.data), "status"])
            .ok()?;
        // postmaster.pid: pid, data dir, start time, port, ...
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn create_database(&self) -> Result<(), EmbeddedError> {
        let psql = path_str(&self.bin.join("psql"));
        let port = self.port.to_string();
        let base = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            USER,
            "-d",
            "postgres",
            "-tA",
            "-c",
        ];
        let exists = self.run(
            &psql,
            &[
                &base[..],
                &["SELECT 1 FROM pg_database WHERE datname = 'openledger'"],
            ]
            .concat(),
        )?;
        if exists.trim() != "1" {
            self.run(
                &psql,
                &[&base[..], &["CREATE DATABASE openledger"]].concat(),
            )?;
        }
        Ok(())
    }

    /// Run a tool of the cluster; as root, as the `postgres` user (all but `chown`).
    fn run(&self, program: &str, args: &[&str]) -> Result<String, EmbeddedError> {
        let mut command = if self.as_postgres_user && program != "chown" {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        };
        let out = command
            .args(args)
            .output()
            .map_err(|e| EmbeddedError::Command {
                command: program.to_string(),
                detail: e.to_string(),
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(EmbeddedError::Command {
                command: format!("{program} {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let pg_ctl = path_str(&self.bin.join("pg_ctl"));
        match self.run(
            &pg_ctl,
            &["-D", &path_str(&self.data), "-m", "fast", "-w", "stop"],
        ) {
            Ok(_) => tracing::info!("stopped the private Postgres cluster"),
            Err(e) => tracing::warn!(error = %e, "could not stop the private Postgres cluster"),
        }
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn is_root() -> bool {
    // no libc: ask `id -u`, which every Unix has
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `OPENLEDGER_PG_BIN`, else the newest /usr/lib/postgresql/<v>/bin (Debian), else `initdb` on PATH.
fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("OPENLEDGER_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}
