//! A fixture built once per test binary and shared by its tests: an expensive stack (a node, a database, a
//! trained adapter) that several tests, one feature each, look at.
//!
//! Each test is a plain `#[test]` that calls [`Shared::run`]: the fixture lives on a runtime of its own
//! (its background tasks outlive any one test), and the tests take turns on it, so none sees another's
//! half-done changes. A test must not depend on another having run: the order is libtest's.
//!
//! What a shared fixture leaves behind is cleaned up when the test process ends, however it ends: nodes
//! started by [`crate::TestChain`] watch a pipe to this process, folders are given to [`remove_at_exit`],
//! and the fixture's database is dropped the next time the binary builds it ([`fixture_database`]).

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};

/// What builds a fixture: an async fn, boxed (`|| Box::pin(build())`).
pub type Build<T> = fn() -> Pin<Box<dyn Future<Output = T> + Send>>;

/// A fixture of type `T`, built on first use by `build`; declare it as a `static`.
pub struct Shared<T: 'static> {
    build: Build<T>,
    built: OnceLock<Built<T>>,
}

struct Built<T> {
    rt: tokio::runtime::Runtime,
    /// The fixture, or why building it panicked (every test of the binary then fails with that message
    /// instead of building it again).
    value: Result<T, String>,
    turn: tokio::sync::Mutex<()>,
}

impl<T: Send + Sync + 'static> Shared<T> {
    pub const fn new(build: Build<T>) -> Self {
        Shared {
            build,
            built: OnceLock::new(),
        }
    }

    /// Runs `test` on the fixture (built first if no test has yet), while no other test of the binary runs
    /// on it. A panic in `test` fails that test only; the fixture stays for the others.
    pub fn run<F, Fut>(&'static self, test: F)
    where
        F: FnOnce(&'static T) -> Fut,
        Fut: Future<Output = ()>,
    {
        let built = self.built.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            // spawned, so that a panic while building comes back as a value
            let value =
                rt.block_on(rt.spawn((self.build)()))
                    .map_err(|e| match e.try_into_panic() {
                        Ok(p) => p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic without a message".into()),
                        Err(e) => e.to_string(),
                    });
            Built {
                rt,
                value,
                turn: tokio::sync::Mutex::new(()),
            }
        });
        let value = match &built.value {
            Ok(v) => v,
            Err(e) => panic!("the shared fixture could not be built: {e}"),
        };
        built.rt.block_on(async {
            let _turn = built.turn.lock().await;
            test(value).await
        })
    }
}

/// An empty, migrated database named after `DATABASE_URL`'s and `name` (say, the test binary's), on that
/// server: dropped first if an earlier run left it, so a binary's fixture starts clean and leaves at most
/// one database behind.
pub async fn fixture_database(name: &str) -> PgPool {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test.sh sets it)");
    let opts = PgConnectOptions::from_str(&url).unwrap();
    let base = opts.get_database().unwrap_or("postgres").to_string();
    let db = format!("{base}_fx_{name}");
    assert!(
        db.len() <= 63 && db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "fixture database name {db:?}: at most 63 letters, digits and underscores"
    );
    let mut admin = opts.clone().connect().await.unwrap();
    for q in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(q))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect_with(opts.database(&db))
        .await
        .unwrap();
    openledger_db::MIGRATOR.run(&pool).await.unwrap();
    pool
}

/// One shell per test process that removes the folders it was given once this process's end of its pipe
/// closes: at exit, whether the process returned, panicked or was killed.
static JANITOR: Mutex<Option<(Child, ChildStdin)>> = Mutex::new(None);

/// Removes `path` (recursively) when this test process ends.
pub fn remove_at_exit(path: &Path) {
    let mut janitor = JANITOR.lock().unwrap_or_else(|e| e.into_inner());
    if janitor.is_none() {
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"while IFS= read -r p; do set -- "$@" "$p"; done; rm -rf -- "$@""#,
                "janitor",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        *janitor = Some((child, stdin));
    }
    let (_, stdin) = janitor.as_mut().unwrap();
    let line = path.to_str().unwrap();
    assert!(!line.contains('\n'), "{line:?}");
    writeln!(stdin, "{line}").unwrap();
}
