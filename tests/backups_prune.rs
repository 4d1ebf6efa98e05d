//! `tusk backups prune` and `tusk backup --prune` with the built binary: the
//! decisions on a history of real-looking sets (manifests copied from a real
//! backup, with chosen start times), what is never removed (foreign entries,
//! the newest verified set, anything after a failed backup), the lock, and a
//! real nightly `backup --prune` keeping exactly `keep_last` sets.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{Value, json};

/// A real set's manifest, made once by a real backup: the template of the
/// synthetic sets.
fn real_manifest() -> &'static Value {
    static MANIFEST: OnceLock<Value> = OnceLock::new();
    MANIFEST.get_or_init(|| {
        let db = Cluster::main().mastodon_database("tusk_bprune_tpl", 1);
        let ws = Workspace::new();
        let report = ws.backup(&db);
        ws.manifest(report["id"].as_str().unwrap())
    })
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Writes `<dir>/<instance>-<time>/manifest.json` from the real manifest,
/// as if a backup of `instance` had started at `started_at`; returns the id.
fn synthetic_set(dir: &Path, instance: &str, started_at: &str) -> String {
    let started = at(started_at);
    let id = format!("{instance}-{}", started.format("%Y%m%dT%H%M%SZ"));
    let mut manifest = real_manifest().clone();
    manifest["id"] = json!(id);
    manifest["instance"] = json!(instance);
    manifest["started_at"] = json!(started.to_rfc3339());
    manifest["finished_at"] = json!((started + chrono::Duration::minutes(3)).to_rfc3339());
    std::fs::create_dir_all(dir.join(&id)).unwrap();
    std::fs::write(
        dir.join(&id).join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    id
}

/// Records the last backup run as `tusk backup` does.
fn last_backup(dir: &Path, outcome: &str, started_at: &str) {
    let record = json!({
        "command": "backup",
        "started_at": at(started_at).to_rfc3339(),
        "finished_at": at(started_at).to_rfc3339(),
        "outcome": outcome,
        "set_id": null,
        "bytes": null,
        "error": if outcome == "failed" { json!("pg_dump: error: connection lost") } else { Value::Null },
        "pid": 1,
        "host": "test",
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(".tusk-last-backup.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
}

/// `tusk` with a tusk.yaml in the workspace (and nothing else configured).
fn tusk_with_config(ws: &Workspace, yaml: &str) -> std::process::Command {
    let config = ws.path().join("tusk.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut cmd = tusk(ws.path());
    cmd.arg("--config").arg(config);
    cmd
}

/// The shape of a local destination with retention.
fn destinations_yaml(ws: &Workspace, retention: &str, extra: &str) -> String {
    format!(
        "destinations:\n  - name: local\n    dir: {}\n    retention: {retention}\n{extra}",
        ws.backup_dir().display()
    )
}

/// What is in the backup directory, the lock file (created by any run) aside.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".tusk.lock")
        .collect();
    names.sort();
    names
}

/// (id, keep, reasons) of the JSON report's only destination.
fn fates(report: &Value) -> Vec<(String, bool, Vec<String>)> {
    let destinations = report["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 1, "{report:#}");
    assert_eq!(destinations[0]["name"], "local");
    destinations[0]["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|set| {
            assert!(set["started_at"].is_string(), "{set}");
            let reasons = set["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            (
                set["id"].as_str().unwrap().to_string(),
                set["keep"].as_bool().unwrap(),
                reasons,
            )
        })
        .collect()
}

#[test]
fn dry_run_decides_in_the_time_zone_and_prune_removes_only_what_it_listed() {
    let ws = Workspace::new();
    let dir = ws.backup_dir();
    // Newest first: g, f, e, d, c, b, a. In Berlin, d (00:30 on 1 June) is
    // a day and a month after c (23:30 on 31 May); in UTC both are 31 May.
    let a = synthetic_set(&dir, "social", "2026-03-10T02:00:00Z");
    let b = synthetic_set(&dir, "social", "2026-04-10T02:00:00Z");
    let c = synthetic_set(&dir, "social", "2026-05-31T21:30:00Z");
    let d = synthetic_set(&dir, "social", "2026-05-31T22:30:00Z");
    let e = synthetic_set(&dir, "social", "2026-06-02T02:00:00Z");
    let f = synthetic_set(&dir, "social", "2026-06-03T02:00:00Z");
    let g = synthetic_set(&dir, "social", "2026-06-03T10:00:00Z");
    last_backup(&dir, "ok", "2026-06-03T10:00:00Z");
    // An attempt killed long ago, and what tusk did not make.
    std::fs::create_dir_all(dir.join("social-20260515T000000Z.partial")).unwrap();
    // A removal an earlier prune did not finish.
    std::fs::create_dir_all(dir.join("social-20250101T000000Z.removing")).unwrap();
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    std::fs::write(dir.join("README"), "the admin's file").unwrap();
    std::fs::create_dir_all(dir.join("social-20200101T000000Z")).unwrap();
    std::fs::write(dir.join("social-20200101T000000Z/data"), "no manifest").unwrap();
    let foreign = synthetic_set(&dir, "social", "2020-02-01T00:00:00Z");
    std::fs::rename(dir.join(&foreign), dir.join("social-20200202T000000Z")).unwrap();

    let yaml = destinations_yaml(
        &ws,
        "{keep_last: 2, keep_daily: 3, keep_monthly: 3}",
        "time_zone: Europe/Berlin\n",
    );
    let before = entries(&dir);
    let mut cmd = tusk_with_config(&ws, &yaml);
    cmd.args(["--json", "backups", "prune", "--dry-run"]);
    let report = run(cmd).expect_code(0).json();
    let reasons = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        fates(&report),
        [
            (
                g.clone(),
                true,
                reasons(&["last", "daily", "monthly", "newest-good"])
            ),
            (f.clone(), true, reasons(&["last"])),
            (e.clone(), true, reasons(&["daily"])),
            (d.clone(), true, reasons(&["daily"])),
            (c.clone(), true, reasons(&["monthly"])),
            ("social-20260515T000000Z".into(), false, vec![]),
            (b.clone(), true, reasons(&["monthly"])),
            (a.clone(), false, vec![]),
        ]
    );
    let listed = &report["destinations"][0];
    assert_eq!(listed["sets"][5]["incomplete"], true);
    assert_eq!(listed["held"], Value::Null);
    assert_eq!(listed["removed"], 0);
    assert_eq!(entries(&dir), before, "a dry run removes nothing");

    // The same in UTC: c shares d's day and month and goes with a.
    let mut cmd = tusk_with_config(
        &ws,
        &destinations_yaml(&ws, "{keep_last: 2, keep_daily: 3, keep_monthly: 3}", ""),
    );
    cmd.args(["--json", "backups", "prune", "--dry-run"]);
    let utc = fates(&run(cmd).expect_code(0).json());
    let kept: Vec<&str> = utc.iter().filter(|f| f.1).map(|f| f.0.as_str()).collect();
    assert_eq!(
        kept,
        [g.as_str(), f.as_str(), e.as_str(), d.as_str(), b.as_str()]
    );

    // Without a terminal, removing needs --yes; nothing goes without it.
    let mut cmd = tusk_with_config(&ws, &yaml);
    cmd.args(["backups", "prune"]);
    let refused = run(cmd).expect_code(2);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(entries(&dir), before);

    let mut cmd = tusk_with_config(&ws, &yaml);
    cmd.args(["--yes", "backups", "prune"]);
    let pruned = run(cmd).expect_code(0);
    assert!(pruned.stdout.contains("2 removed"), "{}", pruned.stdout);
    let mut expected: Vec<String> = before
        .into_iter()
        .filter(|name| {
            *name != a
                && name != "social-20260515T000000Z.partial"
                && name != "social-20250101T000000Z.removing"
        })
        .collect();
    expected.sort();
    assert_eq!(entries(&dir), expected, "foreign entries survive");

    // An unknown destination is a usage error.
    let mut cmd = tusk_with_config(&ws, &yaml);
    cmd.args(["backups", "prune", "--dry-run", "--destination", "b2"]);
    let unknown = run(cmd).expect_code(2);
    assert!(
        unknown.stderr.contains("no destination named \"b2\""),
        "{}",
        unknown.stderr
    );
}

#[test]
fn nothing_is_removed_after_a_failed_backup() {
    let ws = Workspace::new();
    let dir = ws.backup_dir();
    let old = synthetic_set(&dir, "test", "2026-01-01T00:00:00Z");
    let newer = synthetic_set(&dir, "test", "2026-02-01T00:00:00Z");
    std::fs::create_dir_all(dir.join("test-20250101T000000Z.partial")).unwrap();
    std::fs::write(ws.path().join("tusk.yaml"), "retention: {keep_last: 1}\n").unwrap();

    // A real backup that fails: its database does not exist.
    let mut cmd = ws.tusk();
    cmd.arg("--config").arg(ws.path().join("tusk.yaml"));
    cmd.args(["backup", "--prune", "--database-url"])
        .arg(Cluster::main().db_url("tusk_bprune_no_such_database"));
    run(cmd).expect_code(1);
    let before = entries(&dir);
    assert!(before.contains(&".tusk-last-backup.json".to_string()));

    let mut cmd = ws.tusk();
    cmd.arg("--config").arg(ws.path().join("tusk.yaml"));
    cmd.args(["--json", "--yes", "backups", "prune"]);
    let report = run(cmd).expect_code(0).json();
    let listed = &report["destinations"][0];
    assert!(
        listed["held"].as_str().unwrap().contains("failed"),
        "{listed:#}"
    );
    assert_eq!(listed["removed"], 0);
    let fates = fates(&report);
    assert!(fates.iter().all(|f| f.1), "{fates:?}");
    assert_eq!(fates[1], (old.clone(), true, vec!["held".to_string()]));
    assert_eq!(fates[0].0, newer);
    assert_eq!(
        entries(&dir),
        before,
        "nothing removed, not even the old attempt"
    );

    // Killed (still `running`): the same.
    last_backup(&dir, "running", "2026-02-02T00:00:00Z");
    let mut cmd = ws.tusk();
    cmd.arg("--config").arg(ws.path().join("tusk.yaml"));
    cmd.args(["--yes", "backups", "prune"]);
    let held = run(cmd).expect_code(0);
    assert!(held.stdout.contains("never finished"), "{}", held.stdout);
    assert_eq!(entries(&dir), before);
}

#[test]
fn the_newest_verified_set_survives_keep_last_1() {
    let ws = Workspace::new();
    let dir = ws.backup_dir();
    let verified = synthetic_set(&dir, "test", "2026-01-01T00:00:00Z");
    let failed = synthetic_set(&dir, "test", "2026-01-02T00:00:00Z");
    let unverified = synthetic_set(&dir, "test", "2026-01-03T00:00:00Z");
    let verification = |ok: bool| {
        json!({
            "verified_at": "2026-01-04T00:00:00Z", "ok": ok, "checksums_only": false,
            "server": "postgresql://postgres@127.0.0.1:5432/postgres", "restore_seconds": 1.0,
            "peak_database_bytes": 1, "problems": [],
        })
        .to_string()
    };
    std::fs::write(
        dir.join(&verified).join("verification.json"),
        verification(true),
    )
    .unwrap();
    std::fs::write(
        dir.join(&failed).join("verification.json"),
        verification(false),
    )
    .unwrap();
    last_backup(&dir, "ok", "2026-01-03T00:00:00Z");
    let yaml = destinations_yaml(&ws, "{keep_last: 1}", "");

    let mut cmd = tusk_with_config(&ws, &yaml);
    cmd.args(["--json", "--yes", "backups", "prune"]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(
        fates(&report),
        [
            (
                unverified.clone(),
                true,
                vec!["last".to_string(), "newest-good".to_string()]
            ),
            (failed.clone(), false, vec![]),
            (verified.clone(), true, vec!["newest-verified".to_string()]),
        ]
    );
    assert_eq!(report["destinations"][0]["removed"], 1);
    let left = entries(&dir);
    assert!(
        left.contains(&verified) && left.contains(&unverified),
        "{left:?}"
    );
    assert!(
        !left.iter().any(|name| name.starts_with(&failed)),
        "{left:?}"
    );
}

#[test]
fn a_held_lock_exits_4_and_removes_nothing() {
    let ws = Workspace::new();
    let dir = ws.backup_dir();
    synthetic_set(&dir, "test", "2026-01-01T00:00:00Z");
    synthetic_set(&dir, "test", "2026-01-02T00:00:00Z");
    last_backup(&dir, "ok", "2026-01-02T00:00:00Z");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".tusk.lock"))
        .unwrap();
    lock.lock().unwrap();
    let before = entries(&dir);

    let mut cmd = tusk_with_config(&ws, &destinations_yaml(&ws, "{keep_last: 1}", ""));
    cmd.args(["--yes", "backups", "prune"]);
    let locked = run(cmd).expect_code(4);
    assert!(locked.stderr.contains(".tusk.lock"), "{}", locked.stderr);
    assert_eq!(entries(&dir), before);
}

#[test]
fn unusable_settings_are_refused_before_anything_happens() {
    let ws = Workspace::new();
    for (yaml, expected) in [
        (
            "destinations:\n  - name: b2\n    s3: {bucket: my-backups, prefix: mastodon/}\n    \
             retention: {keep_daily: 14, keep_monthly: 12, keep_yearly: 3}\n"
                .to_string(),
            "no credentials: set TUSK_S3_ACCESS_KEY_ID",
        ),
        (
            destinations_yaml(&ws, "{keep_daily: 7}", "time_zone: Europe/Atlantis\n"),
            "unknown time zone",
        ),
        (
            format!("backup_dir: {}\n", ws.backup_dir().display()),
            "has no retention policy",
        ),
    ] {
        let mut cmd = tusk_with_config(&ws, &yaml);
        cmd.args(["backups", "prune", "--dry-run"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                ws.path().join("no-credentials"),
            );
        let refused = run(cmd).expect_code(2);
        assert!(
            refused.stderr.contains(expected),
            "{yaml}: {}",
            refused.stderr
        );
    }
}

#[test]
fn nightly_backup_prune_keeps_exactly_keep_last_sets() {
    let db = Cluster::main().mastodon_database("tusk_bprune_nightly", 1);
    let ws = Workspace::new();
    let yaml = destinations_yaml(&ws, "{keep_last: 2}", "");
    let mut reports = Vec::new();
    for _ in 0..3 {
        let mut cmd = tusk_with_config(&ws, &yaml);
        cmd.args([
            "--json",
            "--instance",
            "test",
            "backup",
            "--prune",
            "--database-url",
        ])
        .arg(db.url());
        reports.push(run(cmd).expect_code(0).json());
        // Set ids are to the second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let ids: Vec<&str> = reports.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ws.set_ids(), [ids[1], ids[2]], "the two newest sets");
    let last = &reports[2]["pruned"][0];
    assert_eq!(last["name"], "local");
    assert_eq!(last["removed"], 1);
    let removed: Vec<&str> = last["sets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["keep"] == false)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [ids[0]]);
    // Nothing half-removed is left behind.
    assert!(
        !entries(&ws.backup_dir())
            .iter()
            .any(|n| n.ends_with(".removing")),
        "{:?}",
        entries(&ws.backup_dir())
    );
    // The remaining sets still verify by checksum.
    let mut cmd = tusk_with_config(&ws, &yaml);
    cmd.args(["verify", "--checksums-only", ids[2]]);
    run(cmd).expect_code(0);
}

#[test]
fn on_a_terminal_it_asks_and_removes_only_after_yes() {
    let ws = Workspace::new();
    let dir = ws.backup_dir();
    let old = synthetic_set(&dir, "test", "2026-01-01T00:00:00Z");
    let new = synthetic_set(&dir, "test", "2026-01-02T00:00:00Z");
    last_backup(&dir, "ok", "2026-01-02T00:00:00Z");
    let config = ws.path().join("tusk.yaml");
    std::fs::write(&config, destinations_yaml(&ws, "{keep_last: 1}", "")).unwrap();
    let command_line = format!(
        "cd '{}' && '{}' --config '{}' backups prune",
        ws.path().display(),
        assert_cmd::cargo::cargo_bin("tusk").display(),
        config.display()
    );

    let (code, screen) = run_on_terminal(&command_line, b"n\n");
    assert!(
        screen.contains("Remove 1 of 2 entries from local"),
        "{screen}"
    );
    assert!(
        screen.contains(&old),
        "the question names the set:\n{screen}"
    );
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("nothing removed from local"), "{screen}");
    assert_eq!(ws.set_ids(), [old.clone(), new.clone()]);

    let (code, screen) = run_on_terminal(&command_line, b"y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(ws.set_ids(), [new]);
}
