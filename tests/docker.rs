//! Docker mode: the tools run inside the database container, the app
//! containers are stopped around a dump and always started again.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Database name inside the deployment, as its .env.production would say.
const DB_URL: &str = "postgresql://postgres@db/mastodon";

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn rfc3339_nanos(text: &str) -> i64 {
    let out = Command::new("date")
        .args(["-d", text, "+%s%N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn docker_round_trip_stops_the_apps_only_during_the_dump() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("dk_rt");
    let source = compose.mastodon_database(1);
    let before = source.fingerprint();
    let ws = Workspace::new();

    let since = now_nanos() / 1_000_000_000 - 1;
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--json",
        "--database-url",
        DB_URL,
        "backup",
        "--stop-services",
    ]);
    let report = run(cmd).expect_code(0).json();
    let until = now_nanos() / 1_000_000_000 + 1;
    let id = report["id"].as_str().unwrap().to_string();
    let manifest = ws.manifest(&id);
    assert_eq!(manifest["source"]["mode"], "docker");
    let dump_started = rfc3339_nanos(manifest["started_at"].as_str().unwrap());
    let dump_finished = rfc3339_nanos(manifest["finished_at"].as_str().unwrap());

    // Every app container stopped before the dump began and started after it ended.
    let events = compose.events(since, until);
    for service in APP_SERVICES {
        let name = compose.container(service);
        let stopped = events
            .iter()
            .find(|(n, action, _)| *n == name && action == "stop")
            .unwrap_or_else(|| panic!("{name} was not stopped: {events:?}"));
        // The first start after the stop: the window may also hold the
        // start from bringing the deployment up.
        let started = events
            .iter()
            .find(|(n, action, at)| *n == name && action == "start" && *at >= stopped.2)
            .unwrap_or_else(|| panic!("{name} was not started again: {events:?}"));
        assert!(
            stopped.2 <= dump_started,
            "{name} stopped after the dump began"
        );
        assert!(
            started.2 >= dump_finished,
            "{name} started before the dump ended"
        );
        assert!(compose.is_running(service));
    }
    let database = compose.container("postgres");
    assert!(
        !events
            .iter()
            .any(|(n, action, _)| *n == database
                && ["stop", "kill", "die"].contains(&action.as_str())),
        "the database container was stopped: {events:?}"
    );
    // The dump ran in a helper container from the database's image (the
    // default transport on a local Engine), which is gone again.
    let helper = compose.helper_events(since, until);
    for action in ["create", "start", "die", "destroy"] {
        assert!(
            helper.iter().any(|a| a == action),
            "no helper {action}: {helper:?}"
        );
    }
    assert!(compose.helpers().is_empty(), "helper container left behind");
    assert!(ws.temp_leftovers().is_empty(), "{:?}", ws.temp_leftovers());

    // Restore inside the same container under another name.
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--database-url",
        DB_URL,
        "restore",
        &id,
        "--database",
        "restored",
    ]);
    run(cmd).expect_code(0);
    let restored = TestDb {
        cluster: compose.cluster(),
        name: "restored".into(),
    };
    assert_eq!(restored.fingerprint(), before);

    // Verify in place, and in a throwaway container that is removed afterwards.
    let mut cmd = compose.tusk(&ws);
    cmd.args(["--json", "--database-url", DB_URL, "verify", &id, "-j", "2"]);
    assert_eq!(run(cmd).expect_code(0).json()["ok"], true);
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--json",
        "--database-url",
        DB_URL,
        "verify",
        &id,
        "--verify-container",
        "auto",
    ]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(report["ok"], true);
    let leftovers = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=tusk.purpose=verify"])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty(), "verify container left behind");
    assert!(compose.cluster().databases_like("tusk_verify_").is_empty());
}

