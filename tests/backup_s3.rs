//! Backup sets in a bucket (issue #12): against the shared s3s-fs (strict:
//! signatures, Content-MD5, conditional writes, the 5 MiB part minimum)
//! and moto as the cross-check, plus private servers to kill.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::s3::*;
use common::*;
use serde_json::Value;

/// A bucket destination named `b2` in the shape, pointed at `server`.
fn s3_destination(server: &S3Server, bucket: &str, retention: &str, extra: &str) -> String {
    format!(
        "  - name: b2\n    s3: {{bucket: {bucket}, prefix: mastodon/, endpoint: {}, \
         region: us-east-1, path_style: true{extra}}}\n    retention: {retention}\n",
        server.endpoint
    )
}

/// `tusk --config tusk.yaml --instance test` with the bucket's keys in
/// `TUSK_S3_*` (never on the command line).
fn tusk_with(ws: &Workspace, server: &S3Server, yaml: &str) -> Command {
    let config = ws.path().join("tusk.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut cmd = tusk(ws.path());
    cmd.arg("--config")
        .arg(config)
        .args(["--instance", "test"])
        .env("TUSK_S3_ACCESS_KEY_ID", &server.access_key)
        .env("TUSK_S3_SECRET_ACCESS_KEY", &server.secret_key)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    cmd
}

fn keys(server: &S3Server, bucket: &str) -> Vec<String> {
    server.listing(bucket).into_keys().collect()
}

fn put(server: &S3Server, bucket: &str, key: &str, body: &[u8]) {
    runtime()
        .block_on(
            server
                .client()
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.to_vec().into())
                .send(),
        )
        .unwrap();
}

fn get(server: &S3Server, bucket: &str, key: &str) -> Vec<u8> {
    runtime().block_on(async {
        let object = server
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        object.body.collect().await.unwrap().to_vec()
    })
}

fn open_uploads(server: &S3Server, bucket: &str) -> Vec<String> {
    runtime()
        .block_on(
            server
                .client()
                .list_multipart_uploads()
                .bucket(bucket)
                .send(),
        )
        .unwrap()
        .uploads()
        .iter()
        .map(|upload| upload.key().unwrap_or_default().to_string())
        .collect()
}

fn backup(cmd: &mut Command, db: &TestDb) -> Value {
    cmd.args(["--json", "backup", "--database-url"])
        .arg(db.url());
    let mut taken = Command::new("true");
    std::mem::swap(cmd, &mut taken);
    run(taken).expect_code(0).json()
}

