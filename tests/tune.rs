//! `tusk tune` against real servers: the settings PgTune computes, the
//! connection count derived from Mastodon's settings, and `--apply`, which
//! must change postgresql.auto.conf and nothing else. `--apply` runs only
//! on a cluster this file starts and stops itself, never on the shared one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Cluster, Workspace, pg_bin, run};

/// PgTune's result for web, 16GB, 4 CPUs, SSD, 200 connections (see the
/// unit tests in src/tune/pgtune.rs for where each value comes from).
const PGTUNE_16GB_4CPU_SSD_200: &[(&str, &str)] = &[
    ("max_connections", "200"),
    ("shared_buffers", "4GB"),
    ("effective_cache_size", "12GB"),
    ("maintenance_work_mem", "1GB"),
    ("checkpoint_completion_target", "0.9"),
    ("wal_buffers", "16MB"),
    ("default_statistics_target", "100"),
    ("random_page_cost", "1.1"),
    ("effective_io_concurrency", "200"),
    ("work_mem", "20560kB"),
    ("huge_pages", "try"),
    ("min_wal_size", "1GB"),
    ("max_wal_size", "4GB"),
    ("max_worker_processes", "4"),
    ("max_parallel_workers_per_gather", "2"),
    ("max_parallel_workers", "4"),
    ("max_parallel_maintenance_workers", "2"),
];

fn settings_of(doc: &serde_json::Value) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = doc["settings"]
        .as_object()
        .expect("settings object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_string()))
        .collect();
    settings.sort();
    settings
}

fn sorted(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.sort();
    out
}

#[test]
fn json_with_given_inputs_prints_pgtunes_settings() {
    let cluster = Cluster::main();
    let ws = Workspace::new();
    let out = run({
        let mut cmd = ws.tusk();
        cmd.args(["--json", "--database-url", &cluster.url, "tune"])
            .args(["--memory", "16GB", "--cpus", "4", "--storage", "ssd"])
            .args(["--connections", "200"]);
        cmd
    })
    .expect_code(0);
    let doc = out.json();
    assert_eq!(settings_of(&doc), sorted(PGTUNE_16GB_4CPU_SSD_200));
    let server_major: u64 = cluster
        .sql(
            "postgres",
            "SELECT current_setting('server_version_num')::int / 10000",
        )
        .parse()
        .unwrap();
    assert_eq!(doc["inputs"]["postgres_major"], server_major);
    assert_eq!(doc["inputs"]["memory"], "16GB");
    assert_eq!(doc["inputs"]["connections"], 200);
    assert_eq!(doc["inputs"]["storage"], "ssd");
    assert!(doc["connection_budget"].is_null());
    let topics: Vec<&str> = doc["advice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["topic"].as_str().unwrap())
        .collect();
    for topic in [
        "postgres_version",
        "connections",
        "sidekiq_layout",
        "pgbouncer",
    ] {
        assert!(topics.contains(&topic), "{topic} missing: {topics:?}");
    }
    // Every line has its reason.
    for line in doc["lines"].as_array().unwrap() {
        assert!(!line["reason"].as_str().unwrap().is_empty(), "{line}");
    }
}

#[test]
fn hdd_and_small_memory_follow_pgtune() {
    let cluster = Cluster::main();
    let ws = Workspace::new();
    let doc = run({
        let mut cmd = ws.tusk();
        cmd.args(["--json", "--database-url", &cluster.url, "tune"])
            .args(["--memory", "2GB", "--cpus", "2", "--storage", "hdd"])
            .args(["--connections", "100"]);
        cmd
    })
    .expect_code(0)
    .json();
    assert_eq!(
        settings_of(&doc),
        sorted(&[
            ("max_connections", "100"),
            ("shared_buffers", "512MB"),
            ("effective_cache_size", "1536MB"),
            ("maintenance_work_mem", "128MB"),
            ("checkpoint_completion_target", "0.9"),
            ("wal_buffers", "16MB"),
            ("default_statistics_target", "100"),
            ("random_page_cost", "4"),
            ("effective_io_concurrency", "2"),
            ("work_mem", "4854kB"),
            ("huge_pages", "off"),
            ("min_wal_size", "1GB"),
            ("max_wal_size", "4GB"),
        ])
    );
}

/// The text output is a postgresql.conf snippet: `name = value  # reason`.
#[test]
fn text_output_is_a_commented_config_snippet() {
    let cluster = Cluster::main();
    let ws = Workspace::new();
    let out = run({
        let mut cmd = ws.tusk();
        cmd.args(["--database-url", &cluster.url, "tune"]).args([
            "--memory",
            "16GB",
            "--cpus",
            "4",
            "--connections",
            "200",
        ]);
        cmd
    })
    .expect_code(0);
    let mut found = Vec::new();
    for line in out.stdout.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (setting, reason) = line.split_once('#').expect("a reason on every line");
        assert!(!reason.trim().is_empty(), "{line}");
        let (name, value) = setting.split_once('=').expect("name = value");
        found.push((name.trim().to_string(), value.trim().to_string()));
    }
    found.sort();
    assert_eq!(found, sorted(PGTUNE_16GB_4CPU_SSD_200));
}

