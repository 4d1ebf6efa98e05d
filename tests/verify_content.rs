//! Content verification: every table's rows, the sequences' values and the
//! large objects of a restored copy against the digests the backup took
//! from its archive (src/set/content.rs).
//!
//! Two ways in: the archive is edited so that it restores to different
//! content with the same row counts (then `tusk verify` must exit 3 and
//! name what differs), and a restored copy is changed in place and checked
//! with the library function migrate and rehearse call
//! (`tusk::set::content::check`).

mod common;

use std::path::Path;

use common::*;
use sha2::{Digest, Sha256};
use tusk::set::BackupSet;
use tusk::set::content;

/// A Mastodon database at scale 1 with marked values to find in its
/// archive: a note on the first account and one large object.
fn source_with_markers(prefix: &str) -> TestDb {
    let source = Cluster::main().mastodon_database(prefix, 1);
    source.sql(
        "UPDATE accounts SET note = 'tusk-canary-value' WHERE id = (SELECT min(id) FROM accounts)",
    );
    source.sql("SELECT lo_from_bytea(0, 'tusk-large-object-bytes')");
    source
}

/// Replaces `from` by `to` (same length: pg_dump's chunk lengths stay
/// right) in the set's decompressed archive, and writes the archive back
/// with a manifest whose checksums match it, so only a test restore can
/// tell.
fn edit_archive(ws: &Workspace, id: &str, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let dir = ws.backup_dir().join(id);
    let path = dir.join("database.dump.zst");
    let mut archive = zstd::decode_all(&std::fs::read(&path).unwrap()[..]).unwrap();
    let at = archive
        .windows(from.len())
        .position(|window| window == from)
        .unwrap_or_else(|| panic!("{} is not in the archive", String::from_utf8_lossy(from)));
    archive[at..at + to.len()].copy_from_slice(to);
    let compressed = zstd::encode_all(&archive[..], 1).unwrap();
    std::fs::write(&path, &compressed).unwrap();

    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    for artefact in manifest["artefacts"].as_array_mut().unwrap() {
        if artefact["name"] == "database.dump.zst" {
            artefact["bytes"] = compressed.len().into();
            artefact["sha256"] = hex::encode(Sha256::digest(&compressed)).into();
        }
    }
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

fn verify(ws: &Workspace, id: &str, source: &TestDb, extra: &[&str]) -> Run {
    let mut cmd = ws.tusk();
    cmd.args(["--json", "verify", id])
        .args(extra)
        .arg("--database-url")
        .arg(source.url());
    run(cmd)
}

/// (kind, subject) of each problem in a verify report.
fn problems(report: &serde_json::Value) -> Vec<(String, String)> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_good_set_verifies_in_content_and_the_backup_recorded_the_digests() {
    let source = source_with_markers("vc_good");
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();

    let manifest = ws.manifest(&id);
    let digests = &manifest["content"];
    assert_eq!(digests["algorithm"], content::ALGORITHM);
    assert_eq!(digests["settings"]["DateStyle"], "ISO");
    assert!(digests["settings"]["TimeZone"].is_string(), "{digests}");
    // One digest per table the dump holds data of, with the same row count
    // the snapshot counted.
    let counts = manifest["database"]["tables"].as_object().unwrap();
    let tables = digests["tables"].as_object().unwrap();
    assert_eq!(tables.len(), counts.len());
    for (table, rows) in counts {
        assert_eq!(&tables[table]["rows"], rows, "{table}");
    }
    assert_eq!(digests["large_objects"]["rows"], 1);
    assert!(
        digests["sequences"]
            .as_object()
            .unwrap()
            .contains_key("accounts_id_seq")
    );

    let report = verify(&ws, &id, &source, &[]).expect_code(0).json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["content_compared"], true);
    let report = verify(&ws, &id, &source, &["--counts-only"])
        .expect_code(0)
        .json();
    assert_eq!(report["content_compared"], false);
}

#[test]
fn a_changed_value_with_the_same_row_count_is_found_and_named() {
    let source = source_with_markers("vc_value");
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let expected = ws.manifest(&id)["content"]["tables"]["accounts"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    edit_archive(&ws, &id, b"tusk-canary-value", b"tusk-canary-VALUE");

    // The row counts alone cannot see it ...
    let report = verify(&ws, &id, &source, &["--counts-only"])
        .expect_code(0)
        .json();
    assert_eq!(report["ok"], true);
    // ... the content can: one problem, on accounts, with both digests.
    let out = verify(&ws, &id, &source, &[]).expect_code(3);
    let report = out.json();
    assert_eq!(
        problems(&report),
        [("content".to_string(), "accounts".to_string())],
        "{report}"
    );
    let problem = &report["problems"][0];
    assert!(
        problem["expected"].as_str().unwrap().contains(&expected),
        "{problem}"
    );
    assert!(!problem["got"].as_str().unwrap().contains(&expected));
    assert!(cluster_kept_nothing(&out.stderr));

    // The report without --json names it too.
    let mut cmd = ws.tusk();
    cmd.args(["verify", &id, "--database-url"])
        .arg(source.url());
    let out = run(cmd).expect_code(3);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("content"))
        .unwrap_or_else(|| panic!("no content line:\n{}", out.stdout));
    assert!(
        line.contains("accounts") && line.contains(&expected),
        "{line}"
    );
}

fn cluster_kept_nothing(stderr: &str) -> bool {
    !scratch_databases_in(stderr).is_empty() && Cluster::main().kept_scratch_of(stderr).is_empty()
}

