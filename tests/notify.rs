//! Alerts, metrics and the backup directory's lock, with the built binary,
//! real clusters and a small HTTP server of the test's own that records
//! every request tusk sends it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Run, TestDb, Workspace, run};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    content_type: String,
    body: String,
}

/// An HTTP server on a free local port answering 200 to everything.
struct Recorder {
    base: String,
    requests: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    if let Some(request) = read_request(&stream) {
                        log.lock().unwrap().push(request);
                    }
                    let mut stream = stream;
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK",
                    );
                });
            }
        });
        Recorder { base, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// The method and path of each request, in order.
    fn paths(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn one(&self, path: &str) -> Received {
        let found: Vec<Received> = self
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect();
        assert_eq!(found.len(), 1, "requests to {path}: {:?}", self.paths());
        found.into_iter().next().unwrap()
    }
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0;
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        path,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A URL nothing listens on.
fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hook")
}

/// Writes `yaml` as the workspace's config file and returns its path.
fn config(ws: &Workspace, yaml: &str) -> std::path::PathBuf {
    let path = ws.path().join("tusk.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn backup_cmd(ws: &Workspace, url: &str) -> Command {
    let mut cmd = ws.tusk();
    cmd.args(["--json", "backup", "--database-url", url]);
    cmd
}

fn wrong_password_url(db: &TestDb) -> String {
    db.cluster.url_as("postgres", "not-the-password", &db.name)
}

#[test]
fn a_failed_backup_posts_its_error_and_pings_start_then_fail() {
    let source = Cluster::main().mastodon_database("notify_fail", 1);
    let ws = Workspace::new();
    let server = Recorder::start();
    let config = config(
        &ws,
        &format!(
            "notify:\n  url: {}\n  ping_url: {}\n",
            server.url("/hook"),
            server.url("/ping/check-1/")
        ),
    );
    let mut cmd = backup_cmd(&ws, &wrong_password_url(&source));
    cmd.arg("--config").arg(&config);
    let out = run(cmd).expect_code(1);

    // The start ping first; the POST and the fail ping go out together.
    let mut paths = server.paths();
    assert_eq!(
        paths.first().map(String::as_str),
        Some("POST /ping/check-1/start"),
        "{}",
        out.stderr
    );
    paths.sort();
    assert_eq!(
        paths,
        [
            "POST /hook",
            "POST /ping/check-1/fail",
            "POST /ping/check-1/start"
        ],
        "{}",
        out.stderr
    );

    let hook = server.one("/hook");
    assert_eq!(hook.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(body["event"], "failure");
    assert_eq!(body["command"], "backup");
    assert_eq!(body["instance"], "test");
    assert_eq!(body["exit_code"], 1);
    assert_eq!(body["set_id"], serde_json::Value::Null);
    assert_eq!(
        body["host"],
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
    );
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!hook.body.contains("not-the-password"), "{}", hook.body);
    for key in ["started_at", "finished_at", "duration_seconds", "durations"] {
        assert!(!body[key].is_null(), "{key} in {body}");
    }

    let fail = server.one("/ping/check-1/fail");
    assert!(
        fail.body.contains("password authentication failed"),
        "{}",
        fail.body
    );
    assert!(ws.set_ids().is_empty());
}

#[test]
fn a_good_backup_notifies_on_success_only_when_asked() {
    let source = Cluster::main().mastodon_database("notify_ok", 1);
    let ws = Workspace::new();
    let server = Recorder::start();
    let quiet = config(
        &ws,
        &format!(
            "notify:\n  url: {}\n  ping_url: {}\n",
            server.url("/hook"),
            server.url("/ping/check-2")
        ),
    );
    let mut cmd = backup_cmd(&ws, &source.url());
    cmd.arg("--config").arg(&quiet);
    run(cmd).expect_code(0);
    assert_eq!(
        server.paths(),
        ["POST /ping/check-2/start", "POST /ping/check-2"],
        "no POST to the hook on success without on_success"
    );

    let loud = ws.path().join("loud.yaml");
    std::fs::write(
        &loud,
        format!(
            "notify:\n  url: {}\n  on_success: true\n",
            server.url("/hook")
        ),
    )
    .unwrap();
    let mut cmd = backup_cmd(&ws, &source.url());
    cmd.arg("--config").arg(&loud);
    let report = run(cmd).expect_code(0).json();
    let hook = server.one("/hook");
    let body: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(body["event"], "success");
    assert_eq!(body["exit_code"], 0);
    assert_eq!(body["error"], serde_json::Value::Null);
    assert_eq!(body["set_id"], report["id"]);
    assert_eq!(body["bytes"], report["bytes"]);
    assert!(body["durations"]["database"].as_f64().unwrap() > 0.0);
    assert!(body["duration_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_failed_verify_pings_fail_with_the_last_log_lines() {
    let source = Cluster::main().mastodon_database("notify_verify", 1);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let server = Recorder::start();
    let mut cmd = ws.tusk();
    cmd.args(["verify", "latest", "--ping-url", &server.url("/ping/v")])
        .arg("--verify-url")
        .arg(wrong_password_url(&source));
    let out = run(cmd).expect_code(1);
    assert_eq!(
        server.paths(),
        ["POST /ping/v/start", "POST /ping/v/fail"],
        "{}",
        out.stderr
    );
    let fail = server.one("/ping/v/fail");
    assert!(fail.content_type.starts_with("text/plain"));
    // A line logged before the failure, then the error.
    assert!(
        fail.body
            .contains(&format!("checksums of {id} match its manifest")),
        "{}",
        fail.body
    );
    let last = fail.body.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("password authentication failed"),
        "{}",
        fail.body
    );
}

#[test]
fn an_unreachable_notify_url_leaves_the_exit_code_alone() {
    let source = Cluster::main().mastodon_database("notify_down", 1);
    let ws = Workspace::new();
    let config = config(
        &ws,
        &format!(
            "notify:\n  url: {}\n  on_success: true\n  ping_url: {}\n",
            unreachable_url(),
            unreachable_url()
        ),
    );
    let mut cmd = backup_cmd(&ws, &source.url());
    cmd.arg("--config").arg(&config);
    let out = run(cmd).expect_code(0);
    assert!(out.stderr.contains("could not notify"), "{}", out.stderr);
    assert_eq!(ws.set_ids().len(), 1);

    let mut cmd = backup_cmd(&ws, &wrong_password_url(&source));
    cmd.arg("--config").arg(&config);
    let out = run(cmd).expect_code(1);
    assert!(out.stderr.contains("could not notify"), "{}", out.stderr);
}

/// The metrics file read with a real text-format parser: metric name to value.
fn read_metrics(path: &Path) -> std::collections::BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text.lines().map(|line| Ok(line.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let sample_lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "every line parses:\n{text}"
    );
    let mut values = std::collections::BTreeMap::new();
    for sample in scrape.samples {
        assert_eq!(sample.labels.get("destination"), Some("local"), "{text}");
        assert!(
            scrape.docs.contains_key(&sample.metric),
            "HELP for {}",
            sample.metric
        );
        let value = match sample.value {
            prometheus_parse::Value::Gauge(value) => value,
            other => panic!("{} is not a gauge: {other:?}", sample.metric),
        };
        values.insert(sample.metric, value);
    }
    values
}

fn unix_seconds(rfc3339: &serde_json::Value) -> f64 {
    let at = chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    at.timestamp_millis() as f64 / 1000.0
}

#[test]
fn the_metrics_file_parses_and_follows_the_sets_also_after_a_failure() {
    let source = Cluster::main().mastodon_database("metrics", 1);
    let ws = Workspace::new();
    let metrics = ws.path().join("textfile").join("tusk.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();

    ws.backup(&source);
    let mut cmd = backup_cmd(&ws, &source.url());
    cmd.arg("--metrics-file").arg(&metrics);
    let report = run(cmd).expect_code(0).json();
    let manifest = ws.manifest(report["id"].as_str().unwrap());
    let values = read_metrics(&metrics);
    assert_eq!(values["tusk_backup_sets"], 2.0);
    assert_eq!(
        values["tusk_backup_last_bytes"],
        report["bytes"].as_f64().unwrap()
    );
    let finished = unix_seconds(&manifest["finished_at"]);
    assert!(
        (values["tusk_backup_last_success_timestamp_seconds"] - finished).abs() < 1.0,
        "{values:?} vs {finished}"
    );
    let duration = finished - unix_seconds(&manifest["started_at"]);
    assert!((values["tusk_backup_last_duration_seconds"] - duration).abs() < 1.0);
    assert_eq!(values["tusk_backup_last_failure_timestamp_seconds"], 0.0);
    assert_eq!(values["tusk_verify_last_success_timestamp_seconds"], 0.0);

    // A failed run writes the same truth about the sets, and its failure.
    let before = chrono::Utc::now().timestamp() as f64;
    let mut cmd = backup_cmd(&ws, &wrong_password_url(&source));
    cmd.arg("--metrics-file").arg(&metrics);
    run(cmd).expect_code(1);
    let after_failure = read_metrics(&metrics);
    assert_eq!(after_failure["tusk_backup_sets"], 2.0);
    assert_eq!(
        after_failure["tusk_backup_last_success_timestamp_seconds"],
        values["tusk_backup_last_success_timestamp_seconds"]
    );
    assert!(after_failure["tusk_backup_last_failure_timestamp_seconds"] >= before - 1.0);

    let mut cmd = ws.tusk();
    cmd.args(["verify", "latest", "--checksums-only", "--metrics-file"])
        .arg(&metrics);
    run(cmd).expect_code(0);
    let verification: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            ws.backup_dir()
                .join(report["id"].as_str().unwrap())
                .join("verification.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let after_verify = read_metrics(&metrics);
    assert!(
        (after_verify["tusk_verify_last_success_timestamp_seconds"]
            - unix_seconds(&verification["verified_at"]))
        .abs()
            < 1.0
    );
    let leftovers: Vec<_> = std::fs::read_dir(metrics.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "only tusk.prom: {leftovers:?}");
}

#[test]
fn an_unwritable_metrics_file_leaves_the_exit_code_alone() {
    let source = Cluster::main().mastodon_database("metrics_bad", 1);
    let ws = Workspace::new();
    let mut cmd = backup_cmd(&ws, &source.url());
    cmd.arg("--metrics-file")
        .arg(ws.path().join("no-such-dir").join("tusk.prom"));
    let out = run(cmd).expect_code(0);
    assert!(
        out.stderr.contains("could not write the metrics file"),
        "{}",
        out.stderr
    );
}

/// A session holding an exclusive lock on `accounts`, so that a backup
/// (pg_dump and the row counts) waits on it while holding tusk's lock.
struct TableLock {
    psql: Child,
}

impl TableLock {
    fn hold(db: &TestDb) -> Self {
        let mut psql = Command::new(common::pg_bin().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(db.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        psql.stdin
            .as_mut()
            .unwrap()
            .write_all(b"BEGIN;\nLOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;\n")
            .unwrap();
        wait_for("the table lock", || {
            db.sql(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = 'accounts' AND l.mode = 'AccessExclusiveLock' AND l.granted",
            ) == "1"
        });
        TableLock { psql }
    }

    fn release(mut self) {
        drop(self.psql.stdin.take());
        self.psql.wait().unwrap();
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_live_holder_is_named_and_waited_for() {
    let source = Cluster::main().mastodon_database("lock_live", 1);
    let ws = Workspace::new();
    let table_lock = TableLock::hold(&source);
    let first = spawn(backup_cmd(&ws, &source.url()));
    let first_pid = first.id();
    let lock_file = ws.backup_dir().join(".tusk.lock");
    wait_for("the first backup's lock record", || {
        std::fs::read_to_string(&lock_file)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .is_some_and(|owner| owner["pid"] == first_pid)
    });

    let out = run(backup_cmd(&ws, &source.url())).expect_code(4);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let holder = format!("backup by pid {first_pid} on host {} since ", host.trim());
    assert!(out.stderr.contains(&holder), "{}", out.stderr);

    let started = Instant::now();
    let mut cmd = backup_cmd(&ws, &source.url());
    cmd.args(["--wait", "1"]);
    let out = run(cmd).expect_code(4);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(out.stderr.contains("after waiting 1s"), "{}", out.stderr);

    let mut cmd = backup_cmd(&ws, &source.url());
    cmd.args(["--wait", "30"]);
    let waiting = spawn(cmd);
    std::thread::sleep(Duration::from_millis(1500));
    table_lock.release();
    let first = finish(first).expect_code(0);
    let second = finish(waiting).expect_code(0);
    assert!(
        second.stderr.contains("waiting up to 30s for the lock"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains(&holder), "{}", second.stderr);
    assert_ne!(first.json()["id"], second.json()["id"]);
    assert_eq!(ws.set_ids().len(), 2);
    assert_eq!(
        std::fs::read_to_string(&lock_file).unwrap(),
        "",
        "a released lock keeps no record"
    );
}

#[test]
fn a_stale_lock_of_a_dead_process_is_taken_over_and_logged() {
    let source = Cluster::main().mastodon_database("lock_stale", 1);
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.backup_dir()).unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let record = serde_json::json!({
        "command": "backup",
        "host": host.trim(),
        "pid": dead_pid,
        "started_at": "2026-12-01T03:00:01Z",
    });
    std::fs::write(ws.backup_dir().join(".tusk.lock"), record.to_string()).unwrap();

    let out = run(backup_cmd(&ws, &source.url())).expect_code(0);
    assert!(
        out.stderr.contains(&format!(
            "taking over the stale lock {}",
            ws.backup_dir().join(".tusk.lock").display()
        )) && out
            .stderr
            .contains(&format!("backup by pid {dead_pid} on host"))
            && out.stderr.contains("that process is gone"),
        "{}",
        out.stderr
    );
    assert_eq!(ws.set_ids().len(), 1);
}