/// `.env.production` in the working directory (found as tusk always finds
/// it) and the compose file beside it give the connection count.
#[test]
fn connections_derived_from_env_production_and_compose_file() {
    let cluster = Cluster::main();
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join(".env.production"),
        format!(
            "DATABASE_URL={}\nWEB_CONCURRENCY=3\nMAX_THREADS=4\nDB_POOL=20\n",
            cluster.url
        ),
    )
    .unwrap();
    std::fs::write(
        ws.path().join("docker-compose.yml"),
        "services:\n\
         \x20 db:\n    image: postgres:15\n\
         \x20 web:\n    command: bundle exec puma -C config/puma.rb\n\
         \x20 streaming:\n    command: node ./streaming/index.js\n\
         \x20 sidekiq_default:\n    command: bundle exec sidekiq -c 25 -q default -q scheduler\n\
         \x20 sidekiq_pull:\n    command: bundle exec sidekiq -c 10 -q pull\n",
    )
    .unwrap();
    let doc = run({
        let mut cmd = ws.tusk();
        cmd.args(["--json", "tune", "--memory", "8GB", "--cpus", "4"]);
        cmd
    })
    .expect_code(0)
    .json();
    // web 3 x min(20, 4) + sidekiq_default min(20, 25) + sidekiq_pull
    // min(20, 10) + streaming 20 + headroom 10
    let expected = 12 + 20 + 10 + 20 + 10;
    assert_eq!(doc["inputs"]["connections"], expected, "{doc:#}");
    assert_eq!(doc["settings"]["max_connections"], expected.to_string());
    let budget = &doc["connection_budget"];
    assert_eq!(budget["headroom"], 10);
    assert!(
        budget["compose_file"]
            .as_str()
            .unwrap()
            .ends_with("docker-compose.yml")
    );
    let per_service: Vec<(String, u64)> = budget["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["service"].as_str().unwrap().to_string(),
                p["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        per_service,
        [
            ("web".to_string(), 12),
            ("streaming".to_string(), 20),
            ("sidekiq_default".to_string(), 20),
            ("sidekiq_pull".to_string(), 10),
        ]
    );
    // DB_POOL 20 starves sidekiq_default's 25 threads.
    let db_pool: Vec<&str> = doc["advice"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["topic"] == "db_pool")
        .map(|a| a["message"].as_str().unwrap())
        .collect();
    assert_eq!(db_pool.len(), 1, "{db_pool:?}");
    assert!(
        db_pool[0].contains("sidekiq_default") && db_pool[0].contains("DB_POOL=25"),
        "{db_pool:?}"
    );
    // work_mem from the derived count: (8GB - 2GB) / ((72 + 4) x 3) = 27594kB.
    assert_eq!(doc["settings"]["work_mem"], "27594kB");
}

