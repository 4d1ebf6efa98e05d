//! `tusk init`: the wizard on a pseudo-terminal, the same answers from flags,
//! the refusals, and Docker-mode detection. Every written file is loaded by
//! the built binary and used for a real backup of the database it names.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// An `.env.production` whose DB_* settings reach `db` on its cluster.
fn env_production(dir: &Path, db: &TestDb, password: &str) -> PathBuf {
    let url = db.url();
    let after_at = url.split_once('@').unwrap().1;
    let (host_port, _) = after_at.split_once('/').unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap();
    let user = url.split_once("://").unwrap().1.split_once(':').unwrap().0;
    let path = dir.join(".env.production");
    std::fs::write(
        &path,
        format!(
            "LOCAL_DOMAIN=init.example\nDB_HOST={host}\nDB_PORT={port}\nDB_USER={user}\n\
             DB_NAME={}\nDB_PASS={password}\nS3_ENABLED=false\n",
            db.name
        ),
    )
    .unwrap();
    path
}

/// tusk run in `dir` without a Docker Engine to find (a direct setup).
fn tusk_in(dir: &Path) -> Command {
    let mut cmd = tusk(dir);
    cmd.env("DOCKER_HOST", "tcp://127.0.0.1:9");
    cmd
}

/// The written file works: it loads, and a backup with it reaches the
/// database and writes a set into the chosen directory.
fn assert_usable(dir: &Path, config: &Path, backup_dir: &Path) {
    let mode = std::fs::metadata(config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", config.display());
    let mut cmd = tusk_in(dir);
    cmd.arg("--config").arg(config).args(["backups", "list"]);
    run(cmd).expect_code(0);
    let mut cmd = tusk_in(dir);
    cmd.arg("--config").arg(config).args(["--json", "backup"]);
    let report = run(cmd).expect_code(0).json();
    let id = report["id"].as_str().unwrap_or_else(|| panic!("{report}"));
    assert!(backup_dir.join(id).join("manifest.json").is_file());
}

/// A program on a pseudo-terminal (script(1)), driven like a person: wait
/// for a question to appear, then type the answer.
struct Terminal {
    child: Child,
    keys: ChildStdin,
    screen: Arc<Mutex<String>>,
    /// How much of the screen earlier `expect`s consumed.
    seen: usize,
}

impl Terminal {
    fn start(dir: &Path, command_line: &str) -> Self {
        let mut child = Command::new("script")
            .args(["-qec", command_line, "/dev/null"])
            .current_dir(dir)
            .env("TUSK_PG_BIN_DIR", pg_bin())
            .env("DOCKER_HOST", "tcp://127.0.0.1:9")
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run script(1)");
        let keys = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let screen = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            child,
            keys,
            screen,
            seen: 0,
        }
    }

    /// Waits until `text` appears after what was already seen.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let screen = self.screen.lock().unwrap();
                if let Some(at) = screen[self.seen..].find(text) {
                    self.seen += at + text.len();
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{text:?} never appeared; the screen:\n{screen}"
                );
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                let screen = self.screen.lock().unwrap();
                assert!(
                    screen[self.seen..].contains(text),
                    "ended ({status}) before {text:?} appeared; the screen:\n{screen}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn send(&mut self, keys: &str) {
        // A moment for the prompt to switch the terminal to raw mode.
        std::thread::sleep(Duration::from_millis(300));
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!(
                    "still running; the screen:\n{}",
                    self.screen.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(200));
        let screen = self.screen.lock().unwrap().clone();
        (status.code(), screen)
    }
}

#[test]
fn the_wizard_on_a_terminal_finds_the_env_file_checks_the_database_and_writes_a_working_file() {
    let ws = Workspace::new();
    let cluster = Cluster::main();
    let db = cluster.empty_database("init_tty");
    let env = env_production(ws.path(), &db, &cluster.password());
    let backup_dir = ws.path().join("sets");
    let config = ws.path().join("tusk.yaml");

    let tusk_bin = assert_cmd::cargo::cargo_bin("tusk");
    let mut term = Terminal::start(ws.path(), &format!("'{}' init", tusk_bin.display()));
    // The .env.production of the working directory is proposed. A wrong
    // path is refused and the question asked again; then take the proposal.
    term.expect("Mastodon's .env.production");
    term.expect(&env.display().to_string());
    term.send("/nowhere/.env.production\r");
    term.expect("/nowhere/.env.production is not a file");
    term.expect("Mastodon's .env.production");
    term.send("\r");
    // No Docker Engine: direct mode is proposed.
    term.expect("Where do pg_dump and psql run?");
    term.send("\r");
    term.expect("Backup directory");
    term.send(&format!("{}\r", backup_dir.display()));
    term.expect("does not exist yet");
    term.expect("connected to postgresql://");
    term.expect("has no accounts table");
    term.expect("Write");
    term.send("y");
    let (code, screen) = term.finish();
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("Wrote"), "{screen}");

    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("mode: direct"), "{text}");
    assert!(
        text.contains(&format!("env_file: {}", env.display())),
        "{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
            >= 5
    );
    assert_usable(ws.path(), &config, &backup_dir);

    // Run again: the file is there, and nothing is asked or changed.
    let before = std::fs::read(&config).unwrap();
    let (code, screen) = run_on_terminal(
        &format!(
            "cd '{}' && DOCKER_HOST=tcp://127.0.0.1:9 '{}' init",
            ws.path().display(),
            tusk_bin.display()
        ),
        b"",
    );
    assert_eq!(code, Some(2), "{screen}");
    assert!(screen.contains("--force"), "{screen}");
    assert_eq!(std::fs::read(&config).unwrap(), before);
}

