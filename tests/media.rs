//! `tusk media`: the fixture's media tree into a real S3-compatible server
//! (s3s-fs, strict about signatures and checksums; moto where s3s-fs does
//! not report something, such as ACLs).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::s3::*;
use common::*;

#[test]
fn push_stores_every_file_under_its_paperclip_key_with_mastodons_headers() {
    if !s3_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let (_db, root, summary) = media_tree(&ws, "mp_keys");
    let tree = local_tree(&root);
    assert!(tree.len() > 100, "fixture tree too small: {}", tree.len());
    assert!(
        !summary["private"].as_array().unwrap().is_empty(),
        "the fixture has suspended accounts' files"
    );
    let expected = expected_headers(&ws.path().join("manifest.tsv"));
    assert_eq!(expected.len(), tree.len());

    for server in [S3Server::s3s_fs(), S3Server::moto()] {
        let bucket = server.create_bucket("keys");
        // A dry run reports the work and uploads nothing.
        let mut cmd = server.tusk(&ws, &bucket, &root);
        cmd.args(["--json", "media", "push", "--dry-run"]);
        let dry = run(cmd).expect_code(0).json();
        assert_eq!(dry["dry_run"], true);
        assert_eq!(dry["uploaded"].as_u64().unwrap() as usize, tree.len());
        assert!(server.listing(&bucket).is_empty());

        let mut cmd = server.tusk(&ws, &bucket, &root);
        cmd.args(["--json", "media", "push"]);
        let report = run(cmd).expect_code(0).json();
        assert_eq!(report["uploaded"].as_u64().unwrap() as usize, tree.len());
        assert_eq!(
            server.listing(&bucket),
            tree,
            "keys and sizes equal the local tree"
        );

        check_headers(&server, &bucket, &expected);

        // A second run uploads nothing, and says how to switch Mastodon over.
        let mut cmd = server.tusk(&ws, &bucket, &root);
        cmd.args(["media", "push"]);
        let again = run(cmd).expect_code(0).stdout;
        let summary = format!("{} already stored, uploaded 0", tree.len());
        assert!(again.contains(&summary), "{again}");
        assert!(again.contains("S3_ENABLED=true"), "{again}");
        assert!(again.contains(&format!("S3_BUCKET={bucket}")), "{again}");
        assert!(
            again.contains(&format!("S3_ENDPOINT={}", server.endpoint)),
            "{again}"
        );
        assert!(again.contains("CORS"), "{again}");
    }
}

/// Per path: (Content-Type, ACL) from the generator's manifest.
fn expected_headers(manifest: &Path) -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (path, content_type, acl) = (column("path"), column("content_type"), column("acl"));
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (
                fields[path].to_string(),
                (fields[content_type].to_string(), fields[acl].to_string()),
            )
        })
        .collect()
}

