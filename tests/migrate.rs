//! `tusk migrate` against real clusters and containers: direct -> direct,
//! Docker -> Docker across majors (13 -> 17, 15 -> 17), Docker -> direct;
//! a full target refused and left as it was; the app containers stopped
//! after the migration and running again with --restart-source; a target
//! killed mid-restore and a verification mismatch, each exiting non-zero
//! with the source untouched, and the re-run resuming with the same set.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The database inside a compose deployment, as its .env.production says.
const DB_URL: &str = "postgresql://postgres@db/mastodon";

fn image(major: &str) -> String {
    let var = format!("TUSK_TEST_DOCKER_IMAGE_{major}");
    std::env::var(&var)
        .unwrap_or_else(|_| panic!("{var} is not set: run the tests through scripts/test.sh"))
}

/// A config file whose stop and start commands append to `log`, standing in
/// for systemctl on a non-Docker install.
fn app_commands_config(ws: &Workspace) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = ws.path().join("app.log");
    let config = ws.path().join("tusk.yaml");
    std::fs::write(
        &config,
        format!(
            "mastodon:\n  stop_command: \"echo stop >> {log}\"\n  start_command: \"echo start >> {log}\"\n",
            log = log.display()
        ),
    )
    .unwrap();
    (config, log)
}

fn stages(report: &serde_json::Value) -> Vec<(String, String)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn all_done() -> Vec<(String, String)> {
    [
        "preflight",
        "stop_writes",
        "backup",
        "restore",
        "verify",
        "cutover",
    ]
    .iter()
    .map(|s| (s.to_string(), "done".to_string()))
    .collect()
}