#[test]
fn flags_answer_every_question_without_a_terminal() {
    let ws = Workspace::new();
    let cluster = Cluster::main();
    let db = cluster.empty_database("init_flags");
    let live = ws.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let env = env_production(&live, &db, &cluster.password());
    let backup_dir = ws.path().join("sets");
    let config = ws.path().join("etc/tusk.yaml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();

    let init = |extra: &[&str]| {
        let mut cmd = tusk_in(ws.path());
        cmd.args(["--json", "init", "--non-interactive", "--env-file"])
            .arg(&env)
            .args(["--postgres-mode", "direct", "--backup-dir"])
            .arg(&backup_dir)
            .arg("--output")
            .arg(&config)
            .args(extra);
        cmd
    };
    let report = run(init(&[])).expect_code(0).json();
    assert_eq!(report["postgres_mode"], "direct");
    assert_eq!(report["mastodon_tables"], false);
    assert_eq!(report["checks_failed"], false);
    assert!(
        report["database"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{}", db.name)),
        "{report}"
    );
    assert!(
        !report.to_string().contains(&cluster.password()),
        "no password in the report"
    );
    assert_usable(ws.path(), &config, &backup_dir);

    // An existing file is kept without --force (usage error), replaced with it.
    std::fs::write(&config, "# mine\n").unwrap();
    let out = run(init(&[])).expect_code(2);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
    run(init(&["--force"])).expect_code(0);
    assert_usable(ws.path(), &config, &backup_dir);

    // A database that refuses the login: nothing is written.
    let wrong = ws.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let wrong_env = env_production(&wrong, &db, "not-the-password");
    let elsewhere = ws.path().join("other.yaml");
    let mut cmd = tusk_in(ws.path());
    cmd.args(["init", "--non-interactive", "--env-file"])
        .arg(&wrong_env)
        .args(["--postgres-mode", "direct", "--output"])
        .arg(&elsewhere);
    let out = run(cmd).expect_code(1);
    assert!(out.stderr.contains("not written"), "{}", out.stderr);
    assert!(!elsewhere.exists());
    let leftovers: Vec<_> = std::fs::read_dir(ws.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".init-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Without a terminal and without --non-interactive: a usage error.
    let mut cmd = tusk_in(ws.path());
    cmd.args(["init", "--output"]).arg(ws.path().join("x.yaml"));
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("--non-interactive"), "{}", out.stderr);
    assert!(!ws.path().join("x.yaml").exists());

    // Nothing to propose for the .env.production: the flag is named.
    let empty = ws.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cmd = tusk_in(&empty);
    cmd.args(["init", "--non-interactive"]);
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("--env-file"), "{}", out.stderr);
}

#[test]
fn a_running_compose_database_is_found_and_docker_mode_proposed() {
    if !docker_tests_enabled() {
        return;
    }
    let compose = Compose::up("init");
    let live = compose.working_dir();
    std::fs::create_dir_all(&live).unwrap();
    // Mastodon's compose setup: the app reaches the database as `db`.
    std::fs::write(
        live.join(".env.production"),
        "LOCAL_DOMAIN=compose.example\nDB_HOST=db\nDB_USER=postgres\nDB_NAME=postgres\nDB_PORT=5432\n",
    )
    .unwrap();
    let ws = Workspace::new();
    let config = ws.path().join("tusk.yaml");
    let mut cmd = tusk(ws.path());
    cmd.args(["--json", "init", "--non-interactive", "--backup-dir"])
        .arg(ws.backup_dir());
    let report = run(cmd).expect_code(0).json();
    assert_eq!(report["postgres_mode"], "docker", "{report}");
    assert_eq!(
        report["env_file"],
        live.join(".env.production").display().to_string()
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains(&format!("compose_project: {}", compose.project)),
        "{text}"
    );
    let mut cmd = tusk(ws.path());
    cmd.arg("--config").arg(&config).args(["--json", "backup"]);
    let backup = run(cmd).expect_code(0).json();
    assert!(backup["id"].is_string(), "{backup}");
    std::fs::remove_dir_all(&live).unwrap();
}

#[test]
fn a_configured_bucket_is_listed_and_one_that_does_not_answer_writes_nothing() {
    if !common::s3::s3_tests_enabled() {
        return;
    }
    let server = common::s3::S3Server::s3s_fs();
    let bucket = server.create_bucket("init");
    let ws = Workspace::new();
    let cluster = Cluster::main();
    let db = cluster.empty_database("init_s3");
    let env = env_production(ws.path(), &db, &cluster.password());
    let with_bucket = |name: &str| {
        let base = std::fs::read_to_string(&env)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("S3_") && !l.starts_with("AWS_"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(
            &env,
            format!(
                "{base}\nS3_ENABLED=true\nS3_BUCKET={name}\nS3_ENDPOINT={}\nS3_REGION=us-east-1\n\
                 AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
                server.endpoint, server.access_key, server.secret_key
            ),
        )
        .unwrap();
    };
    let init = |output: &str| {
        let mut cmd = tusk_in(ws.path());
        cmd.args(["--json", "init", "--non-interactive", "--postgres-mode"])
            .args(["direct", "--backup-dir"])
            .arg(ws.backup_dir())
            .args(["--output", output]);
        run(cmd)
    };

    with_bucket(&bucket);
    let report = init("tusk.yaml").expect_code(0).json();
    assert_eq!(report["bucket"], bucket.as_str(), "{report}");

    with_bucket("no-such-bucket-for-init");
    let out = init("other.yaml").expect_code(1);
    assert!(
        out.stderr.contains("no-such-bucket-for-init"),
        "{}",
        out.stderr
    );
    assert!(!ws.path().join("other.yaml").exists());
}
