//! `tusk rehearse`: the JSON and JUnit reports and their fields, `--run`
//! with the restored copy in its environment, exit 3 on a corrupt set and 5
//! on a failing command, no database or container left behind, and the
//! production database and containers untouched (write counters, states).

mod common;

use std::process::Command;

use common::*;

const DB_URL: &str = "postgresql://postgres@db/mastodon";

/// Rows written to `database` so far, by pg_stat_database's counters,
/// once they have settled: a backend reports its counts when it ends, a
/// moment after its client has gone, so a reading taken right after the
/// fixture was seeded can miss the seeding's last rows.
fn writes(cluster: &Cluster, database: &str) -> String {
    let read = || {
        cluster.sql(
            "postgres",
            &format!(
                "SELECT tup_inserted, tup_updated, tup_deleted \
                 FROM pg_stat_database WHERE datname = '{database}'"
            ),
        )
    };
    let mut last = read();
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the write counters of {database} never settled: {last}");
}

/// The values of attribute `name` of every `element` (a plain text scan;
/// the leading space keeps `name` from matching `classname`).
fn attribute<'a>(xml: &'a str, element: &str, name: &str) -> Vec<&'a str> {
    xml.split(&format!("<{element} "))
        .skip(1)
        .filter_map(|rest| {
            let start = if rest.starts_with(&format!("{name}=\"")) {
                name.len() + 2
            } else {
                rest.find(&format!(" {name}=\""))? + name.len() + 3
            };
            let end = rest[start..].find('"')? + start;
            Some(&rest[start..end])
        })
        .collect()
}

#[test]
fn a_rehearsal_writes_its_reports_and_runs_the_command_against_the_copy() {
    let source = Cluster::main().mastodon_database("rh_ok", 1);
    let ws = Workspace::new();
    let backup = ws.backup(&source);
    let set_id = backup["id"].as_str().unwrap().to_string();
    let accounts = source.sql("SELECT count(*) FROM accounts");
    let before = writes(&source.cluster, &source.name);
    let junit = ws.path().join("rehearse.xml");
    let json_file = ws.path().join("rehearse.json");
    let seen = ws.path().join("seen.txt");
    let scratch_server = Cluster::second();

    let mut cmd = ws.tusk();
    cmd.args([
        "--json",
        "--database-url",
        &source.url(),
        "rehearse",
        "--target-url",
        &scratch_server.url,
        "--run",
    ])
    .arg(format!(
        "{psql} -X -A -t -d \"$DATABASE_URL\" -c 'SELECT count(*) FROM accounts' > {seen} && \
         test \"$DB_NAME\" = \"$PGDATABASE\" && test -n \"$DB_HOST\" && test -n \"$DB_PORT\" && \
         test -n \"$DB_USER\"",
        psql = pg_bin().join("psql").display(),
        seen = seen.display()
    ))
    .arg("--junit")
    .arg(&junit)
    .arg("--report")
    .arg(&json_file);
    let out = run(cmd).expect_code(0);
    let report = out.json();

    for field in [
        "ok",
        "exit_code",
        "started_at",
        "seconds",
        "set_id",
        "target",
        "restore_seconds",
        "peak_database_bytes",
        "tables_compared",
        "problems",
        "run",
    ] {
        assert!(!report[field].is_null(), "{field} missing: {report}");
    }
    assert_eq!(report["ok"], true);
    assert_eq!(report["set_id"], set_id.as_str());
    assert!(report["restore_seconds"].as_f64().unwrap() > 0.0);
    assert!(report["peak_database_bytes"].as_i64().unwrap() > 1_000_000);
    assert!(report["tables_compared"].as_u64().unwrap() >= 10);
    assert_eq!(report["run"]["exit_code"], 0);
    // The command saw the restored copy: the same accounts.
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), accounts);
    // The report file holds the same document.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_file).unwrap()).unwrap();
    assert_eq!(file["set_id"], report["set_id"]);

    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert_eq!(attribute(&xml, "testsuites", "tests"), ["5"], "{xml}");
    assert_eq!(attribute(&xml, "testsuite", "failures"), ["0"], "{xml}");
    let cases = attribute(&xml, "testcase", "name");
    assert!(
        cases.contains(&"restore") && cases.contains(&"content"),
        "{cases:?}"
    );
    assert_eq!(attribute(&xml, "testcase", "time").len(), 5);
    assert!(!xml.contains("<failure"));

    // Nothing left on the scratch server, nothing written to the source.
    assert!(scratch_server.kept_scratch_of(&out.stderr).is_empty());
    assert!(!scratch_databases_in(&out.stderr).is_empty());
    assert_eq!(writes(&source.cluster, &source.name), before);
}