#[test]
fn sets_move_between_direct_and_docker_mode() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("dk_x");
    let in_container = compose.mastodon_database(1);
    let before = in_container.fingerprint();
    let ws = Workspace::new();

    // Docker-mode set -> direct-mode restore on a host cluster.
    let mut cmd = compose.tusk(&ws);
    cmd.args(["--json", "--database-url", DB_URL, "backup"]);
    let docker_id = run(cmd).expect_code(0).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let host_target = TestDb {
        cluster: Cluster::second(),
        name: unique_name("dk_from_docker"),
    };
    let mut cmd = ws.tusk();
    cmd.args(["restore", &docker_id, "--target-url"])
        .arg(host_target.url());
    run(cmd).expect_code(0);
    assert_eq!(host_target.fingerprint(), before);

    // Direct-mode set from a host cluster -> Docker-mode restore, in parallel.
    let host_source = Cluster::main().mastodon_database("dk_host_src", 1);
    let host_before = host_source.fingerprint();
    let direct_id = ws.backup(&host_source)["id"].as_str().unwrap().to_string();
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--database-url",
        DB_URL,
        "restore",
        &direct_id,
        "--database",
        "from_direct",
        "-j",
        "2",
    ]);
    run(cmd).expect_code(0);
    let restored = TestDb {
        cluster: compose.cluster(),
        name: "from_direct".into(),
    };
    assert_eq!(restored.fingerprint(), host_before);
    // The staged copy inside the container is gone.
    let listing = Command::new("docker")
        .args([
            "exec",
            &compose.container("postgres"),
            "sh",
            "-c",
            "ls /tmp | grep tusk-restore || true",
        ])
        .output()
        .unwrap();
    assert!(
        listing.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&listing.stdout)
    );
}

/// Restores set `id` into database `name` of the deployment, logging in
/// with `url`, and checks it against the source's fingerprint.
fn restores_as_before(
    compose: &Compose,
    ws: &Workspace,
    url: &str,
    id: &str,
    name: &str,
    before: &std::collections::BTreeMap<String, (i64, String)>,
) {
    let mut cmd = compose.tusk(ws);
    cmd.args(["--database-url", url, "restore", id, "--database", name]);
    run(cmd).expect_code(0);
    let restored = TestDb {
        cluster: compose.cluster(),
        name: name.into(),
    };
    assert_eq!(&restored.fingerprint(), before, "{id}");
}

#[test]
fn the_exec_transport_and_the_fallback_to_it_dump_the_same_database() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("dk_exec");
    let source = compose.mastodon_database(1);
    let before = source.fingerprint();
    let database = compose.container("postgres");
    let ws = Workspace::new();

    // Asked for: pg_dump runs in the database container, no helper.
    let since = now_nanos() / 1_000_000_000 - 1;
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--json",
        "--docker-transport",
        "exec",
        "--database-url",
        DB_URL,
        "backup",
    ]);
    let id = run(cmd).expect_code(0).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let until = now_nanos() / 1_000_000_000 + 1;
    let events = compose.events(since, until);
    assert!(
        events.iter().any(|(n, action, _)| *n == database
            && action.starts_with("exec_start: pg_dump --format=custom")),
        "pg_dump did not run inside the database container: {events:?}"
    );
    assert!(compose.helper_events(since, until).is_empty());
    restores_as_before(&compose, &ws, DB_URL, &id, "via_exec", &before);

    // The helper cannot get its directory (the temporary directory does
    // not exist): `auto` warns and streams through exec...
    let missing = ws.path().join("no-such-dir");
    let mut cmd = compose.tusk_with_temp_dir(&ws, &missing);
    cmd.args(["--json", "--database-url", DB_URL, "backup"]);
    let out = run(cmd).expect_code(0);
    assert!(
        out.stderr.contains("streaming through docker exec instead"),
        "{}",
        out.stderr
    );
    let id = out.json()["id"].as_str().unwrap().to_string();
    restores_as_before(&compose, &ws, DB_URL, &id, "via_fallback", &before);

    // ... while `pipe` fails without leaving a set.
    let sets = ws.set_ids();
    let mut cmd = compose.tusk_with_temp_dir(&ws, &missing);
    cmd.args([
        "--docker-transport",
        "pipe",
        "--database-url",
        DB_URL,
        "backup",
    ]);
    let out = run(cmd).expect_code(1);
    assert!(out.stderr.contains("no-such-dir"), "{}", out.stderr);
    assert_eq!(ws.set_ids(), sets);
    assert!(compose.helpers().is_empty());
}

