//! `tusk verify`: a good set passes with a real test restore; a damaged
//! one exits 3 with a report, and nothing is left on the server.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use common::*;

fn database_artefact(ws: &Workspace, id: &str) -> std::path::PathBuf {
    ws.backup_dir().join(id).join("database.dump.zst")
}

#[test]
fn a_good_set_verifies_by_restoring_and_records_it() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("vf_src", 1);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();

    let mut cmd = ws.tusk();
    cmd.args(["--json", "verify", &id, "--database-url"])
        .arg(source.url());
    let out = run(cmd).expect_code(0);
    let report = out.json();
    assert_eq!(report["ok"], true);
    assert_eq!(report["tables_compared"], 11, "every table of the fixture");
    assert!(report["restore_seconds"].as_f64().unwrap() > 0.0);
    assert!(report["peak_database_bytes"].as_i64().unwrap() > 1_000_000);
    assert!(!scratch_databases_in(&out.stderr).is_empty());
    assert!(cluster.kept_scratch_of(&out.stderr).is_empty());

    // The verification is recorded next to the manifest and listed.
    let mut cmd = ws.tusk();
    cmd.args(["--json", "backups", "list"]);
    let listed = run(cmd).expect_code(0).json();
    assert_eq!(listed[0]["verification"]["ok"], true);
    assert_eq!(listed[0]["verification"]["checksums_only"], false);
}

#[test]
fn verify_on_another_server_compares_counts() {
    let source = Cluster::main().mastodon_database("vo_src", 1);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let other = Cluster::second();
    let mut cmd = ws.tusk();
    cmd.args(["verify", &id, "--verify-url"]).arg(&other.url);
    let out = run(cmd).expect_code(0);
    assert!(out.stdout.contains("OK"), "{}", out.stdout);
    assert!(!scratch_databases_in(&out.stderr).is_empty());
    assert!(other.kept_scratch_of(&out.stderr).is_empty());
}

#[test]
fn a_flipped_byte_fails_verification_with_exit_3() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("vb_src", 1);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let path = database_artefact(&ws, &id);

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let middle = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(middle)).unwrap();
    std::io::Read::read_exact(&mut file, &mut byte).unwrap();
    file.seek(SeekFrom::Start(middle)).unwrap();
    file.write_all(&[byte[0] ^ 0x01]).unwrap();
    drop(file);

    for extra in [&["--checksums-only"][..], &[][..]] {
        let mut cmd = ws.tusk();
        cmd.arg("verify")
            .arg(&id)
            .args(extra)
            .arg("--database-url")
            .arg(source.url());
        let out = run(cmd).expect_code(3);
        assert!(out.stdout.contains("FAILED"), "{}", out.stdout);
        assert!(out.stdout.contains("checksum"), "{}", out.stdout);
        assert!(out.stdout.contains("database.dump.zst"), "{}", out.stdout);
        // A damaged set is not even test-restored.
        assert!(scratch_databases_in(&out.stderr).is_empty());
    }

    // A damaged set is not restored either.
    let target_name = unique_name("vb_target");
    let mut cmd = ws.tusk();
    cmd.args(["restore", &id, "--target-url"])
        .arg(cluster.db_url(&target_name));
    run(cmd).expect_code(3);
    assert!(!cluster.database_exists(&target_name));

    let mut cmd = ws.tusk();
    cmd.args(["--json", "backups", "list"]);
    let listed = run(cmd).expect_code(0).json();
    assert_eq!(listed[0]["verification"]["ok"], false);
}

#[test]
fn a_truncated_artefact_fails_verification_with_exit_3() {
    let source = Cluster::main().mastodon_database("vt_src", 1);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let path = database_artefact(&ws, &id);
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    let mut cmd = ws.tusk();
    cmd.args(["--json", "verify", &id, "--database-url"])
        .arg(source.url());
    let report = run(cmd).expect_code(3).json();
    assert_eq!(report["ok"], false);
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"size") && kinds.contains(&"checksum"),
        "{kinds:?}"
    );
}

#[test]
fn rows_that_differ_from_the_manifest_are_reported_by_table() {
    let source = Cluster::main().mastodon_database("vr_src", 1);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();

    // Make the manifest claim one more follow than the dump holds. The
    // checksums still match (the manifest is not an artefact), so only the
    // test restore can catch it.
    let manifest_path = ws.backup_dir().join(&id).join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let follows = manifest["database"]["tables"]["follows"].as_i64().unwrap();
    manifest["database"]["tables"]["follows"] = (follows + 1).into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let mut cmd = ws.tusk();
    cmd.args(["verify", &id, "--database-url"])
        .arg(source.url());
    let out = run(cmd).expect_code(3);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("row_count"))
        .unwrap_or_else(|| panic!("no row_count line:\n{}", out.stdout));
    assert!(line.contains("follows"), "{line}");
    assert!(line.contains(&(follows + 1).to_string()) && line.contains(&follows.to_string()));
}