/// Every object's Content-Type and Cache-Control (HeadObject), and on moto,
/// which keeps ACLs, whether it is public (GetObjectAcl).
fn check_headers(server: &S3Server, bucket: &str, expected: &BTreeMap<String, (String, String)>) {
    use futures_util::StreamExt;
    let client = server.client();
    let check_acl = server.data_dir.is_none();
    let checks = futures_util::stream::iter(expected.iter())
        .map(|(key, (content_type, acl))| {
            let client = client.clone();
            async move {
                let head = client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(head.content_type(), Some(content_type.as_str()), "{key}");
                assert_eq!(head.cache_control(), Some(tusk_cache_control()), "{key}");
                if check_acl {
                    let grants = client
                        .get_object_acl()
                        .bucket(bucket)
                        .key(key)
                        .send()
                        .await
                        .unwrap();
                    let public = grants.grants().iter().any(|g| {
                        g.grantee()
                            .and_then(|who| who.uri())
                            .is_some_and(|uri| uri.ends_with("AllUsers"))
                    });
                    assert_eq!(public, acl == "public-read", "ACL of {key}");
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    runtime().block_on(checks);
}

fn tusk_cache_control() -> &'static str {
    "public, max-age=315576000, immutable"
}

#[test]
fn verify_catches_missing_and_changed_objects_and_delete_local_keeps_everything_then() {
    if !s3_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let (_db, root, _) = media_tree(&ws, "mv_verify");
    let server = S3Server::s3s_fs();
    let bucket = server.create_bucket("verify");
    let mut cmd = server.tusk(&ws, &bucket, &root);
    cmd.args(["media", "push"]);
    run(cmd).expect_code(0);
    let mut cmd = server.tusk(&ws, &bucket, &root);
    cmd.args(["media", "verify"]);
    run(cmd).expect_code(0);

    let tree = local_tree(&root);
    let mut keys = tree.keys();
    let gone = keys.next().unwrap().clone();
    let changed = keys.next().unwrap().clone();
    runtime()
        .block_on(
            server
                .client()
                .delete_object()
                .bucket(&bucket)
                .key(&gone)
                .send(),
        )
        .unwrap();
    // Same size, other bytes: only a checksum can tell.
    let path = root.join(&changed);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let mut cmd = server.tusk(&ws, &bucket, &root);
    cmd.args(["--json", "media", "verify"]);
    let report = run(cmd).expect_code(3).json();
    assert_eq!(report["missing"], serde_json::json!([gone]));
    assert_eq!(report["checksum_mismatch"], serde_json::json!([changed]));

    // The changed file has the stored size, so push trusts the listing and
    // skips it; the verification before deleting catches it, and nothing
    // local is deleted.
    let before = local_tree(&root);
    let mut cmd = server.tusk(&ws, &bucket, &root);
    cmd.args(["media", "push", "--delete-local"]);
    let out = run(cmd).expect_code(3);
    assert!(
        out.stderr.contains("no local file was deleted"),
        "{}",
        out.stderr
    );
    assert_eq!(local_tree(&root), before);
}

#[test]
fn delete_local_removes_exactly_the_verified_files() {
    if !s3_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let (_db, root, _) = media_tree(&ws, "md_delete");
    // A video big enough to go up in parts (its ETag is then md5-of-parts-N).
    let video = root.join("media_attachments/files/000/000/999/original/0123456789abcdef.mp4");
    std::fs::create_dir_all(video.parent().unwrap()).unwrap();
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&video, &big).unwrap();
    let tree = local_tree(&root);
    let server = S3Server::s3s_fs();
    let bucket = server.create_bucket("delete");
    let mut cmd = server.tusk(&ws, &bucket, &root);
    cmd.args(["--json", "media", "push", "--delete-local"]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(
        report["deleted_local"].as_u64().unwrap() as usize,
        tree.len()
    );
    assert_eq!(server.listing(&bucket), tree);
    assert!(local_tree(&root).is_empty());
}

#[test]
fn a_push_cut_off_by_a_dying_server_resumes_without_uploading_twice() {
    if !s3_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let (_db, root, _) = media_tree(&ws, "mk_kill");
    let tree = local_tree(&root);
    let data = ws.path().join("s3data");
    std::fs::create_dir(&data).unwrap();
    let port = free_port();
    let mut s3 = OwnS3s::start(&data, port);
    let bucket = s3.server().create_bucket("kill");

    let mut cmd = s3.server().tusk(&ws, &bucket, &root);
    cmd.args(["--json", "media", "push", "--concurrency", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Kill the server once some objects have arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_files(&data.join(&bucket)) < tree.len() / 4 {
        assert!(Instant::now() < deadline, "uploads never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    s3.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let s3 = OwnS3s::start(&data, port);
    let arrived = s3.server().listing(&bucket);
    assert!(
        !arrived.is_empty() && arrived.len() < tree.len(),
        "{} of {}",
        arrived.len(),
        tree.len()
    );
    let mut cmd = s3.server().tusk(&ws, &bucket, &root);
    cmd.args(["--json", "media", "push"]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(
        report["already_present"].as_u64().unwrap() as usize,
        arrived.len()
    );
    assert_eq!(
        report["uploaded"].as_u64().unwrap() as usize,
        tree.len() - arrived.len()
    );
    assert_eq!(s3.server().listing(&bucket), tree);
    let mut cmd = s3.server().tusk(&ws, &bucket, &root);
    cmd.args(["media", "verify"]);
    run(cmd).expect_code(0);
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                count_files(&e.path())
            } else {
                usize::from(!name.starts_with('.'))
            }
        })
        .sum()
}

#[test]
fn usage_compares_the_database_with_storage() {
    if !s3_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let (db, root, summary) = media_tree(&ws, "mu_usage");
    let mut cmd = ws.tusk();
    cmd.args(["--json", "media", "usage", "--media-root"])
        .arg(&root)
        .arg("--database-url")
        .arg(db.url());
    let rows = run(cmd).expect_code(0).json();
    let row = |class: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["class"] == class)
            .unwrap_or_else(|| panic!("no {class} row in {rows}"))
            .clone()
    };
    let media = row("media attachments");
    let expected: i64 = db
        .sql("SELECT sum(COALESCE(file_file_size,0) + COALESCE(thumbnail_file_size,0)) FROM media_attachments")
        .parse()
        .unwrap();
    assert_eq!(media["database_bytes"].as_i64().unwrap(), expected);
    let tree = local_tree(&root);
    let stored_media: i64 = tree
        .iter()
        .filter(|(k, _)| {
            k.trim_start_matches("cache/")
                .starts_with("media_attachments/")
        })
        .map(|(_, s)| s)
        .sum();
    assert_eq!(media["stored_bytes"].as_i64().unwrap(), stored_media);
    let orphans = summary["orphans"].as_array().unwrap().len();
    assert!(orphans > 0);
    assert!(
        row("other")["stored_files"].as_u64().unwrap() >= 1,
        "unknown classes are counted apart"
    );
}
