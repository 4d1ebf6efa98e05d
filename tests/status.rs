//! `tusk status`: Sidekiq's figures read from a real redis-server (a private
//! one on a Unix socket, and the shared one under a namespace of this
//! test's own), thresholds deciding the states and the Nagios exit code,
//! backups and verification from real sets, the metrics file and the
//! `/metrics` page parsed by a Prometheus text parser, and Docker mode's
//! app containers.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Cluster, Compose, Workspace, run, unique_name};

/// A redis-server of this test alone, on a Unix socket in its own
/// directory (no port to collide with), stopped on drop.
struct PrivateRedis {
    dir: tempfile::TempDir,
    child: Child,
}

impl PrivateRedis {
    fn start() -> Self {
        let bin = std::env::var("TUSK_TEST_REDIS_BIN").unwrap_or_else(|_| "redis-server".into());
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let child = Command::new(&bin)
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("could not start {bin}: {err}"));
        let redis = PrivateRedis { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis.connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn url(&self) -> String {
        format!("unix://{}", self.dir.path().join("redis.sock").display())
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What [`seed_sidekiq`] wrote, to check the figures against.
struct Seeded {
    /// Wall clock when the jobs were written.
    at_ms: i64,
}

/// Sidekiq's keys as Sidekiq 7 and 8 write them, under `namespace`:
/// `default` holds 3 jobs (the oldest enqueued 120.5 s ago, float seconds
/// as Sidekiq 7 writes), `pull` 2 jobs (the oldest 4 s ago, integer
/// milliseconds as Sidekiq 8 writes), `mailers` none; 3 scheduled, 4
/// retries, 2 dead; two processes in the set, one of them alive (busy 3 of
/// 5 threads) and one whose heartbeat hash expired.
fn seed_sidekiq(connection: &mut redis::Connection, namespace: Option<&str>) -> Seeded {
    let key = |k: &str| match namespace {
        Some(ns) => format!("{ns}:{k}"),
        None => k.to_string(),
    };
    let at_ms = now_ms();
    let seconds = |ago_ms: i64| format!("{:.3}", (at_ms - ago_ms) as f64 / 1000.0);
    let job = |enqueued_at: String| {
        format!(
            r#"{{"class":"ActivityPub::DeliveryWorker","args":[],"enqueued_at":{enqueued_at}}}"#
        )
    };
    let mut pipe = redis::pipe();
    pipe.cmd("SADD")
        .arg(key("queues"))
        .arg(&["default", "pull", "mailers"][..]);
    // LPUSH puts the newest at the head: the oldest job is pushed first.
    for ago in [120_500, 30_000, 1_000] {
        pipe.cmd("LPUSH")
            .arg(key("queue:default"))
            .arg(job(seconds(ago)));
    }
    for ago in [4_000, 2_000] {
        pipe.cmd("LPUSH")
            .arg(key("queue:pull"))
            .arg(job((at_ms - ago).to_string()));
    }
    for (set, count) in [("schedule", 3), ("retry", 4), ("dead", 2)] {
        for n in 0..count {
            pipe.cmd("ZADD")
                .arg(key(set))
                .arg(at_ms / 1000 + n)
                .arg(format!(r#"{{"jid":"{set}{n}"}}"#));
        }
    }
    pipe.cmd("SADD")
        .arg(key("processes"))
        .arg(&["web-1:1:abc", "gone:2:def"][..]);
    pipe.cmd("HSET")
        .arg(key("web-1:1:abc"))
        .arg("info")
        .arg(r#"{"hostname":"web-1","concurrency":5,"queues":["default","pull"]}"#)
        .arg("busy")
        .arg("3")
        .arg("beat")
        .arg(seconds(0));
    pipe.query::<()>(connection).unwrap();
    Seeded { at_ms }
}

/// `tusk status` against nothing but the given Redis (no database, no
/// config file), with `args` after it.
fn status(ws: &Workspace, redis_url: &str, args: &[&str]) -> Command {
    let mut cmd = ws.tusk();
    cmd.args(["--redis-url", redis_url, "status"]).args(args);
    cmd
}

fn sidekiq_checks() -> Vec<&'static str> {
    vec![
        "--check",
        "sidekiq_latency",
        "--check",
        "sidekiq_processes",
        "--check",
        "sidekiq_retries",
        "--check",
        "sidekiq_dead",
    ]
}

/// Checks the `sidekiq` object against what [`seed_sidekiq`] wrote, the
/// latencies between what they were when written and when tusk ended.
fn assert_seeded_figures(sidekiq: &serde_json::Value, seeded: &Seeded, ended_ms: i64) {
    let elapsed = (ended_ms - seeded.at_ms) as f64 / 1000.0;
    let queues = sidekiq["queues"].as_array().unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "mailers", "pull"], "{sidekiq}");
    let figure = |name: &str| {
        let queue = queues.iter().find(|q| q["name"] == name).unwrap();
        (
            queue["size"].as_u64().unwrap(),
            queue["latency_seconds"].as_f64().unwrap(),
        )
    };
    let (size, latency) = figure("default");
    assert_eq!(size, 3);
    assert!(
        (120.5..=120.5 + elapsed + 0.001).contains(&latency),
        "default's latency {latency} (elapsed {elapsed})"
    );
    let (size, latency) = figure("pull");
    assert_eq!(size, 2);
    assert!(
        (4.0..=4.0 + elapsed + 0.001).contains(&latency),
        "pull's latency {latency} (elapsed {elapsed})"
    );
    assert_eq!(figure("mailers"), (0, 0.0));
    assert_eq!(sidekiq["scheduled"], 3);
    assert_eq!(sidekiq["retries"], 4);
    assert_eq!(sidekiq["dead"], 2);
    assert_eq!(
        sidekiq["processes"], 1,
        "the expired process is not counted"
    );
    assert_eq!(sidekiq["busy"], 3);
    assert_eq!(sidekiq["threads"], 5);
}

#[test]
fn sidekiq_figures_are_read_exactly_without_a_namespace() {
    let redis = PrivateRedis::start();
    let seeded = seed_sidekiq(&mut redis.connection().unwrap(), None);
    let ws = Workspace::new();
    let mut cmd = status(&ws, &redis.url(), &sidekiq_checks());
    cmd.arg("--json");
    let out = run(cmd);
    let ended = now_ms();
    // default's oldest job is 120 s old: over the default 60 s warning.
    let report = out.expect_code(1).json();
    assert_seeded_figures(&report["sidekiq"], &seeded, ended);
    assert_eq!(report["state"], "warning");
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "sidekiq_latency",
            "sidekiq_processes",
            "sidekiq_retries",
            "sidekiq_dead"
        ]
    );
    assert_eq!(checks[0]["state"], "warning");
    assert!(
        checks[0]["message"]
            .as_str()
            .unwrap()
            .contains("default 12"),
        "{}",
        checks[0]
    );
    assert_eq!(checks[1]["state"], "ok");
    assert_eq!(report["postgres"], serde_json::Value::Null, "not asked for");
}

#[test]
fn sidekiq_figures_honour_the_namespace_from_the_file_and_env_production() {
    let url = std::env::var("TUSK_TEST_REDIS_URL").expect("TUSK_TEST_REDIS_URL (scripts/test.sh)");
    let namespace = unique_name("tusk_status");
    let mut connection = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let seeded = seed_sidekiq(&mut connection, Some(&namespace));
    let cleanup = |connection: &mut redis::Connection| {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{namespace}:*"))
            .query(connection)
            .unwrap();
        if !keys.is_empty() {
            redis::cmd("DEL").arg(keys).query::<()>(connection).unwrap();
        }
    };

    // tusk.yaml's redis: section.
    let ws = Workspace::new();
    let config = ws.path().join("status-test.yaml");
    std::fs::write(
        &config,
        format!("redis:\n  url: {url}\n  namespace: {namespace}\n"),
    )
    .unwrap();
    let mut cmd = ws.tusk();
    cmd.arg("--config")
        .arg(&config)
        .args(["--json", "status"])
        .args(sidekiq_checks());
    let out = run(cmd);
    let ended = now_ms();
    let report = out.expect_code(1).json();
    assert_seeded_figures(&report["sidekiq"], &seeded, ended);

    // Mastodon's own variables: REDIS_HOST, REDIS_PORT, REDIS_PASSWORD,
    // REDIS_NAMESPACE (Mastodon 4.2/4.3).
    let parsed = url::Url::parse(&url).unwrap();
    // Not in the working directory, where tusk would read it by default.
    std::fs::create_dir_all(ws.path().join("live")).unwrap();
    let env_production = ws.path().join("live/.env.production");
    std::fs::write(
        &env_production,
        format!(
            "REDIS_HOST={}\nREDIS_PORT={}\nREDIS_PASSWORD={}\nREDIS_NAMESPACE={namespace}\n",
            parsed.host_str().unwrap(),
            parsed.port().unwrap(),
            parsed.password().unwrap_or("")
        ),
    )
    .unwrap();
    let mut cmd = ws.tusk();
    cmd.arg("--mastodon-env-file")
        .arg(&env_production)
        .args(["--json", "status"])
        .args(sidekiq_checks());
    let out = run(cmd);
    let ended = now_ms();
    let report = out.expect_code(1).json();
    assert_seeded_figures(&report["sidekiq"], &seeded, ended);

    // Without the namespace nothing of this test is seen.
    let mut cmd = ws.tusk();
    cmd.args([
        "--redis-url",
        &url,
        "--json",
        "status",
        "--check",
        "sidekiq_latency",
    ]);
    let report = run(cmd).json();
    let queues = report["sidekiq"]["queues"].as_array().unwrap();
    assert!(
        queues.iter().all(|q| q["size"] != 3
            || q["name"] != "default"
            || q["latency_seconds"].as_f64() < Some(120.0)),
        "a namespace's keys leaked into the plain view: {queues:?}"
    );
    cleanup(&mut connection);
}

#[test]
fn thresholds_decide_the_state_and_the_exit_code() {
    let redis = PrivateRedis::start();
    seed_sidekiq(&mut redis.connection().unwrap(), None);
    let ws = Workspace::new();
    let config = ws.path().join("status-test.yaml");
    let latency = |yaml: &str| {
        std::fs::write(&config, yaml).unwrap();
        let mut cmd = ws.tusk();
        cmd.arg("--config").arg(&config).args([
            "--redis-url",
            &redis.url(),
            "--json",
            "status",
            "--check",
            "sidekiq_latency",
        ]);
        run(cmd)
    };
    // 120 s in default, 4 s in pull.
    let ok =
        latency("status:\n  queue_latency_seconds: {default: {warning: 200, critical: 400}}\n");
    assert_eq!(ok.expect_code(0).json()["checks"][0]["state"], "ok");
    let warning =
        latency("status:\n  queue_latency_seconds: {default: {warning: 100, critical: 400}}\n");
    assert_eq!(warning.expect_code(1).json()["state"], "warning");
    let critical =
        latency("status:\n  queue_latency_seconds: {default: {warning: 10, critical: 100}}\n");
    assert_eq!(critical.expect_code(2).json()["state"], "critical");
    // A queue's own limits win over default's.
    let pull = latency(
        "status:\n  queue_latency_seconds:\n    default: {warning: 500}\n    pull: {warning: 1, critical: 3}\n",
    );
    let report = pull.expect_code(2).json();
    assert!(
        report["checks"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("pull 4 s behind (2 jobs)"),
        "{}",
        report["checks"][0]
    );
    // Retries get limits only when the file sets them.
    std::fs::write(
        &config,
        "status:\n  retry_jobs: {warning: 2, critical: 10}\n",
    )
    .unwrap();
    let mut cmd = ws.tusk();
    cmd.arg("--config").arg(&config).args([
        "--redis-url",
        &redis.url(),
        "status",
        "--check",
        "sidekiq_retries",
    ]);
    let out = run(cmd).expect_code(1);
    assert!(
        out.stdout
            .contains("WARNING  sidekiq_retries  4 jobs waiting"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("status: WARNING"));
    assert!(
        !out.stderr.contains("ERROR"),
        "a warning is no error: {}",
        out.stderr
    );

    // A typo in the thresholds is a configuration error: UNKNOWN, not CRITICAL.
    let bad = latency("status:\n  queue_latency: {}\n");
    let bad = bad.expect_code(3);
    assert!(
        bad.stderr.contains("UNKNOWN") && bad.stderr.contains("queue_latency"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_redis_that_does_not_answer_is_unknown_within_the_timeout() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap();
    let ws = Workspace::new();
    let config = ws.path().join("status-test.yaml");
    std::fs::write(
        &config,
        format!("redis:\n  url: redis://{address}/0\n  timeout_seconds: 1\n"),
    )
    .unwrap();
    let mut cmd = ws.tusk();
    cmd.arg("--config").arg(&config).args([
        "--json",
        "status",
        "--check",
        "sidekiq_latency",
        "--check",
        "redis_version",
    ]);
    let started = Instant::now();
    let report = run(cmd).expect_code(3).json();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report["state"], "unknown");
    assert_eq!(report["checks"][0]["state"], "unknown");
    assert!(
        report["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&address.to_string()),
        "{}",
        report["checks"][0]
    );
    drop(silent);
}

#[test]
fn backups_verification_disk_and_mastodon_settings_come_from_the_instance() {
    let cluster = Cluster::main();
    let db = cluster.mastodon_database("tusk_status", 1);
    db.sql(
        "DELETE FROM settings WHERE var IN ('content_cache_retention_period', 'media_cache_retention_period');
         INSERT INTO settings (var, value, created_at, updated_at)
         VALUES ('content_cache_retention_period', E'--- 30\\n', now(), now()),
                ('media_cache_retention_period', E'--- 0\\n', now(), now());",
    );
    let ws = Workspace::new();
    let status = |args: &[&str]| {
        let mut cmd = ws.tusk();
        cmd.args(["--database-url", &db.url(), "--temp-dir"])
            .arg(ws.temp_dir())
            .args(["--json", "status"])
            .args(args);
        run(cmd)
    };
    let checks = ["--check", "backups", "--check", "verify", "--check", "disk"];
    // No set yet: critical.
    let report = status(&checks).expect_code(2).json();
    assert_eq!(report["checks"][0]["state"], "critical");
    assert!(
        report["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no backup set")
    );

    ws.backup(&db);
    let report = status(&checks).expect_code(2).json();
    let states: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ok", "critical", "ok"], "{report:#}");
    assert_eq!(report["backups"][0]["name"], "local");
    assert_eq!(report["backups"][0]["sets"], 1);

    let mut verify = ws.tusk();
    verify.args(["--database-url", &db.url(), "verify", "latest"]);
    run(verify).expect_code(0);
    let report = status(&checks).expect_code(0).json();
    assert_eq!(report["state"], "ok", "{report:#}");
    let restore_bytes = report["backups"][0]["newest_verified"]["restore_bytes"]
        .as_u64()
        .unwrap();
    assert!(restore_bytes > 0);
    let disk = report["checks"][2]["message"].as_str().unwrap();
    assert!(disk.contains("a restore needs"), "{disk}");
    assert_eq!(
        report["backups"][0]["last_verify_success"],
        report["backups"][0]["newest_verified"]["verified_at"]
    );
    // The metrics file carries the same verification time as backup's does.
    let metrics = ws.path().join("status.prom");
    let mut cmd = ws.tusk();
    cmd.args(["--database-url", &db.url(), "--metrics-file"])
        .arg(&metrics)
        .args(["status", "--check", "verify"]);
    run(cmd).expect_code(0);
    let verified_at = chrono::DateTime::parse_from_rfc3339(
        report["backups"][0]["last_verify_success"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
    .timestamp_millis() as f64
        / 1000.0;
    let samples = parse_metrics(&std::fs::read_to_string(&metrics).unwrap());
    assert_eq!(
        value(
            &samples,
            "tusk_verify_last_success_timestamp_seconds",
            Some(("destination", "local"))
        ),
        verified_at
    );

    // The age thresholds: a set just made is past a limit of a second.
    let config = ws.path().join("status-test.yaml");
    std::fs::write(
        &config,
        "status:\n  backup_max_age_hours: {warning: 0.0001, critical: 100}\n",
    )
    .unwrap();
    let mut cmd = ws.tusk();
    std::thread::sleep(Duration::from_millis(500));
    cmd.arg("--config").arg(&config).args([
        "--database-url",
        &db.url(),
        "status",
        "--check",
        "backups",
    ]);
    let out = run(cmd).expect_code(1);
    assert!(
        out.stdout.contains("WARNING  backups  local: newest set"),
        "{}",
        out.stdout
    );

    // Mastodon's retention settings and the database's facts.
    let report = status(&[
        "--check",
        "content_retention",
        "--check",
        "postgres_version",
        "--check",
        "postgres_connections",
        "--check",
        "postgres_transactions",
        "--check",
        "mastodon",
    ])
    .expect_code(0)
    .json();
    let postgres = &report["postgres"];
    assert_eq!(postgres["content_cache_retention"]["days"], 30);
    assert_eq!(postgres["content_cache_retention"]["stored"], "--- 30\n");
    assert_eq!(
        postgres["media_cache_retention"]["days"],
        serde_json::Value::Null
    );
    assert_eq!(postgres["database"], db.name.as_str());
    assert!(postgres["size_bytes"].as_i64().unwrap() > 0);
    let schema = db.sql("SELECT max(version) FROM schema_migrations");
    assert_eq!(report["mastodon"]["schema_version"], schema.trim());
    let retention = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "content_retention")
        .unwrap();
    assert!(
        retention["message"]
            .as_str()
            .unwrap()
            .starts_with("content cache retention 30 days"),
        "{retention}"
    );
}

/// Parses Prometheus' text format; every sample line must parse.
fn parse_metrics(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
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
    scrape.samples
}

fn value(samples: &[prometheus_parse::Sample], metric: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = samples
        .iter()
        .find(|s| {
            s.metric == metric && label.is_none_or(|(key, value)| s.labels.get(key) == Some(value))
        })
        .unwrap_or_else(|| panic!("no {metric} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
}

fn assert_sidekiq_metrics(samples: &[prometheus_parse::Sample], backups: bool) {
    assert_eq!(
        value(
            samples,
            "tusk_sidekiq_queue_size",
            Some(("queue", "default"))
        ),
        3.0
    );
    assert_eq!(
        value(samples, "tusk_sidekiq_queue_size", Some(("queue", "pull"))),
        2.0
    );
    let latency = value(
        samples,
        "tusk_sidekiq_queue_latency_seconds",
        Some(("queue", "default")),
    );
    assert!((120.5..200.0).contains(&latency), "{latency}");
    assert_eq!(value(samples, "tusk_sidekiq_retry_jobs", None), 4.0);
    assert_eq!(value(samples, "tusk_sidekiq_dead_jobs", None), 2.0);
    assert_eq!(value(samples, "tusk_sidekiq_processes", None), 1.0);
    assert_eq!(value(samples, "tusk_redis_up", None), 1.0);
    if backups {
        assert_eq!(
            value(
                samples,
                "tusk_backup_last_success_timestamp_seconds",
                Some(("destination", "local"))
            ),
            0.0,
            "no set yet"
        );
    }
}

#[test]
fn the_metrics_file_and_the_metrics_page_parse_as_prometheus_text() {
    let redis = PrivateRedis::start();
    seed_sidekiq(&mut redis.connection().unwrap(), None);
    let ws = Workspace::new();
    let metrics = ws.path().join("tusk.prom");
    let mut cmd = status(
        &ws,
        &redis.url(),
        &["--metrics-file", metrics.to_str().unwrap()],
    );
    cmd.args([
        "--check",
        "sidekiq_latency",
        "--check",
        "sidekiq_retries",
        "--check",
        "backups",
    ]);
    let out = run(cmd);
    assert!(
        out.code == 2,
        "no backup set is critical: {}\n{}",
        out.stdout,
        out.stderr
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    let samples = parse_metrics(&text);
    assert_sidekiq_metrics(&samples, true);
    assert_eq!(value(&samples, "tusk_status_state", None), 2.0);
    assert_eq!(
        value(
            &samples,
            "tusk_status_check_state",
            Some(("check", "sidekiq_latency"))
        ),
        1.0
    );

    // The same figures served per scrape.
    let mut server = ws.tusk();
    server
        .args([
            "--redis-url",
            &redis.url(),
            "status",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = server.spawn().unwrap();
    let address = listening_address(&mut child);
    let (head, body) = get(&address, "/healthz");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok\n");
    let (head, body) = get(&address, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = parse_metrics(&body);
    assert_sidekiq_metrics(&samples, true);
    // A fresh snapshot per scrape: a new job shows at once.
    redis::cmd("LPUSH")
        .arg("queue:default")
        .arg(r#"{"class":"X"}"#)
        .query::<()>(&mut redis.connection().unwrap())
        .unwrap();
    let (_, body) = get(&address, "/metrics");
    assert_eq!(
        value(
            &parse_metrics(&body),
            "tusk_sidekiq_queue_size",
            Some(("queue", "default"))
        ),
        4.0
    );
    let (head, _) = get(&address, "/nothing");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // SIGTERM stops it at once, as every tusk command.
    let pid = child.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopped = wait_with_deadline(&mut child, Duration::from_secs(10));
    assert_eq!(stopped, Some(143), "exit status after SIGTERM");
}

#[test]
fn a_scrape_never_hangs_on_a_silent_redis() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ws = Workspace::new();
    let config = ws.path().join("status-test.yaml");
    std::fs::write(
        &config,
        format!(
            "redis:\n  url: redis://{}/0\n  timeout_seconds: 1\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut server = ws.tusk();
    server
        .arg("--config")
        .arg(&config)
        .args(["status", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = server.spawn().unwrap();
    let address = listening_address(&mut child);
    let started = Instant::now();
    let (head, body) = get(&address, "/metrics");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let samples = parse_metrics(&body);
    assert_eq!(value(&samples, "tusk_redis_up", None), 0.0);
    assert!(
        samples
            .iter()
            .all(|s| s.metric != "tusk_sidekiq_queue_size")
    );
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(
        wait_with_deadline(&mut child, Duration::from_secs(10)),
        Some(130)
    );
    drop(silent);
}

/// The address a `--listen 127.0.0.1:0` server logged.
fn listening_address(child: &mut Child) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("http://").nth(1) {
            let address = rest.trim_end_matches("/metrics").to_string();
            // Keep draining stderr so the server never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return address;
        }
    }
    let _ = child.kill();
    panic!("the server never said where it listens");
}

/// A plain HTTP/1.1 GET: head and body.
fn get(address: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().or(status.signal().map(|s| 128 + s));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[test]
fn docker_mode_reports_the_app_containers() {
    if !common::docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("tusk_status");
    let ws = Workspace::new();
    let check = |expected: i32| {
        let mut cmd = compose.tusk(&ws);
        cmd.args([
            "--json",
            "status",
            "--check",
            "mastodon",
            "--check",
            "postgres_version",
        ]);
        run(cmd).expect_code(expected).json()
    };
    let report = check(0);
    let containers = report["mastodon"]["containers"].as_array().unwrap();
    let mut services: Vec<&str> = containers
        .iter()
        .map(|c| c["service"].as_str().unwrap())
        .collect();
    services.sort();
    assert_eq!(services, ["sidekiq", "streaming", "web"], "{report:#}");
    assert!(containers.iter().all(|c| c["state"] == "running"));
    assert!(
        report["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("3/3 containers up")
    );
    assert!(report["postgres"]["version"].as_str().is_some());

    let sidekiq = compose.container("sidekiq");
    let stopped = Command::new("docker")
        .args(["stop", "-t", "1", &sidekiq])
        .output()
        .unwrap();
    assert!(stopped.status.success());
    let report = check(2);
    assert_eq!(report["checks"][0]["state"], "critical");
    let message = report["checks"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&sidekiq) && message.contains("2/3 containers up"),
        "{message}"
    );
}

/// Every `tusk_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("tusk_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_metrics_tusk_writes() {
    let redis = PrivateRedis::start();
    seed_sidekiq(&mut redis.connection().unwrap(), None);
    let cluster = Cluster::main();
    let ws = Workspace::new();
    let media = ws.path().join("system");
    std::fs::create_dir_all(media.join("accounts")).unwrap();
    std::fs::write(media.join("accounts/a.png"), b"12345").unwrap();
    let metrics = ws.path().join("tusk.prom");
    let mut cmd = status(&ws, &redis.url(), &["--json"]);
    cmd.args([
        "--database-url",
        &cluster.db_url("postgres"),
        "--media-root",
    ])
    .arg(&media)
    .arg("--metrics-file")
    .arg(&metrics);
    let out = run(cmd);
    let report = out.json();
    assert_eq!(report["media"]["stored_bytes"], 5, "{}", report["media"]);
    assert_eq!(report["media"]["stored_files"], 1);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let samples = parse_metrics(&text);
    assert_eq!(
        value(
            &samples,
            "tusk_media_stored_bytes",
            Some(("store", "local"))
        ),
        5.0
    );
    let written: std::collections::BTreeSet<String> =
        samples.iter().map(|s| s.metric.clone()).collect();
    for example in [
        "examples/prometheus/grafana-dashboard.json",
        "examples/prometheus/tusk-alerts.yml",
    ] {
        let text = std::fs::read_to_string(common::repo_root().join(example)).unwrap();
        let used = metric_names(&text);
        assert!(used.len() > 5, "{example}: {used:?}");
        let unknown: Vec<&String> = used.difference(&written).collect();
        assert!(
            unknown.is_empty(),
            "{example} uses metrics tusk does not write: {unknown:?}"
        );
    }
    serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(
            common::repo_root().join("examples/prometheus/grafana-dashboard.json"),
        )
        .unwrap(),
    )
    .expect("the dashboard is JSON");
}

#[test]
fn a_bucket_destination_is_judged_like_a_directory() {
    use common::s3::S3Server;
    let server = S3Server::s3s_fs();
    let db = Cluster::main().mastodon_database("tusk_status_s3", 1);
    let ws = Workspace::new();
    let bucket = server.create_bucket("tusk-status");
    let config = ws.path().join("status-test.yaml");
    std::fs::write(
        &config,
        format!(
            "destinations:\n  - name: b2\n    s3: {{bucket: {bucket}, prefix: mastodon/, endpoint: {}, \
             region: us-east-1, path_style: true}}\n    retention: {{keep_last: 2}}\n",
            server.endpoint
        ),
    )
    .unwrap();
    let tusk = || {
        let mut cmd = common::tusk(ws.path());
        cmd.arg("--config")
            .arg(&config)
            .args(["--instance", "test", "--database-url", &db.url()])
            .env("TUSK_S3_ACCESS_KEY_ID", &server.access_key)
            .env("TUSK_S3_SECRET_ACCESS_KEY", &server.secret_key)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        cmd
    };
    let status = || {
        let mut cmd = tusk();
        cmd.args([
            "--json", "status", "--check", "backups", "--check", "verify",
        ]);
        run(cmd)
    };
    let report = status().expect_code(2).json();
    assert_eq!(report["backups"][0]["name"], "b2");
    assert_eq!(report["backups"][0]["sets"], 0);

    let mut backup = tusk();
    backup.args(["--json", "backup"]);
    let id = run(backup).expect_code(0).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut verify = tusk();
    verify
        .args(["verify", "latest", "--verify-url"])
        .arg(Cluster::second().db_url("postgres"));
    run(verify).expect_code(0);

    let report = status().expect_code(0).json();
    let b2 = &report["backups"][0];
    assert_eq!(b2["sets"], 1, "{report:#}");
    assert_eq!(b2["newest"]["id"], id.as_str());
    assert_eq!(b2["newest_verified"]["id"], id.as_str());
    assert!(b2["location"].as_str().unwrap().contains(&bucket), "{b2}");

    // Without credentials the destination cannot be read: unknown, not a crash.
    let mut cmd = common::tusk(ws.path());
    cmd.arg("--config")
        .arg(&config)
        .args([
            "--database-url",
            &db.url(),
            "--json",
            "status",
            "--check",
            "backups",
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", ws.path());
    let report = run(cmd).expect_code(3).json();
    assert_eq!(report["checks"][0]["state"], "unknown", "{report:#}");
}
