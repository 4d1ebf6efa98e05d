//! Test harness: real PostgreSQL clusters started by scripts/test.sh, a
//! fresh database per test, the built `tusk` binary, and fingerprints of
//! table contents to compare.
//!
//! Tests fail (they are never skipped) when the services are missing: run
//! them through `scripts/test.sh`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use assert_cmd::cargo::CommandCargoExt;

/// The source cluster (`TUSK_TEST_PG_URL`) or the second, fresh one (`TUSK_TEST_PG2_URL`).
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Superuser URL ending in `/postgres`.
    pub url: String,
}

impl Cluster {
    pub fn main() -> Self {
        Self::from_env("TUSK_TEST_PG_URL")
    }

    pub fn second() -> Self {
        Self::from_env("TUSK_TEST_PG2_URL")
    }

    fn from_env(var: &str) -> Self {
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: run the integration tests through scripts/test.sh")
        });
        Cluster { url }
    }

    /// The superuser password, to check it never leaks.
    pub fn password(&self) -> String {
        let after_scheme = self.url.split_once("://").unwrap().1;
        let userinfo = after_scheme.split_once('@').unwrap().0;
        userinfo.split_once(':').unwrap().1.to_string()
    }

    /// URL of `database` on this cluster, as the superuser.
    pub fn db_url(&self, database: &str) -> String {
        let base = self.url.rsplit_once('/').unwrap().0;
        format!("{base}/{database}")
    }

    /// URL of `database` logging in as `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str, database: &str) -> String {
        let host = self.url.split_once('@').unwrap().1;
        let host = host.rsplit_once('/').unwrap().0;
        format!("postgresql://{user}:{password}@{host}/{database}")
    }

    /// Runs SQL on `database`; panics with psql's error on failure.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let out = psql()
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.db_url(database))
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {database}: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn database_exists(&self, database: &str) -> bool {
        self.sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"),
        ) == "1"
    }

    /// Creates an empty database that is dropped when the value is.
    pub fn empty_database(&self, prefix: &str) -> TestDb {
        let name = unique_name(prefix);
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""));
        TestDb {
            cluster: self.clone(),
            name,
        }
    }

    /// A database with Mastodon's schema and the fixture data at `scale`.
    pub fn mastodon_database(&self, prefix: &str, scale: u32) -> TestDb {
        let db = self.empty_database(prefix);
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/seed-fixture.sh"))
            .arg(db.url())
            .arg(scale.to_string())
            .env("PGBIN", pg_bin())
            .output()
            .expect("run scripts/seed-fixture.sh");
        assert!(
            status.status.success(),
            "seeding failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        db
    }

    /// Drops every database whose name starts with `prefix` (scratch leftovers).
    pub fn databases_like(&self, prefix: &str) -> Vec<String> {
        let out = self.sql(
            "postgres",
            &format!("SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' ORDER BY 1"),
        );
        out.lines().map(str::to_string).collect()
    }
}

/// A database owned by one test.
pub struct TestDb {
    pub cluster: Cluster,
    pub name: String,
}

impl TestDb {
    pub fn url(&self) -> String {
        self.cluster.db_url(&self.name)
    }

    pub fn sql(&self, sql: &str) -> String {
        self.cluster.sql(&self.name, sql)
    }

    /// Per table: row count and md5 of all rows in a fixed order.
    pub fn fingerprint(&self) -> BTreeMap<String, (i64, String)> {
        fingerprint(&self.cluster, &self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = psql()
            .args(["-X", "-q", "-d"])
            .arg(self.cluster.db_url("postgres"))
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Per table of `database`: row count and md5 of its rows in text order.
pub fn fingerprint(cluster: &Cluster, database: &str) -> BTreeMap<String, (i64, String)> {
    let tables = cluster.sql(
        database,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    let mut prints = BTreeMap::new();
    for table in tables.lines() {
        let row = cluster.sql(
            database,
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') \
                 FROM {table} t"
            ),
        );
        let (count, md5) = row.split_once('|').unwrap();
        prints.insert(table.to_string(), (count.parse().unwrap(), md5.to_string()));
    }
    assert!(!prints.is_empty(), "{database} has no tables");
    prints
}

/// A unique, lowercase database name for this test process.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory of the PostgreSQL client tools the tests use.
pub fn pg_bin() -> PathBuf {
    std::env::var_os("TUSK_TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn psql() -> Command {
    Command::new(pg_bin().join("psql"))
}

/// The built binary with a clean environment: no TUSK_* from the caller,
/// no config file or .env.production picked up from the working directory.
pub fn tusk(workdir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("tusk").expect("tusk binary");
    for (key, _) in std::env::vars() {
        if key.starts_with("TUSK_") || key.starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(workdir).env("TUSK_PG_BIN_DIR", pg_bin());
    cmd
}

/// The outcome of one tusk run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| {
            panic!(
                "stdout is not one JSON document ({err}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

pub fn run(mut cmd: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run tusk");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A work directory with a backup directory inside.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// `tusk` with `--backup-dir` and `--instance test` preset.
    pub fn tusk(&self) -> Command {
        let mut cmd = tusk(self.path());
        cmd.arg("--backup-dir")
            .arg(self.backup_dir())
            .args(["--instance", "test"]);
        cmd
    }

    /// Runs `tusk --json backup` against `db` and returns the report.
    pub fn backup(&self, db: &TestDb) -> serde_json::Value {
        let mut cmd = self.tusk();
        cmd.args(["--json", "backup", "--database-url"])
            .arg(db.url());
        run(cmd).expect_code(0).json()
    }

    /// Names of complete sets in the backup directory.
    pub fn set_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.backup_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join("manifest.json").is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| !name.ends_with(".partial"))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub fn manifest(&self, id: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.backup_dir().join(id).join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}
