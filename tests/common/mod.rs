//! Test harness: real PostgreSQL clusters started by scripts/test.sh, a
//! fresh database per test, the built `tusk` binary, and fingerprints of
//! table contents to compare.
//!
//! Tests fail (they are never skipped) when the services are missing: run
//! them through `scripts/test.sh`.

#![allow(dead_code)]

pub mod s3;

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
        db.seed_mastodon(scale);
        db
    }

    /// Drops every database whose name starts with `prefix` (scratch leftovers).
    /// The scratch databases named in a verify run's log that still exist.
    pub fn kept_scratch_of(&self, verify_stderr: &str) -> Vec<String> {
        scratch_databases_in(verify_stderr)
            .into_iter()
            .filter(|name| self.database_exists(name))
            .collect()
    }

    pub fn databases_like(&self, prefix: &str) -> Vec<String> {
        let out = self.sql(
            "postgres",
            &format!("SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' ORDER BY 1"),
        );
        out.lines().map(str::to_string).collect()
    }
}

/// The scratch databases a verify run says it restored into (tests run in
/// parallel, so other runs' scratch databases may exist meanwhile).
pub fn scratch_databases_in(verify_stderr: &str) -> Vec<String> {
    verify_stderr
        .split_whitespace()
        .filter(|word| word.starts_with("tusk_verify_"))
        .map(str::to_string)
        .collect()
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

    /// Loads Mastodon's schema and the fixture data at `scale` into this (empty) database.
    pub fn seed_mastodon(&self, scale: u32) {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/seed-fixture.sh"))
            .arg(self.url())
            .arg(scale.to_string())
            .env("PGBIN", pg_bin())
            .output()
            .expect("run scripts/seed-fixture.sh");
        assert!(
            out.status.success(),
            "seeding failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn sql(&self, sql: &str) -> String {
        self.cluster.sql(&self.name, sql)
    }

    /// An identical copy (`CREATE DATABASE ... TEMPLATE`), for twin runs.
    pub fn copy(&self, prefix: &str) -> TestDb {
        let name = unique_name(prefix);
        self.cluster.sql(
            "postgres",
            &format!("CREATE DATABASE \"{name}\" TEMPLATE \"{}\"", self.name),
        );
        TestDb {
            cluster: self.cluster.clone(),
            name,
        }
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
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
           AND schemaname NOT LIKE 'pg\\_temp\\_%' ORDER BY 1",
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

/// Runs `command_line` (a shell line) on a pseudo-terminal, as an admin's
/// shell would, typing `input`; returns the exit code and what the
/// terminal showed.
pub fn run_on_terminal(command_line: &str, input: &[u8]) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = Command::new("script")
        .args(["-qec", command_line, "/dev/null"])
        .env("TUSK_PG_BIN_DIR", pg_bin())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run script(1)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
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

/// The names in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
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

    /// A directory for tusk's temporary files (`--temp-dir`), created on demand.
    pub fn temp_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("tmp");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// What tusk left in its temporary directory.
    pub fn temp_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.temp_dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// `tusk` with `--backup-dir` and `--instance test` preset.
    /// `tusk` with the workspace's `tusk.yaml` and `.env.production`.
    pub fn tusk_configured(&self) -> Command {
        let mut cmd = self.tusk();
        cmd.arg("--config")
            .arg(self.path().join("tusk.yaml"))
            .arg("--mastodon-env-file")
            .arg(self.path().join(".env.production"));
        cmd
    }

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

/// A compose-like deployment of its own: a network and the containers
/// postgres (service `db`), web, streaming and sidekiq, labelled as
/// docker compose labels them, all removed on drop.
pub struct Compose {
    pub project: String,
    pub network: String,
    pub image: String,
}

/// Whether the Docker tests run. `TUSK_SKIP_DOCKER_TESTS=1` skips them
/// explicitly; otherwise an unreachable engine fails the test.
pub fn docker_tests_enabled() -> bool {
    if std::env::var("TUSK_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        announce_skip("TUSK_SKIP_DOCKER_TESTS=1");
        return false;
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => true,
        _ => panic!(
            "the Docker Engine is not reachable: start it, or set TUSK_SKIP_DOCKER_TESTS=1 to skip the Docker tests"
        ),
    }
}

/// Says, where a person reads it, that the running test checks nothing. A
/// skipped test still reports "ok" to the test runner, so the line goes
/// straight to stderr (libtest captures only `eprintln!`), and CI, which
/// must never skip, fails instead.
pub fn announce_skip(reason: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} would be skipped ({reason}), but CI never skips: unset it"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {reason}; this test checked nothing"
    );
}

/// The PostgreSQL images of the cross-major tests: the default one, then
/// `TUSK_TEST_DOCKER_IMAGE_<N>` for each of `TUSK_TEST_DOCKER_EXTRA_MAJORS`.
pub fn docker_images() -> Vec<String> {
    let mut images = vec![
        std::env::var("TUSK_TEST_DOCKER_IMAGE").unwrap_or_else(|_| "tusk-test/postgres:15".into()),
    ];
    let majors = std::env::var("TUSK_TEST_DOCKER_EXTRA_MAJORS").unwrap_or_default();
    for major in majors.split_whitespace() {
        let var = format!("TUSK_TEST_DOCKER_IMAGE_{major}");
        images.push(std::env::var(&var).unwrap_or_else(|_| {
            panic!("{var} is not set although TUSK_TEST_DOCKER_EXTRA_MAJORS names {major}")
        }));
    }
    images
}

pub const APP_SERVICES: [&str; 3] = ["web", "streaming", "sidekiq"];

/// `docker events` lines `nanos name action` of containers matching a
/// label filter between two Unix times (seconds).
fn container_events(label_filter: &str, since: i64, until: i64) -> String {
    docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        label_filter,
        "--filter",
        "type=container",
        "--format",
        "{{.TimeNano}} {{.Actor.Attributes.name}} {{.Action}}",
    ])
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Compose {
    pub fn up(prefix: &str) -> Self {
        let image = std::env::var("TUSK_TEST_DOCKER_IMAGE")
            .unwrap_or_else(|_| "tusk-test/postgres:15".into());
        Self::up_with_image(prefix, &image)
    }

    /// The same deployment from another PostgreSQL image.
    pub fn up_with_image(prefix: &str, image: &str) -> Self {
        let project = unique_name(prefix);
        let image = image.to_string();
        let network = format!("{project}_default");
        docker(&["network", "create", &network]);
        let compose = Compose {
            project,
            network,
            image,
        };
        compose.run_container("postgres", "db", &[]);
        for service in APP_SERVICES {
            // --init: a bare `sleep` as PID 1 would ignore SIGTERM and make
            // every stop wait for the kill timeout.
            compose.run_container(service, service, &["--init", "--entrypoint", "sleep"]);
        }
        compose.wait_ready();
        compose
    }

    /// Only a database container (service `db`) from `image`: a migration's
    /// target, or a deployment whose other containers a test runs itself.
    /// Its labels name `docker-compose.yml` in [`Compose::working_dir`] as
    /// the compose file, as compose does (the test writes the file).
    pub fn up_database_only(prefix: &str, image: &str) -> Self {
        let project = unique_name(prefix);
        let network = format!("{project}_default");
        docker(&["network", "create", &network]);
        let compose = Compose {
            project,
            network,
            image: image.to_string(),
        };
        let config_files = format!(
            "com.docker.compose.project.config_files={}",
            compose.working_dir().join("docker-compose.yml").display()
        );
        compose.run_container("postgres", "db", &["--label", &config_files]);
        compose.wait_ready();
        compose
    }

    fn run_container(&self, name: &str, service: &str, extra: &[&str]) {
        let full = self.container(name);
        let project_label = format!("com.docker.compose.project={}", self.project);
        let service_label = format!("com.docker.compose.service={service}");
        let dir_label = format!(
            "com.docker.compose.project.working_dir={}",
            self.working_dir().display()
        );
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &full,
            "--network",
            &self.network,
            "--label",
            &project_label,
            "--label",
            &service_label,
            "--label",
            &dir_label,
            "-e",
            "POSTGRES_HOST_AUTH_METHOD=trust",
        ];
        args.extend_from_slice(extra);
        args.push(&self.image);
        if name != "postgres" {
            args.push("infinity");
        }
        docker(&args);
    }

    fn wait_ready(&self) {
        let pg = self.container("postgres");
        for _ in 0..600 {
            let ok = Command::new("docker")
                .args([
                    "exec",
                    &pg,
                    "pg_isready",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{pg} never became ready");
    }

    /// Database `mastodon` in the deployment's container, seeded with the
    /// Mastodon fixture at `scale`, as its .env.production would name it.
    pub fn mastodon_database(&self, scale: u32) -> TestDb {
        let cluster = self.cluster();
        cluster.sql("postgres", "CREATE DATABASE mastodon");
        let db = TestDb {
            cluster,
            name: "mastodon".into(),
        };
        db.seed_mastodon(scale);
        db
    }

    /// The directory compose would have run in, as its label says (not
    /// created here).
    pub fn working_dir(&self) -> PathBuf {
        std::env::temp_dir().join(&self.project)
    }

    /// The full name of one of this deployment's containers.
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.project)
    }

    pub fn ip(&self) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.container("postgres"),
        ])
    }

    /// The database container as a cluster the host reaches (trust auth).
    pub fn cluster(&self) -> Cluster {
        Cluster {
            url: format!("postgresql://postgres:unused@{}:5432/postgres", self.ip()),
        }
    }

    pub fn is_running(&self, name: &str) -> bool {
        docker(&["inspect", "-f", "{{.State.Running}}", &self.container(name)]) == "true"
    }

    /// `docker events` of this project's containers between two instants, as
    /// (container name, action, unix nanoseconds).
    pub fn events(&self, since: i64, until: i64) -> Vec<(String, String, i64)> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        // Actions such as `exec_start: pg_dump ...` contain spaces; they come last.
        container_events(&label, since, until)
            .lines()
            .map(|line| {
                let mut parts = line.splitn(3, ' ');
                let nanos = parts.next().unwrap().parse().unwrap();
                let name = parts.next().unwrap_or_default().to_string();
                (name, parts.next().unwrap_or_default().to_string(), nanos)
            })
            .collect()
    }

    /// Lifecycle actions of helper containers beside the database
    /// container between two Unix times (seconds).
    pub fn helper_events(&self, since: i64, until: i64) -> Vec<String> {
        let label = format!("label=tusk.for={}", self.container("postgres"));
        container_events(&label, since, until)
            .lines()
            .filter_map(|line| Some(line.splitn(3, ' ').nth(2)?.to_string()))
            .collect()
    }

    /// `tusk` in Docker mode against this deployment.
    pub fn tusk(&self, ws: &Workspace) -> Command {
        self.tusk_with_temp_dir(ws, &ws.temp_dir())
    }

    /// The same with another `--temp-dir`.
    pub fn tusk_with_temp_dir(&self, ws: &Workspace, temp_dir: &Path) -> Command {
        let mut cmd = ws.tusk();
        cmd.args([
            "--postgres-mode",
            "docker",
            "--compose-project",
            &self.project,
        ]);
        cmd.arg("--temp-dir").arg(temp_dir);
        cmd
    }

    /// Helper containers tusk started beside the database container that
    /// still exist, running or not.
    pub fn helpers(&self) -> Vec<String> {
        let filter = format!("label=tusk.for={}", self.container("postgres"));
        let out = docker(&["ps", "-aq", "--filter", &filter]);
        out.split_whitespace().map(str::to_string).collect()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let mut names: Vec<String> = APP_SERVICES.iter().map(|s| self.container(s)).collect();
        names.push(self.container("postgres"));
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&names)
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}