#[test]
fn a_corrupt_set_fails_the_rehearsal_with_exit_3() {
    let source = Cluster::main().mastodon_database("rh_bad", 1);
    let ws = Workspace::new();
    let backup = ws.backup(&source);
    let id = backup["id"].as_str().unwrap();
    let dump = std::fs::read_dir(ws.backup_dir().join(id))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("database.dump")
        })
        .unwrap();
    let mut bytes = std::fs::read(&dump).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&dump, bytes).unwrap();
    let junit = ws.path().join("rehearse.xml");

    let mut cmd = ws.tusk();
    cmd.args([
        "--json",
        "--database-url",
        &source.url(),
        "rehearse",
        "--set",
        id,
        "--target-url",
        &Cluster::second().url,
        "--run",
        "exit 0",
    ])
    .arg("--junit")
    .arg(&junit);
    let out = run(cmd).expect_code(3);
    let report = out.json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["exit_code"], 3);
    assert_eq!(report["problems"][0]["kind"], "checksum");
    assert!(
        report["run"].is_null(),
        "nothing was restored to run against"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(attribute(&xml, "testsuite", "failures"), ["1"], "{xml}");
    assert!(xml.contains("<testcase classname=") && xml.contains("name=\"checksums\""));
    assert!(xml.contains("<failure message=\"1 problem(s)\""), "{xml}");

    // Without --set, the damaged set (its verification failed) is no
    // longer the latest good one.
    let mut cmd = ws.tusk();
    cmd.args([
        "--database-url",
        &source.url(),
        "rehearse",
        "--target-url",
        &Cluster::second().url,
    ]);
    let out = run(cmd).expect_code(2);
    assert!(
        out.stderr.contains("passed its last verification"),
        "{}",
        out.stderr
    );
}

fn verify_containers(stderr: &str) -> Vec<String> {
    stderr
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|word| word.starts_with("tusk-verify-"))
        .map(str::to_string)
        .collect()
}

fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["inspect", name])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

#[test]
fn a_failing_command_in_a_throwaway_container_exits_5_and_leaves_nothing() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("rh_dk");
    let cluster = compose.cluster();
    cluster.sql("postgres", "CREATE DATABASE mastodon");
    let db = TestDb {
        cluster: cluster.clone(),
        name: "mastodon".into(),
    };
    db.seed_mastodon(1);
    let before = writes(&cluster, "mastodon");
    let ws = Workspace::new();
    let junit = ws.path().join("rehearse.xml");
    let image17 = std::env::var("TUSK_TEST_DOCKER_IMAGE_17")
        .expect("TUSK_TEST_DOCKER_IMAGE_17 is not set: run the tests through scripts/test.sh");

    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--json",
        "--database-url",
        DB_URL,
        "rehearse",
        "--fresh",
        "--image",
        &image17,
        "--run",
    ])
    .arg(format!(
        "test \"$({} -X -A -t -c 'SHOW server_version_num')\" -ge 170000 && exit 7",
        pg_bin().join("psql").display()
    ))
    .arg("--junit")
    .arg(&junit);
    let out = run(cmd).expect_code(5);
    let report = out.json();
    assert_eq!(report["fresh"], true);
    assert_eq!(report["image"], image17.as_str());
    assert_eq!(
        report["problems"].as_array().unwrap().len(),
        0,
        "the content matched"
    );
    // Exit 7 proves the command reached a PostgreSQL 17 copy.
    assert_eq!(report["run"]["exit_code"], 7);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(attribute(&xml, "testsuite", "failures"), ["1"], "{xml}");
    assert!(xml.contains("<failure message=\"exit 7\""), "{xml}");

    let made = verify_containers(&out.stderr);
    assert!(!made.is_empty(), "{}", out.stderr);
    for name in made {
        assert!(!container_exists(&name), "{name} was left behind");
    }
    // Production: no rows written, every container as it was.
    assert_eq!(writes(&cluster, "mastodon"), before);
    for service in APP_SERVICES {
        assert!(compose.is_running(service), "{service} was touched");
    }
    assert!(compose.is_running("postgres"));
}

#[test]
fn a_failing_command_against_a_scratch_database_leaves_no_database() {
    let source = Cluster::main().mastodon_database("rh_fail", 1);
    let ws = Workspace::new();
    ws.backup(&source);
    let scratch_server = Cluster::second();

    let mut cmd = ws.tusk();
    cmd.args([
        "--json",
        "--database-url",
        &source.url(),
        "rehearse",
        "--target-url",
        &scratch_server.url,
        "--run",
        "test -n \"$DATABASE_URL\" && exit 9",
    ]);
    let out = run(cmd).expect_code(5);
    let report = out.json();
    assert_eq!(report["exit_code"], 5);
    assert_eq!(report["run"]["exit_code"], 9);
    assert!(report["error"].as_str().unwrap().contains("exit 9"));
    let made = scratch_databases_in(&out.stderr);
    assert!(!made.is_empty(), "{}", out.stderr);
    assert!(scratch_server.kept_scratch_of(&out.stderr).is_empty());
}