#[test]
fn direct_to_direct_moves_the_database_and_proves_it() {
    let source = Cluster::main().mastodon_database("mg_dd_src", 1);
    let before = source.fingerprint();
    let target = Cluster::second();
    let target_db = unique_name("mg_dd_dst");
    let ws = Workspace::new();
    let (config, log) = app_commands_config(&ws);

    // Sidekiq's Redis goes into the set, taken while the app is stopped.
    let redis_url =
        std::env::var("TUSK_TEST_REDIS_URL").expect("TUSK_TEST_REDIS_URL (scripts/test.sh)");
    let mut cmd = ws.tusk();
    cmd.arg("--config").arg(&config).args([
        "--json",
        "--database-url",
        &source.url(),
        "--redis-url",
        &redis_url,
        "migrate",
        "--to-url",
        &target.db_url(&target_db),
    ]);
    let out = run(cmd).expect_code(0);
    let report = out.json();
    let dropped = TestDb {
        cluster: target.clone(),
        name: target_db.clone(),
    };

    assert_eq!(stages(&report), all_done(), "{}", out.stderr);
    assert_eq!(
        dropped.fingerprint(),
        before,
        "the target holds exactly the source's rows"
    );
    assert_eq!(source.fingerprint(), before, "the source is unchanged");
    let verification = &report["verification"];
    assert_eq!(verification["problems"].as_array().unwrap().len(), 0);
    assert!(verification["tables_compared"].as_u64().unwrap() >= 10);
    // The stop command ran, the start command did not: the old app stays stopped.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "stop\n");
    assert_eq!(report["source_app"], "stopped");
    // The set is a normal set, the rollback point.
    let ids = ws.set_ids();
    assert_eq!(ids, [report["set_id"].as_str().unwrap()]);
    let mut list = ws.tusk();
    list.args(["backups", "list"]);
    assert!(run_ok(list).contains(&ids[0]));
    // The cut-over report points DB_HOST at the new server.
    let todo = report["cutover"]["todo"].to_string();
    assert!(todo.contains("DB_HOST="), "{todo}");
    assert!(todo.contains("feeds build"), "{todo}");
    let manifest = ws.manifest(&ids[0]);
    let redis = manifest["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "redis")
        .unwrap_or_else(|| panic!("no Redis snapshot in {manifest:#}"));
    assert_eq!(redis["redis"]["exact"], true);
    assert!(
        todo.contains(&format!("tusk restore {} --no-database --redis-to", ids[0])),
        "{todo}"
    );
    // Each stage was logged as it started and ended.
    for stage in ["preflight", "stop writes", "backup", "restore", "verify"] {
        assert!(
            out.stderr.contains(&format!("stage {stage}: started")),
            "{stage}"
        );
        assert!(
            out.stderr.contains(&format!("stage {stage}: done")),
            "{stage}"
        );
    }
    assert!(!out.stderr.contains(&Cluster::second().password()));
}

fn run_ok(cmd: Command) -> String {
    run(cmd).expect_code(0).stdout
}

#[test]
fn a_target_with_tables_is_refused_and_left_unchanged() {
    let source = Cluster::main().mastodon_database("mg_full_src", 1);
    let occupied = Cluster::second().empty_database("mg_full_dst");
    occupied.sql("CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1), (2)");
    let before = occupied.fingerprint();
    let ws = Workspace::new();
    let (config, log) = app_commands_config(&ws);

    for check in [true, false] {
        let mut cmd = ws.tusk();
        cmd.arg("--config").arg(&config).args([
            "--json",
            "--database-url",
            &source.url(),
            "migrate",
            "--to-url",
            &occupied.url(),
        ]);
        if check {
            cmd.arg("--check");
        }
        let out = run(cmd).expect_code(2);
        let report = out.json();
        let refused: Vec<&serde_json::Value> = report["preflight"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "fail")
            .collect();
        assert_eq!(refused.len(), 1, "{report}");
        assert_eq!(refused[0]["name"], "target database empty");
        assert!(out.stderr.contains("--force"), "{}", out.stderr);
    }
    assert_eq!(occupied.fingerprint(), before);
    assert!(!log.exists(), "the app was not stopped");
    assert!(ws.set_ids().is_empty(), "no set was made");

    // The same target, empty: --check passes and changes nothing.
    let empty = Cluster::second().empty_database("mg_check_dst");
    let mut cmd = ws.tusk();
    cmd.arg("--config").arg(&config).args([
        "--json",
        "--database-url",
        &source.url(),
        "migrate",
        "--check",
        "--to-url",
        &empty.url(),
    ]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(report["check_only"], true);
    assert_eq!(stages(&report), [("preflight".into(), "done".into())]);
    let free = report["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "free space on the target")
        .unwrap()
        .clone();
    assert!(
        free["status"] == "pass" || free["status"] == "unknown",
        "{free}"
    );
    assert!(!log.exists());
    assert!(ws.set_ids().is_empty());
    assert_eq!(
        empty.sql("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"),
        "0"
    );
}

#[test]
fn docker_13_to_docker_17_keeps_the_app_stopped_until_asked() {
    if !docker_tests_enabled() {
        return;
    }
    let source = Compose::up_with_image("mg13", &image("13"));
    let source_db = source.mastodon_database(1);
    let before = source_db.fingerprint();
    let target = Compose::up_database_only("mg17", &image("17"));
    let ws = Workspace::new();

    let mut cmd = source.tusk(&ws);
    cmd.args([
        "--json",
        "--database-url",
        DB_URL,
        "migrate",
        "--to-container",
        &target.container("postgres"),
    ]);
    let out = run(cmd).expect_code(0);
    let report = out.json();
    assert_eq!(stages(&report), all_done(), "{}", out.stderr);
    let versions = report["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "target version")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        versions.starts_with("PostgreSQL 13.") && versions.contains("-> 17."),
        "{versions}"
    );
    let migrated = TestDb {
        cluster: target.cluster(),
        name: "mastodon".into(),
    };
    assert_eq!(migrated.fingerprint(), before);
    assert_eq!(
        migrated.sql("SELECT current_setting('server_version_num')::int / 10000"),
        "17"
    );
    assert_eq!(source_db.fingerprint(), before);
    for service in APP_SERVICES {
        assert!(!source.is_running(service), "{service} stays stopped");
    }
    assert!(source.is_running("postgres"), "PostgreSQL is never stopped");

    // Someone starts the old app and it writes: a re-run notices, stops it
    // again and makes a new set instead of trusting the old one.
    let started = Command::new("docker")
        .args(["start", &source.container("web")])
        .output()
        .unwrap();
    assert!(started.status.success());
    source_db.sql("DELETE FROM statuses WHERE id IN (SELECT id FROM statuses ORDER BY id LIMIT 1)");
    let after_writes = source_db.fingerprint();
    let mut cmd = source.tusk(&ws);
    cmd.args([
        "--json",
        "--database-url",
        DB_URL,
        "migrate",
        "--to-container",
        &target.container("postgres"),
    ]);
    let out = run(cmd).expect_code(0);
    let report = out.json();
    let outcomes: Vec<String> = stages(&report)
        .into_iter()
        .map(|(s, o)| format!("{s}:{o}"))
        .collect();
    assert!(
        outcomes.contains(&"backup:done".to_string()),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&"restore:done".to_string()),
        "{outcomes:?}"
    );
    assert!(!source.is_running("web"));
    assert_eq!(ws.set_ids().len(), 2, "a new set");
    assert_eq!(migrated.fingerprint(), after_writes);

    // Re-run with --restart-source: everything is done; only the app starts.
    let mut cmd = source.tusk(&ws);
    cmd.args([
        "--json",
        "--database-url",
        DB_URL,
        "migrate",
        "--restart-source",
        "--to-container",
        &target.container("postgres"),
    ]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(report["resumed"], true);
    assert_eq!(report["source_app"], "running");
    let outcomes: Vec<String> = stages(&report)
        .into_iter()
        .map(|(s, o)| format!("{s}:{o}"))
        .collect();
    assert!(
        outcomes.contains(&"backup:skipped".to_string()),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&"restore:skipped".to_string()),
        "{outcomes:?}"
    );
    for service in APP_SERVICES {
        assert!(source.is_running(service), "{service} runs again");
    }
    assert_eq!(ws.set_ids().len(), 2, "the set was reused");
}

/// Polls the target for the restore's staging database, then kills the
/// target container: the restore fails half-way.
fn kill_when_restoring(target: &Compose) {
    let cluster = target.cluster();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let staging = Command::new(pg_bin().join("psql"))
            .args(["-X", "-A", "-t", "-d", &cluster.url, "-c"])
            .arg("SELECT count(*) FROM pg_database WHERE datname LIKE '%\\_tusk\\_restore\\_%'")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "1")
            .unwrap_or(false);
        if staging {
            let killed = Command::new("docker")
                .args(["kill", &target.container("postgres")])
                .output()
                .unwrap();
            assert!(killed.status.success());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the restore never began");
}

fn edit_manifest(path: &Path, table: &str, delta: i64) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let count = manifest["database"]["tables"][table].as_i64().unwrap();
    manifest["database"]["tables"][table] = (count + delta).into();
    std::fs::write(path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

#[test]
fn docker_15_to_17_survives_a_killed_target_and_a_mismatch_and_resumes() {
    if !docker_tests_enabled() {
        return;
    }
    let source = Compose::up("mg15");
    let source_db = source.mastodon_database(3);
    let before = source_db.fingerprint();
    let target = Compose::up_database_only("mg15t", &image("17"));
    let ws = Workspace::new();
    let migrate = || {
        let mut cmd = source.tusk(&ws);
        cmd.args([
            "--json",
            "--database-url",
            DB_URL,
            "migrate",
            "-j",
            "1",
            "--to-container",
            &target.container("postgres"),
        ]);
        cmd
    };

    // 1. The target dies mid-restore.
    let child = migrate()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    kill_when_restoring(&target);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let set_id = report["set_id"].as_str().unwrap().to_string();
    assert!(stages(&report).contains(&("restore".into(), "failed".into())));
    assert_eq!(source_db.fingerprint(), before, "the source is untouched");
    for service in APP_SERVICES {
        assert!(
            !source.is_running(service),
            "{service} stays stopped after a failure"
        );
    }
    let started = Command::new("docker")
        .args(["start", &target.container("postgres")])
        .output()
        .unwrap();
    assert!(started.status.success());
    wait_accepting(&target.cluster());

    // 2. The set now claims one more account than it holds: the re-run
    // restores, then the verification finds the difference (exit 3).
    let manifest = ws.backup_dir().join(&set_id).join("manifest.json");
    edit_manifest(&manifest, "accounts", 1);
    let out2 = run(migrate()).expect_code(3);
    let report = out2.json();
    assert_eq!(report["resumed"], true);
    assert_eq!(report["set_id"], set_id.as_str(), "the set is reused");
    assert!(stages(&report).contains(&("backup".into(), "skipped".into())));
    assert!(stages(&report).contains(&("restore".into(), "done".into())));
    assert!(stages(&report).contains(&("verify".into(), "failed".into())));
    let problems = report["verification"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["subject"], "accounts");
    assert_eq!(source_db.fingerprint(), before, "the source is untouched");

    // 3. Fixed: the re-run resumes at the verification and completes.
    edit_manifest(&manifest, "accounts", -1);
    let report = run(migrate()).expect_code(0).json();
    let outcomes: Vec<(String, String)> = stages(&report);
    assert!(
        outcomes.contains(&("restore".into(), "skipped".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("verify".into(), "done".into())),
        "{outcomes:?}"
    );
    assert_eq!(ws.set_ids(), [set_id]);
    let migrated = TestDb {
        cluster: target.cluster(),
        name: "mastodon".into(),
    };
    assert_eq!(migrated.fingerprint(), before);
    // No staging database of the killed restore is left.
    assert!(migrated.cluster.databases_like("mastodon_tusk_").is_empty());
}

fn wait_accepting(cluster: &Cluster) {
    for _ in 0..600 {
        let ok = Command::new(pg_bin().join("pg_isready"))
            .args(["-q", "-d", &cluster.url])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the restarted target never accepted connections");
}

#[test]
fn docker_to_direct_restores_with_the_local_tools() {
    if !docker_tests_enabled() {
        return;
    }
    let source = Compose::up("mg_dk2d");
    let source_db = source.mastodon_database(1);
    let before = source_db.fingerprint();
    let target = Cluster::second();
    let target_db = unique_name("mg_dk2d_dst");
    let ws = Workspace::new();

    let mut cmd = source.tusk(&ws);
    cmd.args([
        "--json",
        "--database-url",
        DB_URL,
        "migrate",
        "--to-url",
        &target.db_url(&target_db),
    ]);
    let out = run(cmd).expect_code(0);
    let report = out.json();
    let migrated = TestDb {
        cluster: target,
        name: target_db,
    };
    assert_eq!(stages(&report), all_done(), "{}", out.stderr);
    assert_eq!(migrated.fingerprint(), before);
    let tools = report["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "client tools")
        .unwrap()["detail"]
        .to_string();
    assert!(
        tools.contains("inside container") && tools.contains("local tools"),
        "{tools}"
    );
}

#[test]
fn direct_to_a_docker_17_container_through_a_named_engine() {
    if !docker_tests_enabled() {
        return;
    }
    let source = Cluster::main().mastodon_database("mg_d2dk_src", 1);
    let before = source.fingerprint();
    let target = Compose::up_database_only("mg_d2dk", &image("17"));
    let ws = Workspace::new();
    let (config, log) = app_commands_config(&ws);

    let mut cmd = ws.tusk();
    cmd.arg("--config").arg(&config).args([
        "--json",
        "--database-url",
        &source.url(),
        "migrate",
        "--to-container",
        &target.container("postgres"),
        // The Engine named explicitly, as for another host's.
        "--to-docker-host",
        "unix:///var/run/docker.sock",
        "--to-database",
        "mastodon_production",
    ]);
    let out = run(cmd).expect_code(0);
    let report = out.json();
    assert_eq!(stages(&report), all_done(), "{}", out.stderr);
    let migrated = TestDb {
        cluster: target.cluster(),
        name: "mastodon_production".into(),
    };
    assert_eq!(migrated.fingerprint(), before);
    assert_eq!(source.fingerprint(), before);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "stop\n");
    // The free space was read inside the container, with df.
    let free = report["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "free space on the target")
        .unwrap()
        .clone();
    assert_eq!(free["status"], "pass", "{free}");
    assert!(
        free["detail"]
            .as_str()
            .unwrap()
            .contains("/var/lib/postgresql/data"),
        "{free}"
    );
}
