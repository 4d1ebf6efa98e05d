//! Redis in backup sets: Sidekiq's queues, scheduled, retrying and dead
//! jobs snapshotted with the database (encrypted like every artefact), and
//! `restore --redis-to` loading them into a stopped Redis's data directory,
//! checked against the counts the set recorded. Real redis-server processes
//! from Debian's packages, one per test, on ports the OS picks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn redis_bin() -> String {
    std::env::var("TUSK_TEST_REDIS_BIN").unwrap_or_else(|_| "redis-server".into())
}

fn redis_cli_bin() -> String {
    std::env::var("TUSK_TEST_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server of the test's own, with a password, its data in `dir`.
struct Redis {
    child: Child,
    port: u16,
    password: String,
}

impl Redis {
    /// Starts a server on `dir` (which may hold a dump.rdb to load).
    fn start(dir: &Path) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let password = "redis-test-pw".to_string();
        let child = Command::new(redis_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--requirepass", &password])
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis {
            child,
            port,
            password,
        };
        let started = Instant::now();
        while redis.try_cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(redis_cli_bin())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .env("REDISCLI_AUTH", &self.password)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// DEBUG DIGEST of every database: equal digests, equal data.
    fn digests(&self) -> Vec<String> {
        (0..4)
            .map(|db| self.cli(&["-n", &db.to_string(), "DEBUG", "DIGEST"]))
            .collect()
    }

    /// Sidekiq's keys as Sidekiq writes them, plus the app's cache in
    /// database 1 and a key that expires.
    fn seed_sidekiq(&self) {
        let job = |n: u32| {
            format!(
                r#"{{"class":"ActivityPub::DeliveryWorker","jid":"{n:024x}","enqueued_at":1733600000.{n}}}"#
            )
        };
        self.cli(&["SADD", "queues", "default", "push", "pull", "mailers"]);
        for n in 0..5 {
            self.cli(&["LPUSH", "queue:push", &job(n)]);
        }
        for n in 5..7 {
            self.cli(&["LPUSH", "queue:default", &job(n)]);
        }
        self.cli(&["LPUSH", "queue:pull", &job(7)]);
        self.cli(&[
            "ZADD",
            "schedule",
            "1893456000",
            &job(8),
            "1893456001",
            &job(9),
        ]);
        self.cli(&["ZADD", "retry", "1893456000", &job(10)]);
        self.cli(&["ZADD", "dead", "1733600000", &job(11)]);
        self.cli(&["SET", "stat:processed", "123456"]);
        self.cli(&["HSET", "host:1:sidekiq", "info", "{}", "busy", "0"]);
        self.cli(&["SET", "expiring", "soon", "EX", "86400"]);
        self.cli(&["-n", "1", "SET", "cache:views/statuses/1", "<p>hi</p>"]);
    }

    fn env_lines(&self) -> String {
        format!(
            "REDIS_HOST=127.0.0.1\nREDIS_PORT={}\nREDIS_PASSWORD={}\n",
            self.port, self.password
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture(path: &str) -> PathBuf {
    repo_root().join("fixtures").join(path)
}

fn age_public_key(name: &str) -> String {
    std::fs::read_to_string(fixture(&format!("encryption/{name}")))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("# public key: "))
        .unwrap()
        .to_string()
}

/// A workspace whose `.env.production` is the fixture's with `redis`'s
/// address, and whose tusk.yaml says `yaml`.
fn workspace(redis: &Redis, yaml: &str) -> Workspace {
    let ws = Workspace::new();
    let env = std::fs::read_to_string(fixture("mastodon/env.production")).unwrap();
    std::fs::write(
        ws.path().join(".env.production"),
        format!("{env}\n{}", redis.env_lines()),
    )
    .unwrap();
    std::fs::write(ws.path().join("tusk.yaml"), yaml).unwrap();
    ws
}

fn backup(ws: &Workspace, db: &TestDb, extra: &[&str]) -> Run {
    let mut cmd = ws.tusk_configured();
    cmd.args(["--json", "backup", "--database-url"])
        .arg(db.url())
        .args(extra);
    run(cmd)
}

fn redis_artefact(manifest: &serde_json::Value) -> serde_json::Value {
    manifest["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "redis")
        .cloned()
        .unwrap_or_else(|| panic!("no redis artefact in {manifest:#}"))
}

#[test]
fn an_encrypted_whole_instance_set_brings_sidekiqs_redis_back_identical() {
    let work = tempfile::tempdir().unwrap();
    let source = Redis::start(&work.path().join("source"));
    source.seed_sidekiq();
    // A Sidekiq process's heartbeat: it expires a few seconds after the
    // snapshot, so the restore finds one key fewer than the set recorded.
    source.cli(&["HSET", "host:2:beat", "busy", "0"]);
    source.cli(&["EXPIRE", "host:2:beat", "3"]);
    let db = Cluster::main().mastodon_database("redis_enc", 1);
    let recipient = age_public_key("admin.key");
    let ws = workspace(
        &source,
        &format!("encryption:\n  recipients:\n    - \"{recipient}\"\n"),
    );

    let report = backup(&ws, &db, &[]).expect_code(0).json();
    let id = report["id"].as_str().unwrap();
    let manifest = ws.manifest(id);
    let artefact = redis_artefact(&manifest);
    assert_eq!(artefact["name"], "redis.rdb.zst.age");
    let facts = &artefact["redis"];
    assert_eq!(facts["role"], "sidekiq");
    assert_eq!(facts["exact"], true, "{facts:#}");
    // database 0: queues, 3 queue lists, schedule, retry, dead,
    // stat:processed, the process hash, expiring, the heartbeat; database 1:
    // the cache key.
    assert_eq!(facts["keys"]["0"], 11, "{facts:#}");
    assert_eq!(facts["expiring"]["0"], 2, "{facts:#}");
    assert_eq!(facts["keys"]["1"], 1);
    let sidekiq = &facts["sidekiq"];
    assert_eq!(sidekiq["queues"]["push"], 5);
    assert_eq!(sidekiq["queues"]["default"], 2);
    assert_eq!(sidekiq["queues"]["mailers"], 0);
    assert_eq!(
        (&sidekiq["scheduled"], &sidekiq["retries"], &sidekiq["dead"]),
        (&2.into(), &1.into(), &1.into())
    );
    assert!(
        !artefact["source"]
            .as_str()
            .unwrap()
            .contains(&source.password),
        "the manifest names the server, never its password"
    );

    // The standard tools open it: age, then zstd, gives an RDB file.
    let stored = ws.backup_dir().join(id).join("redis.rdb.zst.age");
    let age = std::env::var("TUSK_TEST_AGE_BIN").unwrap_or_else(|_| "age".into());
    let opened = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{age} -d -i {} {} | zstd -dc",
            fixture("encryption/admin.key").display(),
            stored.display()
        ))
        .output()
        .unwrap();
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    assert!(opened.stdout.starts_with(b"REDIS"), "not an RDB file");

    // A Redis still running in the target directory: refused, untouched.
    let target_dir = work.path().join("target");
    let running = Redis::start(&target_dir);
    running.cli(&["SET", "keep", "me"]);
    let restore = |extra: &[&str]| {
        let mut cmd = ws.tusk_configured();
        cmd.args(["--json", "restore", id, "--no-database", "--identity"])
            .arg(fixture("encryption/admin.key"))
            .arg("--redis-to")
            .arg(&target_dir)
            .args(extra);
        run(cmd)
    };
    let refused = restore(&[]).expect_code(2);
    assert!(
        refused.stderr.contains("is running in"),
        "{}",
        refused.stderr
    );
    assert_eq!(running.cli(&["GET", "keep"]), "me");
    running.cli(&["SAVE"]);
    drop(running);
    let old_dump = std::fs::read(target_dir.join("dump.rdb")).unwrap();

    // An append-only log would be loaded instead: refused without --force.
    std::fs::create_dir(target_dir.join("appendonlydir")).unwrap();
    let refused = restore(&[]).expect_code(2);
    assert!(refused.stderr.contains("append-only"), "{}", refused.stderr);
    assert_eq!(entries(&target_dir), ["appendonlydir", "dump.rdb"]);

    let started = Instant::now();
    while source.cli(&["EXISTS", "host:2:beat"]) != "0" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the heartbeat never expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let restored = restore(&["--force"]).expect_code(0).json();
    let redis = &restored["redis"];
    assert_eq!(redis["matched_exactly"], true, "{restored:#}");
    assert_eq!(
        redis["keys"]["0"], 10,
        "the expired heartbeat is not loaded"
    );
    assert_eq!(
        entries(&target_dir),
        [
            "appendonlydir.before-".to_string() + id,
            "dump.rdb".into(),
            "dump.rdb.before-".to_string() + id,
        ]
    );
    assert_eq!(
        std::fs::read(target_dir.join(format!("dump.rdb.before-{id}"))).unwrap(),
        old_dump,
        "the previous snapshot is kept byte for byte"
    );

    // Started on the restored file, Redis holds exactly the source's data.
    std::fs::remove_dir_all(target_dir.join(format!("appendonlydir.before-{id}"))).unwrap();
    let loaded = Redis::start(&target_dir);
    assert_eq!(loaded.digests(), source.digests());
    assert_eq!(loaded.cli(&["LLEN", "queue:push"]), "5");
    assert_eq!(loaded.cli(&["ZCARD", "schedule"]), "2");
    let ttl: i64 = loaded.cli(&["TTL", "expiring"]).parse().unwrap();
    assert!(ttl > 80_000, "the expiry came back too ({ttl})");
}

#[test]
fn a_snapshot_that_does_not_hold_the_recorded_counts_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let source = Redis::start(&work.path().join("source"));
    source.seed_sidekiq();
    let db = Cluster::main().mastodon_database("redis_counts", 1);
    let ws = workspace(&source, "{}\n");
    let report = backup(&ws, &db, &[]).expect_code(0).json();
    let id = report["id"].as_str().unwrap();
    // Without encryption the secrets stay out, and Redis goes in in clear.
    assert_eq!(redis_artefact(&ws.manifest(id))["name"], "redis.rdb.zst");

    // The manifest's record says one more retry than the snapshot holds.
    let manifest_path = ws.backup_dir().join(id).join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    for artefact in manifest["artefacts"].as_array_mut().unwrap() {
        if artefact["kind"] == "redis" {
            artefact["redis"]["sidekiq"]["retries"] = 2.into();
        }
    }
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();

    let target_dir = work.path().join("target");
    std::fs::create_dir(&target_dir).unwrap();
    std::fs::write(target_dir.join("dump.rdb"), b"the old snapshot").unwrap();
    let mut cmd = ws.tusk_configured();
    cmd.args(["restore", id, "--no-database", "--redis-to"])
        .arg(&target_dir);
    let failed = run(cmd).expect_code(3);
    assert!(
        failed
            .stderr
            .contains("Sidekiq retry set: 1 jobs, the set recorded 2"),
        "{}",
        failed.stderr
    );
    assert_eq!(
        entries(&target_dir),
        ["dump.rdb"],
        "no partial file is left"
    );
    assert_eq!(
        std::fs::read(target_dir.join("dump.rdb")).unwrap(),
        b"the old snapshot"
    );
}

#[test]
fn a_redis_that_cannot_be_snapshotted_fails_the_backup_unless_left_out() {
    let work = tempfile::tempdir().unwrap();
    let source = Redis::start(&work.path().join("source"));
    let db = Cluster::main().mastodon_database("redis_down", 1);
    let ws = workspace(&source, "{}\n");
    // A wrong password: redis-cli cannot sync, and the set must not look good.
    std::fs::write(
        ws.path().join(".env.production"),
        std::fs::read_to_string(ws.path().join(".env.production"))
            .unwrap()
            .replace("REDIS_PASSWORD=redis-test-pw", "REDIS_PASSWORD=wrong"),
    )
    .unwrap();
    let failed = backup(&ws, &db, &[]);
    assert_ne!(failed.code, 0, "{}", failed.stderr);
    assert!(failed.stderr.contains("--no-redis"), "{}", failed.stderr);
    assert!(ws.set_ids().is_empty(), "no set is left behind");
    assert!(
        entries(&ws.backup_dir())
            .iter()
            .all(|n| !n.ends_with(".partial")),
        "{:?}",
        entries(&ws.backup_dir())
    );

    let report = backup(&ws, &db, &["--no-redis"]).expect_code(0).json();
    let manifest = ws.manifest(report["id"].as_str().unwrap());
    assert!(
        manifest["artefacts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["kind"] != "redis")
    );
    // A config that turns Redis off does the same without the flag.
    std::fs::write(ws.path().join("tusk.yaml"), "redis:\n  backup: false\n").unwrap();
    backup(&ws, &db, &[]).expect_code(0);
}

/// Redis containers of a test, removed (with their anonymous volumes)
/// before the compose deployment's network goes.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&self.0)
            .output();
    }
}

/// Starts `name` as compose service `redis` of the deployment, from the
/// test image (which carries Debian's redis-server), its /data on `data`.
fn run_redis_container(compose: &Compose, name: &str, data: &Path) {
    let project = format!("com.docker.compose.project={}", compose.project);
    docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        &compose.network,
        "--label",
        &project,
        "--label",
        "com.docker.compose.service=redis",
        "-v",
        &format!("{}:/data", data.display()),
        "--init",
        "--entrypoint",
        "redis-server",
        &compose.image,
        "--dir",
        "/data",
        "--requirepass",
        "redis-test-pw",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
    ]);
    for _ in 0..200 {
        let pong = Command::new("docker")
            .args([
                "exec",
                "-e",
                "REDISCLI_AUTH=redis-test-pw",
                name,
                "redis-cli",
                "PING",
            ])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
            .unwrap_or(false);
        if pong {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} never answered");
}

fn container_cli(name: &str, args: &[&str]) -> String {
    let mut full = vec![
        "exec",
        "-e",
        "REDISCLI_AUTH=redis-test-pw",
        name,
        "redis-cli",
    ];
    full.extend_from_slice(args);
    docker(&full)
}

/// The web container's image, tagged as Mastodon's images are, so the set
/// records the version from it.
const WEB_IMAGE: &str = "tusk-test/mastodon:v4.3.2";

#[test]
fn docker_mode_puts_the_whole_deployment_in_an_encrypted_set_and_restores_redis_into_a_volume() {
    if !docker_tests_enabled() {
        return;
    }
    // The database from the compose helper; web and redis run here, as
    // compose would have started them.
    let compose = Compose::up_database_only("tusk-redis", &docker_images()[0]);
    let _db = compose.mastodon_database(1);
    docker(&["tag", &compose.image, WEB_IMAGE]);
    let web = compose.container("web");
    docker(&[
        "run",
        "-d",
        "--name",
        &web,
        "--network",
        &compose.network,
        "--label",
        &format!("com.docker.compose.project={}", compose.project),
        "--label",
        "com.docker.compose.service=web",
        "--init",
        "--entrypoint",
        "sleep",
        WEB_IMAGE,
        "infinity",
    ]);
    let work = tempfile::tempdir().unwrap();
    let (source, target) = (compose.container("redis"), compose.container("redis-new"));
    let _containers = Containers(vec![web, source.clone(), target.clone()]);
    run_redis_container(&compose, &source, &work.path().join("source"));
    for args in [
        &["SADD", "queues", "default", "push"][..],
        &[
            "LPUSH",
            "queue:push",
            r#"{"class":"PushWorker","enqueued_at":1733600000.5}"#,
        ],
        &["ZADD", "retry", "1893456000", r#"{"class":"RetryMe"}"#],
        &["-n", "1", "SET", "cache:x", "y"],
    ] {
        container_cli(&source, args);
    }
    let digests = |name: &str| -> Vec<String> {
        (0..2)
            .map(|db| container_cli(name, &["-n", &db.to_string(), "DEBUG", "DIGEST"]))
            .collect()
    };
    let source_digests = digests(&source);

    // The compose project's directory: its compose file and .env.
    let project_dir = compose.working_dir();
    std::fs::create_dir_all(&project_dir).unwrap();
    let compose_file = "services:\n  db:\n    image: postgres:15\n  redis:\n    image: redis:7\n";
    std::fs::write(project_dir.join("docker-compose.yml"), compose_file).unwrap();
    std::fs::write(
        project_dir.join(".env"),
        "POSTGRES_PASSWORD=compose-secret\n",
    )
    .unwrap();
    let _project_dir = RemoveOnDrop(project_dir.clone());

    // Mastodon's compose file names the service: REDIS_HOST=redis.
    let ws = Workspace::new();
    let env = std::fs::read_to_string(fixture("mastodon/env.production")).unwrap();
    std::fs::write(
        ws.path().join(".env.production"),
        format!("{env}\nREDIS_HOST=redis\nREDIS_PORT=6379\nREDIS_PASSWORD=redis-test-pw\n"),
    )
    .unwrap();
    std::fs::write(
        ws.path().join("tusk.yaml"),
        format!(
            "encryption:\n  recipients:\n    - \"{}\"\n",
            age_public_key("admin.key")
        ),
    )
    .unwrap();
    let tusk = || {
        let mut cmd = compose.tusk(&ws);
        cmd.arg("--config")
            .arg(ws.path().join("tusk.yaml"))
            .arg("--mastodon-env-file")
            .arg(ws.path().join(".env.production"))
            .arg("--identity")
            .arg(fixture("encryption/admin.key"))
            .args([
                "--json",
                "--database-url",
                "postgresql://postgres@db/mastodon",
            ]);
        cmd
    };
    let mut cmd = tusk();
    cmd.arg("backup");
    let report = run(cmd).expect_code(0).json();
    let id = report["id"].as_str().unwrap();
    let manifest = ws.manifest(id);
    let stored: Vec<(&str, &str)> = manifest["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["kind"].as_str().unwrap()))
        .collect();
    for expected in [
        ("env.production.zst.age", "secrets"),
        ("docker-compose.yml.zst.age", "deployment"),
        ("compose.env.zst.age", "secrets"),
        ("redis.rdb.zst.age", "redis"),
    ] {
        assert!(stored.contains(&expected), "{expected:?} in {stored:?}");
    }
    assert_eq!(
        manifest["mastodon"]["version"], "4.3.2",
        "{:#}",
        manifest["mastodon"]
    );
    assert_eq!(manifest["mastodon"]["source"], "image");
    assert_eq!(manifest["mastodon"]["image"], WEB_IMAGE);
    let artefact = redis_artefact(&manifest);
    assert_eq!(artefact["source"], format!("container {source}"));
    let facts = &artefact["redis"];
    assert_eq!(facts["exact"], true, "{facts:#}");
    assert_eq!(facts["keys"]["0"], 3);
    assert_eq!(facts["sidekiq"]["queues"]["push"], 1);
    assert_eq!(facts["sidekiq"]["retries"], 1);

    // The new host's files come back as they were, mode 0600.
    let files_dir = work.path().join("files");
    let mut cmd = tusk();
    cmd.args(["restore", id, "--no-database", "--files-to"])
        .arg(&files_dir);
    run(cmd).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(files_dir.join("docker-compose.yml")).unwrap(),
        compose_file
    );
    assert_eq!(
        std::fs::read_to_string(files_dir.join(".env")).unwrap(),
        "POSTGRES_PASSWORD=compose-secret\n"
    );

    // The new server's Redis container runs on the volume: refused.
    let volume = work.path().join("target");
    run_redis_container(&compose, &target, &volume);
    let restore = || {
        let mut cmd = tusk();
        cmd.args(["restore", id, "--no-database", "--redis-to"])
            .arg(&volume);
        run(cmd)
    };
    let refused = restore().expect_code(2);
    assert!(
        refused.stderr.contains("is running in"),
        "{}",
        refused.stderr
    );

    docker(&["stop", &target]);
    restore().expect_code(0);
    docker(&["start", &target]);
    for _ in 0..200 {
        if container_cli(&target, &["DBSIZE"]) == "3" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(digests(&target), source_digests);
}

/// Removes a directory the test made outside its temporary directory.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
