//! S3 servers for the tests (the shared s3s-fs and moto started by
//! scripts/test.sh, or a private s3s-fs to kill) and the fixture's media tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use super::*;

/// An S3 server the test talks to.
pub struct S3Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// s3s-fs's data directory (buckets are directories in it).
    pub data_dir: Option<PathBuf>,
}

impl S3Server {
    pub fn s3s_fs() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests through scripts/test.sh")
            })
        };
        S3Server {
            endpoint: var("TUSK_TEST_S3_ENDPOINT"),
            access_key: var("TUSK_TEST_S3_ACCESS_KEY"),
            secret_key: var("TUSK_TEST_S3_SECRET_KEY"),
            data_dir: Some(PathBuf::from(var("TUSK_TEST_S3_DIR"))),
        }
    }

    pub fn moto() -> Self {
        S3Server {
            endpoint: std::env::var("TUSK_TEST_MOTO_ENDPOINT").expect(
                "TUSK_TEST_MOTO_ENDPOINT is not set: run the tests through scripts/test.sh",
            ),
            access_key: "testkey".into(),
            secret_key: "testsecret".into(),
            data_dir: None,
        }
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub fn create_bucket(&self, prefix: &str) -> String {
        let bucket = unique_name(prefix).replace('_', "-");
        runtime()
            .block_on(self.client().create_bucket().bucket(&bucket).send())
            .unwrap();
        bucket
    }

    /// `tusk` pointed at this server and `bucket`, media from `root`.
    pub fn tusk(&self, ws: &Workspace, bucket: &str, root: &Path) -> Command {
        let mut cmd = ws.tusk();
        cmd.args([
            "--s3-endpoint",
            &self.endpoint,
            "--s3-bucket",
            bucket,
            "--media-root",
        ])
        .arg(root)
        .env("AWS_ACCESS_KEY_ID", &self.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &self.secret_key);
        cmd
    }

    /// Every key in the bucket with its size.
    pub fn listing(&self, bucket: &str) -> BTreeMap<String, i64> {
        let client = self.client();
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = runtime()
                .block_on(
                    client
                        .list_objects_v2()
                        .bucket(bucket)
                        .set_continuation_token(token.clone())
                        .send(),
                )
                .unwrap();
            for object in page.contents() {
                out.insert(object.key().unwrap().to_string(), object.size().unwrap());
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return out,
            }
        }
    }
}

/// `TUSK_SKIP_S3_TESTS=1` skips these tests explicitly; otherwise missing
/// servers fail them.
pub fn s3_tests_enabled() -> bool {
    if std::env::var("TUSK_SKIP_S3_TESTS").as_deref() == Ok("1") {
        super::announce_skip("TUSK_SKIP_S3_TESTS=1");
        return false;
    }
    true
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The fixture database at scale 1 and its media tree; returns the tree's
/// summary (files, orphans, private paths) from the generator. Its
/// manifest (`manifest.tsv` in the workspace) says, independently of tusk,
/// which Content-Type and ACL each file should get.
pub fn media_tree(ws: &Workspace, prefix: &str) -> (TestDb, PathBuf, serde_json::Value) {
    media_tree_at(ws, prefix, 1)
}

/// [`media_tree`] at another fixture scale.
pub fn media_tree_at(
    ws: &Workspace,
    prefix: &str,
    scale: u32,
) -> (TestDb, PathBuf, serde_json::Value) {
    let db = Cluster::main().mastodon_database(prefix, scale);
    let (root, summary) = media_files(ws, &db);
    (db, root, summary)
}

/// Writes the media tree of `db`'s rows into `<ws>/public/system` and
/// its manifest into `<ws>/manifest.tsv`; returns the root and the summary.
pub fn media_files(ws: &Workspace, db: &TestDb) -> (PathBuf, serde_json::Value) {
    let root = ws.path().join("public/system");
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/media-fixture.py"))
        .args(["--database-url", &db.url(), "--root"])
        .arg(&root)
        .arg("--manifest")
        .arg(ws.path().join("manifest.tsv"))
        .env("PGBIN", pg_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (root, summary)
}

/// Every file under `root`, relative, with its size.
pub fn local_tree(root: &Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                let relative = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(relative, entry.metadata().unwrap().len() as i64);
            }
        }
    }
    out
}

/// A private s3s-fs on its own port and directory, to kill and restart.
pub struct OwnS3s {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl OwnS3s {
    pub fn start(dir: &Path, port: u16) -> Self {
        let bin = std::env::var("TUSK_TEST_S3FS_BIN").expect("TUSK_TEST_S3FS_BIN is not set");
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "killkey", "--secret-key", "killsecret"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnS3s {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn server(&self) -> S3Server {
        S3Server {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            access_key: "killkey".into(),
            secret_key: "killsecret".into(),
            data_dir: Some(self.dir.clone()),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnS3s {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    // Bind to port 0 within the range the tests may use, then release it.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