/// Backup to the bucket only, list, verify by checksum and by a test
/// restore, restore row for row: all streamed from the bucket.
fn round_trip(server: S3Server, prefix: &str) {
    let db = Cluster::main().mastodon_database(prefix, 1);
    let before = db.fingerprint();
    let ws = Workspace::new();
    let bucket = server.create_bucket(prefix);
    let yaml = format!(
        "destinations:\n{}",
        s3_destination(&server, &bucket, "{keep_last: 2}", "")
    );

    let report = backup(&mut tusk_with(&ws, &server, &yaml), &db);
    let id = report["id"].as_str().unwrap().to_string();
    assert_eq!(report["destinations"][0]["destination"], "b2");
    // No local copy: nothing was written to any directory.
    assert!(!ws.backup_dir().join(&id).exists());
    assert!(!Path::new("/var/backups/tusk").join(&id).exists());
    let stored = server.listing(&bucket);
    let set_prefix = format!("mastodon/{id}/");
    let in_set: Vec<&String> = stored
        .keys()
        .filter(|key| key.starts_with(&set_prefix))
        .collect();
    assert_eq!(
        in_set
            .iter()
            .map(|k| k.strip_prefix(&set_prefix).unwrap())
            .collect::<Vec<_>>(),
        ["database.dump.zst", "globals.sql.zst", "manifest.json"],
        "{stored:?}"
    );
    for artefact in report["artefacts"].as_array().unwrap() {
        let key = format!("{set_prefix}{}", artefact["name"].as_str().unwrap());
        assert_eq!(stored[&key], artefact["bytes"].as_i64().unwrap());
        let body = get(&server, &bucket, &key);
        assert_eq!(
            sha256_hex(&body),
            artefact["sha256"].as_str().unwrap(),
            "{key}"
        );
    }

    let mut list = tusk_with(&ws, &server, &yaml);
    list.args(["--json", "backups", "list"]);
    let listed = run(list).expect_code(0).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["destination"], "b2");

    let metrics = ws.path().join("tusk.prom");
    let mut verify = tusk_with(&ws, &server, &yaml);
    verify
        .arg("--metrics-file")
        .arg(&metrics)
        .args(["--json", "verify", "latest", "--verify-url"])
        .arg(Cluster::second().db_url("postgres"));
    let verified = run(verify).expect_code(0).json();
    assert_eq!(verified["ok"], true, "{verified:#}");
    // The metrics read the bucket: one set, verified, with its size.
    let text = std::fs::read_to_string(&metrics).unwrap();
    let value = |family: &str| -> f64 {
        let prefix = format!("{family}{{destination=\"b2\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("tusk_backup_sets"), 1.0);
    let total: u64 = report["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(value("tusk_backup_last_bytes"), total as f64);
    assert!(value("tusk_verify_last_success_timestamp_seconds") > 0.0);
    assert!(verified["tables_compared"].as_u64().unwrap() > 5);
    // The outcome is recorded beside the manifest, in the bucket.
    let recorded: Value = serde_json::from_slice(&get(
        &server,
        &bucket,
        &format!("{set_prefix}verification.json"),
    ))
    .unwrap();
    assert_eq!(recorded["ok"], true);

    let fresh = Cluster::second();
    let target = unique_name(&format!("{prefix}_restored"));
    let mut restore = tusk_with(&ws, &server, &yaml);
    restore
        .args(["--json", "restore", &id, "--jobs", "2", "--target-url"])
        .arg(fresh.db_url(&target));
    run(restore).expect_code(0);
    let restored = TestDb {
        cluster: fresh,
        name: target,
    };
    assert_eq!(restored.fingerprint(), before);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_set_round_trips_through_s3s_fs_without_a_local_copy() {
    if !s3_tests_enabled() {
        return;
    }
    round_trip(S3Server::s3s_fs(), "s3rt_fs");
}

#[test]
fn a_set_round_trips_through_moto() {
    if !s3_tests_enabled() {
        return;
    }
    round_trip(S3Server::moto(), "s3rt_moto");
}

#[test]
fn one_dump_feeds_a_directory_and_a_bucket_and_copy_checks_every_byte() {
    if !s3_tests_enabled() {
        return;
    }
    let server = S3Server::s3s_fs();
    let db = Cluster::main().mastodon_database("s3both", 1);
    let ws = Workspace::new();
    let bucket = server.create_bucket("s3both");
    let spare = server.create_bucket("s3spare");
    let yaml = format!(
        "destinations:\n  - name: local\n    dir: {}\n    retention: {{keep_last: 2}}\n{}\
         - name: spare\n    s3: {{bucket: {spare}, endpoint: {}, path_style: true}}\n",
        ws.backup_dir().display(),
        s3_destination(&server, &bucket, "{keep_last: 2}", ""),
        server.endpoint
    )
    .replace("\n- name: spare", "\n  - name: spare");

    // Backup to local and b2 from one dump; the spare bucket is filled by copy.
    let config = ws.path().join("tusk.yaml");
    let two = yaml.split("  - name: spare").next().unwrap().to_string();
    std::fs::write(&config, &two).unwrap();
    let mut cmd = tusk(ws.path());
    cmd.arg("--config")
        .arg(&config)
        .args(["--instance", "test", "--json", "backup", "--database-url"])
        .arg(db.url())
        .env("TUSK_S3_ACCESS_KEY_ID", &server.access_key)
        .env("TUSK_S3_SECRET_ACCESS_KEY", &server.secret_key);
    let report = run(cmd).expect_code(0).json();
    let id = report["id"].as_str().unwrap().to_string();
    let written: Vec<&str> = report["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["destination"].as_str().unwrap())
        .collect();
    assert_eq!(written, ["b2", "local"]);
    for artefact in report["artefacts"].as_array().unwrap() {
        let name = artefact["name"].as_str().unwrap();
        let local = std::fs::read(ws.backup_dir().join(&id).join(name)).unwrap();
        let remote = get(&server, &bucket, &format!("mastodon/{id}/{name}"));
        assert_eq!(local, remote, "{name}: the same bytes in both");
        assert_eq!(sha256_hex(&local), artefact["sha256"].as_str().unwrap());
    }

    // Copy from the bucket into the spare bucket; it is listed there.
    let mut copy = tusk_with(&ws, &server, &yaml);
    copy.args([
        "--json", "backups", "copy", &id, "--from", "b2", "--to", "spare",
    ]);
    let copied = run(copy).expect_code(0).json();
    assert_eq!(copied["to"], "spare");
    let mut list = tusk_with(&ws, &server, &yaml);
    list.args(["--json", "backups", "list", "--destination", "spare"]);
    let listed = run(list).expect_code(0).json();
    assert_eq!(listed[0]["id"], id.as_str(), "{listed:#}");
    let mut verify = tusk_with(&ws, &server, &yaml);
    verify.args(["verify", "--checksums-only", "--destination", "spare", &id]);
    run(verify).expect_code(0);
    // A second copy is refused: the set is there.
    let mut again = tusk_with(&ws, &server, &yaml);
    again.args(["backups", "copy", &id, "--to", "spare"]);
    run(again).expect_code(2);

    // A damaged source is not copied: the checksums are compared.
    let dump = ws.backup_dir().join(&id).join("database.dump.zst");
    let mut bytes = std::fs::read(&dump).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&dump, bytes).unwrap();
    let third = server.create_bucket("s3third");
    let with_third = format!(
        "{yaml}  - name: third\n    s3: {{bucket: {third}, endpoint: {}, path_style: true}}\n",
        server.endpoint
    );
    let mut damaged = tusk_with(&ws, &server, &with_third);
    damaged.args(["backups", "copy", &id, "--from", "local", "--to", "third"]);
    let refused = run(damaged);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("damaged"), "{}", refused.stderr);
    assert!(
        !keys(&server, &third)
            .iter()
            .any(|key| key.ends_with("manifest.json")),
        "nothing listed as a set in {third}"
    );
}

/// A private moto (it lists multipart uploads, which s3s-fs does not) with
/// S3's part minimum lowered, so a test-sized set spans many parts.
struct OwnMoto {
    child: std::process::Child,
    server: S3Server,
}

impl OwnMoto {
    fn start(min_part: u64) -> Self {
        let command = std::env::var("TUSK_TEST_MOTO_START_CMD").expect("TUSK_TEST_MOTO_START_CMD");
        let program = command.split(' ').next().unwrap().replace('\\', "");
        let port = free_port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("S3_UPLOAD_PART_MIN_SIZE", min_part.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        OwnMoto {
            child,
            server: S3Server {
                endpoint: format!("http://127.0.0.1:{port}"),
                access_key: "testkey".into(),
                secret_key: "testsecret".into(),
                data_dir: None,
            },
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_thousand_part_limit_grows_the_parts_of_a_larger_set() {
    if !s3_tests_enabled() {
        return;
    }
    // Parts of 16 KiB at first; 1,000 of them hold 16 MB, and the dump
    // (uncompressed) is larger, so the part size must grow.
    const FIRST: u64 = 16 << 10;
    let moto = OwnMoto::start(FIRST);
    let server = &moto.server;
    let db = Cluster::main().mastodon_database("s3parts", 20);
    let ws = Workspace::new();
    let bucket = server.create_bucket("s3parts");
    let yaml = format!(
        "compression: none\ndestinations:\n{}",
        s3_destination(server, &bucket, "{keep_last: 2}", ", max_parts: 1000")
    );
    let mut cmd = tusk_with(&ws, server, &yaml);
    cmd.env("TUSK_S3_FIRST_PART_BYTES", FIRST.to_string());
    let report = backup(&mut cmd, &db);
    let id = report["id"].as_str().unwrap();
    let database = report["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "database")
        .unwrap();
    let bytes = database["bytes"].as_u64().unwrap();
    assert!(bytes > 1000 * FIRST, "the set is only {bytes} bytes");
    let head = runtime()
        .block_on(
            server
                .client()
                .head_object()
                .bucket(&bucket)
                .key(format!("mastodon/{id}/database.dump"))
                .send(),
        )
        .unwrap();
    let etag = head.e_tag().unwrap().trim_matches('"').to_string();
    let parts: u64 = etag.rsplit_once('-').unwrap().1.parse().unwrap();
    assert!(parts <= 1000, "{parts} parts");
    assert!(
        parts > 50,
        "{parts} parts: more than one size tier was used"
    );
    let mut verify = tusk_with(&ws, server, &yaml);
    verify.args(["verify", "--checksums-only", id]);
    run(verify).expect_code(0);
}

/// A TCP proxy in front of a server: taking it down is, for tusk, the
/// store going away mid-request (connections reset, new ones refused),
/// while the server keeps its state for the checks afterwards.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    /// Header names seen in requests, of those [`WATCHED`] lists.
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>,
}

/// Request headers the proxy looks for: the SDK's checksum headers (which
/// Backblaze B2 rejected in 2025) and Content-MD5 (which tusk always sends).
const WATCHED: [&str; 5] = [
    "x-amz-checksum-",
    "x-amz-sdk-checksum-algorithm",
    "x-amz-trailer",
    "aws-chunked",
    "content-md5:",
];

/// Copies requests from `from` to `to`, noting the watched header names.
fn copy_watching(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>,
) {
    use std::io::{Read, Write};
    let mut buffer = vec![0u8; 64 << 10];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut tail);
        window.extend(buffer[..n].iter().map(u8::to_ascii_lowercase));
        let text = String::from_utf8_lossy(&window);
        for name in WATCHED {
            if text.contains(name) {
                seen.lock().unwrap().insert(name);
            }
        }
        tail = window[window.len().saturating_sub(64)..].to_vec();
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Proxy {
    fn start(target: u16) -> Self {
        let port = free_port();
        let proxy = Proxy {
            port,
            up: Default::default(),
            connections: Default::default(),
            seen: Default::default(),
        };
        proxy.listen(target);
        proxy
    }

    fn listen(&self, target: u16) {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let up = self.up.clone();
        let connections = self.connections.clone();
        let seen = self.seen.clone();
        std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut list = connections.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                let (request_from, request_to) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let seen = seen.clone();
                std::thread::spawn(move || copy_watching(request_from, request_to, seen));
                let (mut from, mut to) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
    }

    /// Resets every connection and refuses new ones.
    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_store_gone_mid_upload_fails_the_backup_and_cleanup_aborts_its_upload() {
    if !s3_tests_enabled() {
        return;
    }
    // Small parts (the private moto takes them), so the upload is still
    // going when the store goes away.
    const FIRST: u64 = 64 << 10;
    let moto = OwnMoto::start(FIRST);
    let moto_port: u16 = moto
        .server
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = Proxy::start(moto_port);
    let through_proxy = S3Server {
        endpoint: format!("http://127.0.0.1:{}", proxy.port),
        access_key: "testkey".into(),
        secret_key: "testsecret".into(),
        data_dir: None,
    };
    let direct = &moto.server;
    let db = Cluster::main().mastodon_database("s3gone", 20);
    let ws = Workspace::new();
    let bucket = direct.create_bucket("s3gone");
    // Outside the destination's prefix: cleanup must leave it.
    let outside = runtime()
        .block_on(
            direct
                .client()
                .create_multipart_upload()
                .bucket(&bucket)
                .key("elsewhere/big.bin")
                .send(),
        )
        .unwrap();
    let yaml = format!(
        "compression: none\ndestinations:\n{}",
        s3_destination(&through_proxy, &bucket, "{keep_last: 1}", "")
    );
    let mut cmd = tusk_with(&ws, &through_proxy, &yaml);
    cmd.env("TUSK_S3_FIRST_PART_BYTES", FIRST.to_string())
        .args(["backup", "--database-url"])
        .arg(db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !open_uploads(direct, &bucket)
        .iter()
        .any(|key| key.ends_with("database.dump"))
    {
        assert!(Instant::now() < deadline, "no upload of the dump started");
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.down();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The upload could not be aborted while the store was away.
    assert!(
        open_uploads(direct, &bucket)
            .iter()
            .any(|key| key.starts_with("mastodon/")),
        "{stderr}"
    );

    proxy.listen(moto_port);
    let mut list = tusk_with(&ws, &through_proxy, &yaml);
    list.args(["--json", "backups", "list"]);
    assert_eq!(run(list).expect_code(0).json(), serde_json::json!([]));
    assert!(
        !keys(direct, &bucket)
            .iter()
            .any(|key| key.ends_with("manifest.json")),
        "no manifest: nothing looks complete"
    );
    let mut cleanup = tusk_with(&ws, &through_proxy, &yaml);
    cleanup.args(["--json", "backups", "cleanup"]);
    let cleaned = run(cleanup).expect_code(0).json();
    assert!(cleaned[0]["aborted"].as_u64().unwrap() >= 1, "{cleaned:#}");
    assert_eq!(open_uploads(direct, &bucket), ["elsewhere/big.bin"]);
    let _ = outside;

    // The run never recorded its end on the store: prune holds.
    let before = keys(direct, &bucket);
    let mut prune = tusk_with(&ws, &through_proxy, &yaml);
    prune.args(["--json", "--yes", "backups", "prune"]);
    let pruned = run(prune).expect_code(0).json();
    assert_eq!(pruned["destinations"][0]["removed"], 0, "{pruned:#}");
    assert_eq!(keys(direct, &bucket), before);
}

#[test]
fn uploads_to_a_store_with_an_endpoint_send_no_sdk_checksum_headers() {
    if !s3_tests_enabled() {
        return;
    }
    // B2 refused x-amz-checksum-*, x-amz-sdk-checksum-algorithm and
    // aws-chunked trailers in 2025; s3s-fs accepts both, so a proxy in
    // front of it records what was sent. The set is large enough for a
    // multipart upload (UploadPart requests) besides the plain PUTs.
    let server = S3Server::s3s_fs();
    let port: u16 = server.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = Proxy::start(port);
    let through = S3Server {
        endpoint: format!("http://127.0.0.1:{}", proxy.port),
        access_key: server.access_key.clone(),
        secret_key: server.secret_key.clone(),
        data_dir: None,
    };
    let db = Cluster::main().mastodon_database("s3b2safe", 20);
    let ws = Workspace::new();
    let bucket = server.create_bucket("s3b2safe");
    let yaml = format!(
        "compression: none\ndestinations:\n{}",
        s3_destination(&through, &bucket, "{keep_last: 2}", "")
    );
    let report = backup(&mut tusk_with(&ws, &through, &yaml), &db);
    let database = report["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "database")
        .unwrap();
    assert!(database["bytes"].as_u64().unwrap() > 8 << 20, "{database}");
    let mut verify = tusk_with(&ws, &through, &yaml);
    verify.args(["verify", "--checksums-only", "latest"]);
    run(verify).expect_code(0);
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["content-md5:"],
        "only Content-MD5 guards the bodies"
    );
}

#[test]
fn prune_after_a_failed_backup_deletes_nothing_in_the_bucket() {
    if !s3_tests_enabled() {
        return;
    }
    let server = S3Server::s3s_fs();
    let db = Cluster::main().mastodon_database("s3held", 1);
    let ws = Workspace::new();
    let bucket = server.create_bucket("s3held");
    let yaml = format!(
        "destinations:\n{}",
        s3_destination(&server, &bucket, "{keep_last: 1}", "")
    );
    for _ in 0..2 {
        backup(&mut tusk_with(&ws, &server, &yaml), &db);
        std::thread::sleep(Duration::from_millis(1100));
    }
    // The database does not exist: the backup fails after taking the lock.
    let mut failing = tusk_with(&ws, &server, &yaml);
    failing
        .args(["backup", "--database-url"])
        .arg(db.cluster.db_url(&unique_name("s3held_missing")));
    run(failing).expect_code(1);
    let before = keys(&server, &bucket);
    assert!(before.contains(&"mastodon/.tusk-last-backup-failure.json".to_string()));

    let mut prune = tusk_with(&ws, &server, &yaml);
    prune.args(["--json", "--yes", "backups", "prune"]);
    let pruned = run(prune).expect_code(0).json();
    let report = &pruned["destinations"][0];
    assert!(
        report["held"].as_str().unwrap().contains("failed"),
        "{report:#}"
    );
    assert_eq!(report["removed"], 0);
    assert_eq!(keys(&server, &bucket), before);
}

#[test]
fn prune_keeps_foreign_objects_and_removes_old_incomplete_attempts() {
    if !s3_tests_enabled() {
        return;
    }
    let server = S3Server::s3s_fs();
    let db = Cluster::main().mastodon_database("s3prune", 1);
    let ws = Workspace::new();
    let bucket = server.create_bucket("s3prune");
    let yaml = format!(
        "destinations:\n{}",
        s3_destination(&server, &bucket, "{keep_last: 1}", "")
    );
    let foreign = [
        "mastodon/notes.txt",
        "mastodon/other-20200101T000000Z/file.bin",
        "mastodon/test-20200102T000000Z/not-tusk.txt",
        "elsewhere/test-20200103T000000Z/manifest.json",
    ];
    for key in foreign {
        put(&server, &bucket, key, b"not tusk's");
    }
    // An attempt a killed run left two days ago: its marker, no manifest.
    let stale = "mastodon/test-20200104T000000Z/";
    put(
        &server,
        &bucket,
        &format!("{stale}.tusk-attempt.json"),
        b"{}",
    );
    put(
        &server,
        &bucket,
        &format!("{stale}database.dump.zst"),
        b"half",
    );

    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut cmd = tusk_with(&ws, &server, &yaml);
        ids.push(backup(&mut cmd, &db)["id"].as_str().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(1100));
    }
    let mut dry = tusk_with(&ws, &server, &yaml);
    dry.args(["--json", "backups", "prune", "--dry-run"]);
    let planned = run(dry).expect_code(0).json();
    let entries = planned["destinations"][0]["sets"]
        .as_array()
        .unwrap()
        .clone();
    let fate = |id: &str| {
        entries
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| (e["keep"].as_bool().unwrap(), e["incomplete"] == true))
    };
    assert_eq!(fate(&ids[1]), Some((true, false)));
    assert_eq!(fate(&ids[0]), Some((false, false)));
    assert_eq!(fate("test-20200104T000000Z"), Some((false, true)));
    assert_eq!(
        fate("test-20200102T000000Z"),
        None,
        "not tusk's: not listed"
    );
    assert_eq!(entries.len(), 3, "{planned:#}");

    let mut prune = tusk_with(&ws, &server, &yaml);
    prune.args(["--json", "--yes", "backups", "prune"]);
    let pruned = run(prune).expect_code(0).json();
    assert_eq!(pruned["destinations"][0]["removed"], 2, "{pruned:#}");
    let left = keys(&server, &bucket);
    for key in foreign {
        assert!(left.contains(&key.to_string()), "{key} survives: {left:?}");
    }
    assert!(!left.iter().any(|k| k.starts_with(stale)), "{left:?}");
    assert!(
        !left
            .iter()
            .any(|k| k.starts_with(&format!("mastodon/{}/", ids[0]))),
        "{left:?}"
    );
    assert!(left.contains(&format!("mastodon/{}/manifest.json", ids[1])));
}

#[test]
fn a_held_bucket_lock_stops_backup_and_prune_with_exit_4() {
    if !s3_tests_enabled() {
        return;
    }
    let server = S3Server::s3s_fs();
    let db = Cluster::main().mastodon_database("s3lock", 1);
    let ws = Workspace::new();
    let bucket = server.create_bucket("s3lock");
    let yaml = format!(
        "destinations:\n{}",
        s3_destination(&server, &bucket, "{keep_last: 1}", "")
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    // A live holder: this test process.
    let holder = serde_json::json!({
        "command": "backup",
        "host": host,
        "pid": std::process::id(),
        "started_at": chrono::Utc::now().to_rfc3339(),
    });
    let lock = "mastodon/.tusk.lock";
    put(
        &server,
        &bucket,
        lock,
        &serde_json::to_vec(&holder).unwrap(),
    );

    let started = Instant::now();
    let mut cmd = tusk_with(&ws, &server, &yaml);
    cmd.args(["backup", "--database-url"]).arg(db.url());
    let locked = run(cmd).expect_code(4);
    assert!(locked.stderr.contains(".tusk.lock"), "{}", locked.stderr);
    assert!(
        locked
            .stderr
            .contains(&format!("pid {}", std::process::id())),
        "{}",
        locked.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let mut prune = tusk_with(&ws, &server, &yaml);
    prune.args(["--yes", "backups", "prune"]);
    run(prune).expect_code(4);
    let mut wait = tusk_with(&ws, &server, &yaml);
    wait.args(["--yes", "backups", "prune", "--wait", "2"]);
    let waited = Instant::now();
    run(wait).expect_code(4);
    assert!(waited.elapsed() >= Duration::from_secs(2));
    assert_eq!(keys(&server, &bucket), [lock], "nothing was written");

    // A dead holder on this host is taken over, with a warning, and the
    // lock object is gone after the run.
    let mut dead = holder.clone();
    dead["pid"] = serde_json::json!(u32::MAX - 1);
    put(&server, &bucket, lock, &serde_json::to_vec(&dead).unwrap());
    let mut cmd = tusk_with(&ws, &server, &yaml);
    cmd.args(["backup", "--database-url"]).arg(db.url());
    let taken = run(cmd).expect_code(0);
    assert!(
        taken.stderr.contains("taking over the stale lock"),
        "{}",
        taken.stderr
    );
    assert!(!keys(&server, &bucket).contains(&lock.to_string()));
}