#[test]
fn the_helper_logs_in_with_a_password_when_the_server_asks_for_one() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("dk_pw");
    let source = compose.mastodon_database(1);
    let before = source.fingerprint();
    let database = compose.container("postgres");
    // Passwords for every TCP login, 127.0.0.1 inside the container included;
    // the local socket (docker exec) stays trusted.
    source.sql(r"CREATE ROLE pw_admin SUPERUSER LOGIN PASSWORD 'p:w\d'");
    let tcp_logins = |from: &str, to: &str| {
        let script = format!(
            "sed -i 's/^\\(host.*\\){from}$/\\1{to}/' /var/lib/postgresql/data/pg_hba.conf \
             && psql -U postgres -Atc 'SELECT pg_reload_conf()'"
        );
        let status = Command::new("docker")
            .args(["exec", &database, "sh", "-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
    };
    tcp_logins("trust", "scram-sha-256");
    let ws = Workspace::new();

    let since = now_nanos() / 1_000_000_000 - 1;
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--json",
        "--database-url",
        "postgresql://pw_admin:p%3Aw%5Cd@db/mastodon",
        "backup",
    ]);
    let out = run(cmd).expect_code(0);
    let until = now_nanos() / 1_000_000_000 + 1;
    assert!(!out.stderr.contains("instead"), "{}", out.stderr);
    assert!(
        compose
            .helper_events(since, until)
            .contains(&"destroy".to_string())
    );
    assert!(ws.temp_leftovers().is_empty(), "the password file is gone");

    let id = out.json()["id"].as_str().unwrap().to_string();
    // The fingerprint logs in as postgres without a password.
    let url = "postgresql://pw_admin:p%3Aw%5Cd@db/mastodon";
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--database-url",
        url,
        "restore",
        &id,
        "--database",
        "restored",
    ]);
    run(cmd).expect_code(0);
    tcp_logins("scram-sha-256", "trust");
    let restored = TestDb {
        cluster: compose.cluster(),
        name: "restored".into(),
    };
    assert_eq!(restored.fingerprint(), before);
}

/// Starts a Docker-mode backup with --stop-services on a database big
/// enough to catch it mid-dump, and calls `interrupt` with tusk's pid once
/// pg_dump's COPY is under way.
fn backup_interrupted_mid_dump(
    compose: &Compose,
    ws: &Workspace,
    interrupt: impl FnOnce(u32),
) -> std::process::Output {
    let source = compose.mastodon_database(1);
    source.sql(
        "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 12) AS body \
         FROM generate_series(1, 600000) g",
    );
    let mut cmd = compose.tusk(ws);
    cmd.args(["--database-url", DB_URL, "backup", "--stop-services"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copying = source.cluster.sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'mastodon' AND query LIKE 'COPY %'",
        );
        if copying != "0" {
            break;
        }
        assert!(Instant::now() < deadline, "never saw pg_dump's COPY");
        std::thread::sleep(Duration::from_millis(5));
    }
    interrupt(child.id());
    child.wait_with_output().unwrap()
}