#[test]
fn a_memory_without_unit_is_a_usage_error() {
    let ws = Workspace::new();
    let out = run({
        let mut cmd = ws.tusk();
        cmd.args([
            "tune",
            "--memory",
            "16",
            "--cpus",
            "4",
            "--connections",
            "10",
        ]);
        cmd
    })
    .expect_code(2);
    assert!(out.stderr.contains("16GB"), "{}", out.stderr);
}

/// A cluster of this test's own, for ALTER SYSTEM: initdb and pg_ctl from
/// TUSK_TEST_PG_BIN (as the postgres user when run as root), trust on
/// 127.0.0.1, stopped and deleted on drop.
struct OwnCluster {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(program: PathBuf) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl OwnCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let out = as_postgres(pg_bin().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-N"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _attempt in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let status = as_postgres(pg_bin().join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    dir.path().display()
                ))
                .arg("start")
                .output()
                .unwrap();
            if status.status.success() {
                return OwnCluster { dir, port };
            }
        }
        panic!(
            "could not start a cluster: {}",
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sql(&self, sql: &str) -> String {
        let out = Command::new(pg_bin().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-d"])
            .arg(self.url())
            .args(["-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = as_postgres(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The `name = 'value'` lines of postgresql.auto.conf.
fn auto_conf_settings(data: &Path) -> Vec<(String, String)> {
    let text = String::from_utf8(read(&data.join("postgresql.auto.conf"))).unwrap();
    let mut settings: Vec<(String, String)> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line.split_once('=').expect("name = value");
            (
                name.trim().to_string(),
                value.trim().trim_matches('\'').to_string(),
            )
        })
        .collect();
    settings.sort();
    settings
}

#[test]
fn apply_yes_changes_postgresql_auto_conf_and_nothing_else() {
    let cluster = OwnCluster::start();
    let conf_before = read(&cluster.data().join("postgresql.conf"));
    let hba_before = read(&cluster.data().join("pg_hba.conf"));
    let ws = Workspace::new();
    let doc = run({
        let mut cmd = ws.tusk();
        cmd.args(["--json", "--yes", "--database-url", &cluster.url(), "tune"])
            .args(["--memory", "2GB", "--cpus", "4", "--storage", "hdd"])
            .args(["--connections", "50", "--apply"]);
        cmd
    })
    .expect_code(0)
    .json();

    let recommended = settings_of(&doc);
    assert_eq!(auto_conf_settings(&cluster.data()), recommended);
    assert_eq!(read(&cluster.data().join("postgresql.conf")), conf_before);
    assert_eq!(read(&cluster.data().join("pg_hba.conf")), hba_before);

    // Reloaded: a setting a reload changes is in force; one that needs a
    // restart waits for it and says so.
    let work_mem = doc["settings"]["work_mem"].as_str().unwrap().to_string();
    assert_eq!(cluster.sql("SHOW work_mem"), work_mem);
    assert_eq!(cluster.sql("SHOW random_page_cost"), "4");
    assert_eq!(cluster.sql("SHOW shared_buffers"), "128MB");
    let applied = doc["applied"].as_array().expect("applied list");
    let restart = |name: &str| {
        applied
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} not applied"))["needs_restart"]
            .as_bool()
            .unwrap()
    };
    assert!(restart("shared_buffers"));
    assert!(restart("max_connections"));
    assert!(!restart("work_mem"));
    assert!(!restart("random_page_cost"));
    assert_eq!(
        cluster.sql("SELECT pending_restart FROM pg_settings WHERE name = 'shared_buffers'"),
        "t"
    );
}

#[test]
fn apply_without_terminal_or_yes_changes_nothing() {
    let cluster = OwnCluster::start();
    let auto_before = read(&cluster.data().join("postgresql.auto.conf"));
    let ws = Workspace::new();
    let out = run({
        let mut cmd = ws.tusk();
        cmd.args(["--database-url", &cluster.url(), "tune"]).args([
            "--memory",
            "2GB",
            "--cpus",
            "4",
            "--connections",
            "50",
            "--apply",
        ]);
        cmd
    })
    .expect_code(2);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(
        read(&cluster.data().join("postgresql.auto.conf")),
        auto_before
    );
}

/// A database container as compose starts one, with a memory and CPU
/// limit and the labels naming the compose file; removed on drop.
struct LimitedDbContainer {
    name: String,
}

impl LimitedDbContainer {
    fn start(compose_dir: &Path, compose_file: &Path) -> Self {
        let name = common::unique_name("tusk_tune_db");
        let image = std::env::var("TUSK_TEST_DOCKER_IMAGE")
            .unwrap_or_else(|_| "tusk-test/postgres:15".into());
        let out = Command::new("docker")
            .args([
                "run", "-d", "--name", &name, "--memory", "2g", "--cpus", "1.5",
            ])
            .args(["--label", &format!("com.docker.compose.project={name}")])
            .args(["--label", "com.docker.compose.service=db"])
            .arg("--label")
            .arg(format!(
                "com.docker.compose.project.working_dir={}",
                compose_dir.display()
            ))
            .arg("--label")
            .arg(format!(
                "com.docker.compose.project.config_files={}",
                compose_file.display()
            ))
            .args(["-e", "POSTGRES_HOST_AUTH_METHOD=trust", &image])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let container = LimitedDbContainer { name };
        for _ in 0..600 {
            let ready = Command::new("docker")
                .args([
                    "exec",
                    &container.name,
                    "pg_isready",
                    "-q",
                    "-h",
                    "127.0.0.1",
                ])
                .args(["-U", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return container;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("container {} did not become ready", container.name);
    }
}

impl Drop for LimitedDbContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
    }
}

/// Docker mode: memory and CPUs are the container's limits, the compose
/// file is the one its labels name, the version is the container's server.
#[test]
fn docker_mode_reads_the_container_limits_and_its_compose_file() {
    if !common::docker_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let compose_file = ws.path().join("docker-compose.yml");
    std::fs::write(
        &compose_file,
        "services:\n\
         \x20 db:\n    image: postgres:15\n\
         \x20 web:\n    command: bundle exec puma -C config/puma.rb\n\
         \x20 streaming:\n    image: ghcr.io/mastodon/mastodon-streaming:v4.4.0\n\
         \x20 sidekiq:\n    command: bundle exec sidekiq -c 15\n    environment:\n      DB_POOL: 15\n",
    )
    .unwrap();
    let db = LimitedDbContainer::start(ws.path(), &compose_file);
    // The workspace has no .env.production: Mastodon's defaults apply.
    let out = run({
        let mut cmd = ws.tusk();
        cmd.args([
            "--json",
            "--postgres-mode",
            "docker",
            "--container",
            &db.name,
        ])
        .args(["tune", "--storage", "san"]);
        cmd
    })
    .expect_code(0);
    let doc = out.json();
    let inputs = &doc["inputs"];
    assert_eq!(inputs["memory"], "2GB", "{doc:#}");
    assert!(
        inputs["memory_source"]
            .as_str()
            .unwrap()
            .contains("memory limit"),
        "{inputs}"
    );
    assert_eq!(inputs["cpus"], 1);
    assert_eq!(inputs["postgres_major"], 15);
    assert_eq!(
        doc["connection_budget"]["compose_file"].as_str().unwrap(),
        compose_file.to_str().unwrap()
    );
    // web 2 x 5 + streaming 10 + sidekiq min(15, 15) + headroom 10
    assert_eq!(inputs["connections"], 10 + 10 + 15 + 10);
    assert_eq!(doc["settings"]["shared_buffers"], "512MB");
    assert_eq!(doc["settings"]["effective_io_concurrency"], "300");
    assert!(doc["settings"].get("max_worker_processes").is_none());
}