#[test]
fn large_object_and_sequence_differences_are_found() {
    let source = source_with_markers("vc_lo");
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let last: i64 = source
        .sql("SELECT last_value FROM accounts_id_seq")
        .parse()
        .unwrap();
    // A sequence set one further (same number of digits) and a large
    // object with one byte changed.
    let setval = |value: i64| format!("setval('public.accounts_id_seq', {value}, true)");
    assert_eq!(last.to_string().len(), (last + 1).to_string().len());
    edit_archive(
        &ws,
        &id,
        setval(last).as_bytes(),
        setval(last + 1).as_bytes(),
    );
    edit_archive(
        &ws,
        &id,
        b"tusk-large-object-bytes",
        b"tusk-large-object-BYTES",
    );

    let report = verify(&ws, &id, &source, &[]).expect_code(3).json();
    let mut found = problems(&report);
    found.sort();
    assert_eq!(
        found,
        [
            ("large_objects".to_string(), "pg_largeobject".to_string()),
            ("sequence".to_string(), "accounts_id_seq".to_string()),
        ],
        "{report}"
    );
    let sequence = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "sequence")
        .unwrap();
    assert_eq!(sequence["expected"], format!("last_value {last}"));
    assert_eq!(sequence["got"], format!("last_value {}", last + 1));
}

#[test]
fn a_set_without_digests_is_verified_from_its_archive_with_a_note() {
    let source = source_with_markers("vc_old");
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    // A set as tusk wrote them before content digests.
    let manifest_path = ws.backup_dir().join(&id).join("manifest.json");
    let mut manifest = ws.manifest(&id);
    manifest.as_object_mut().unwrap().remove("content").unwrap();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let report = verify(&ws, &id, &source, &[]).expect_code(0).json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["content_compared"], true);
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("before tusk recorded content digests")
                && n.contains("computed from its archive")),
        "{notes:?}"
    );
    let mut cmd = ws.tusk();
    cmd.args(["verify", &id, "--database-url"])
        .arg(source.url());
    let out = run(cmd).expect_code(0);
    assert!(
        out.stdout.contains("note: this set was written before"),
        "{}",
        out.stdout
    );
}

/// Restores `id` into a new database of the main cluster and returns it.
fn restore_copy(ws: &Workspace, id: &str, prefix: &str) -> TestDb {
    let target = Cluster::main().empty_database(prefix);
    let mut cmd = ws.tusk();
    cmd.args(["restore", id, "--no-globals", "--target-url"])
        .arg(target.url());
    run(cmd).expect_code(0);
    target
}

/// `content::check` on `db`, as migrate and rehearse call it.
fn check(db: &TestDb, set_dir: &Path) -> Vec<(String, String)> {
    let set = BackupSet::open(set_dir).unwrap();
    let expected = set.manifest.content.expect("digests in the manifest");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut sessions = Vec::new();
        for _ in 0..2 {
            let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            sessions.push(client);
        }
        let mut found: Vec<(String, String)> =
            content::check(&sessions, &expected, &Default::default())
                .await
                .unwrap()
                .into_iter()
                .map(|p| (p.kind, p.subject))
                .collect();
        found.sort();
        found
    })
}

#[test]
fn changes_to_a_restored_copy_are_found_by_the_library_check() {
    let source = source_with_markers("vc_lib");
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let set_dir = ws.backup_dir().join(&id);
    let copy = restore_copy(&ws, &id, "vc_lib_copy");
    assert_eq!(check(&copy, &set_dir), []);

    // One value changed, the row count unchanged.
    copy.sql("UPDATE statuses SET text = text || '!' WHERE id = (SELECT min(id) FROM statuses)");
    assert_eq!(
        check(&copy, &set_dir),
        [("content".to_string(), "statuses".to_string())]
    );

    // A dropped row replaced by a duplicate of another: same row count.
    let copy = restore_copy(&ws, &id, "vc_lib_dup");
    copy.sql(
        "ALTER TABLE follows DROP CONSTRAINT follows_pkey; \
         DO $$ DECLARE i regclass; BEGIN \
           FOR i IN SELECT indexrelid::regclass FROM pg_index \
                    WHERE indrelid = 'follows'::regclass AND indisunique LOOP \
             EXECUTE 'DROP INDEX ' || i; \
           END LOOP; END $$; \
         DELETE FROM follows WHERE id = (SELECT max(id) FROM follows); \
         INSERT INTO follows SELECT * FROM follows WHERE id = (SELECT min(id) FROM follows)",
    );
    let counts = ws.manifest(&id)["database"]["tables"]["follows"].clone();
    assert_eq!(copy.sql("SELECT count(*) FROM follows"), counts.to_string());
    assert_eq!(
        check(&copy, &set_dir),
        [("content".to_string(), "follows".to_string())]
    );

    // A sequence moved on, a large object rewritten.
    let copy = restore_copy(&ws, &id, "vc_lib_more");
    copy.sql("SELECT nextval('accounts_id_seq')");
    copy.sql("SELECT lo_put(oid, 0, '\\x58') FROM pg_largeobject_metadata");
    assert_eq!(
        check(&copy, &set_dir),
        [
            ("large_objects".to_string(), "pg_largeobject".to_string()),
            ("sequence".to_string(), "accounts_id_seq".to_string()),
        ]
    );

    // A table that is gone is named, not an error.
    copy.sql("DROP TABLE follows");
    assert!(check(&copy, &set_dir).contains(&("content".to_string(), "follows".to_string())));
}