#[test]
fn a_failed_dump_still_starts_the_apps_again() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("dk_fail");
    let ws = Workspace::new();
    let cluster = compose.cluster();
    let out = backup_interrupted_mid_dump(&compose, &ws, |_| {
        cluster.sql(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = 'mastodon' AND query LIKE 'COPY %'",
        );
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(ws.set_ids().is_empty());
    assert!(compose.helpers().is_empty(), "helper left behind: {stderr}");
    assert!(ws.temp_leftovers().is_empty(), "{:?}", ws.temp_leftovers());
    for service in APP_SERVICES {
        assert!(
            compose.is_running(service),
            "{service} not running again: {stderr}"
        );
    }
}

#[test]
fn the_database_container_stopping_mid_dump_exits_1_and_restarts_the_apps() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("dk_stop");
    let ws = Workspace::new();
    let pg = compose.container("postgres");
    let out = backup_interrupted_mid_dump(&compose, &ws, |_| {
        let status = Command::new("docker")
            .args(["stop", "-t", "1", &pg])
            .status()
            .unwrap();
        assert!(status.success());
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(ws.set_ids().is_empty(), "no complete set");
    // Only tusk's hidden files may remain: the lock, the last run's record.
    let partials = std::fs::read_dir(ws.backup_dir())
        .map(|d| {
            d.filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                !name.to_string_lossy().starts_with('.')
            })
            .count()
        })
        .unwrap_or(0);
    assert_eq!(partials, 0, "no .partial set may remain");
    assert!(compose.helpers().is_empty(), "helper left behind: {stderr}");
    assert!(ws.temp_leftovers().is_empty(), "{:?}", ws.temp_leftovers());
    for service in APP_SERVICES {
        assert!(
            compose.is_running(service),
            "{service} not running again: {stderr}"
        );
    }
}

#[test]
fn a_missing_container_exits_2_naming_it() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("dk_missing");
    let ws = Workspace::new();
    let mut cmd = ws.tusk();
    cmd.args([
        "--postgres-mode",
        "docker",
        "--container",
        "no-such-postgres",
        "backup",
    ]);
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("no-such-postgres"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&compose.container("web")),
        "running containers listed: {}",
        out.stderr
    );

    // A stopped database container is named as such.
    let status = Command::new("docker")
        .args(["stop", &compose.container("postgres")])
        .status()
        .unwrap();
    assert!(status.success());
    let mut cmd = compose.tusk(&ws);
    cmd.arg("backup");
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("compose service db"), "{}", out.stderr);
}

#[test]
fn ctrl_c_mid_dump_starts_the_apps_again_and_keeps_no_set() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("dk_int");
    let ws = Workspace::new();
    // SIGINT to tusk itself, as Ctrl-C at a terminal sends.
    let out = backup_interrupted_mid_dump(&compose, &ws, |tusk_pid| {
        let status = Command::new("kill")
            .args(["-INT", &tusk_pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(ws.set_ids().is_empty());
    assert!(compose.helpers().is_empty(), "helper left behind: {stderr}");
    assert!(ws.temp_leftovers().is_empty(), "{:?}", ws.temp_leftovers());
    for service in APP_SERVICES {
        assert!(
            compose.is_running(service),
            "{service} not running again: {stderr}"
        );
    }
}

#[test]
fn prune_works_in_docker_mode() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("prune");
    let db = compose.mastodon_database(1);
    let ws = Workspace::new();
    let (root, _) = common::s3::media_files(&ws, &db);
    // tootctl's selection: the `cached` scope without blank file names.
    let cached = "remote_url <> '' AND file_file_name IS NOT NULL AND file_file_name <> '' \
                  AND created_at < (now() AT TIME ZONE 'UTC') - interval '7 days'";
    let expected: usize = db
        .sql(&format!(
            "SELECT count(*) FROM media_attachments WHERE {cached}"
        ))
        .parse()
        .unwrap();
    assert!(expected > 0);
    let files_before = common::s3::local_tree(&root).len();

    let mut cmd = compose.tusk(&ws);
    cmd.args(["--database-url", DB_URL, "--media-root"])
        .arg(&root)
        .args(["--json", "prune", "--media-cache-days", "7", "--yes"]);
    let report = run(cmd).expect_code(0).json();

    assert_eq!(report["rules"][0]["rows"], expected);
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM media_attachments WHERE {cached}"
        )),
        "0"
    );
    let freed = report["rules"][0]["files"].as_u64().unwrap() as usize;
    assert!(freed >= expected);
    assert_eq!(common::s3::local_tree(&root).len(), files_before - freed);
}
