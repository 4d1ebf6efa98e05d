//! SIGTERM, SIGHUP and SIGKILL against real runs: a signal undoes what the
//! run started (exit 143 / 129), a second one does not cut that short, and
//! what SIGKILL leaves is removed by the next run, but never what a live run
//! uses.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::*;

/// Database name inside a Docker deployment.
const DB_URL: &str = "postgresql://postgres@db/mastodon";

/// Rows of the bulk table: enough for a dump or restore of a few seconds.
const BULK_ROWS: u32 = 400_000;

/// A tusk run in the background whose stderr is collected as it comes.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

/// How a background run ended.
struct Ended {
    code: Option<i32>,
    stderr: String,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tusk");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = collected.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Running {
            child,
            stderr,
            reader,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (`TERM`, `HUP`, `KILL`) to tusk itself.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// Waits until stderr holds `needle`; panics with it otherwise.
    fn wait_for_log(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.stderr().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tusk ended ({status}) before logging {needle:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `condition` holds while tusk still runs.
    fn wait_until(&mut self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !condition() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tusk ended ({status}) before {what}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(mut self) -> Ended {
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.clone();
        self.reader.join().unwrap();
        let stderr = stderr.lock().unwrap().clone();
        Ended {
            code: status.code(),
            stderr,
        }
    }
}

/// Every backup, restore and verify sweeps the cluster and the Docker Engine
/// it uses, which the tests share: a test that leaves something for the next
/// run to remove runs alone (exclusive), the others may overlap (shared).
static SWEEPS: RwLock<()> = RwLock::new(());

fn sweeps_shared() -> RwLockReadGuard<'static, ()> {
    SWEEPS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sweeps_exclusive() -> RwLockWriteGuard<'static, ()> {
    SWEEPS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Adds a table big enough that a dump or restore can be caught midway.
fn add_bulk(db: &TestDb) {
    db.sql(&format!(
        "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 12) AS body \
         FROM generate_series(1, {BULK_ROWS}) g"
    ));
}

/// Whether a COPY runs on a database whose name matches `like`.
fn copying(cluster: &Cluster, like: &str) -> bool {
    cluster.sql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '{like}' \
             AND query LIKE 'COPY %' AND pid <> pg_backend_pid()"
        ),
    ) != "0"
}

/// Waits (a while) until no session of `application_name` pattern `like`
/// is left on the cluster; returns how many are.
fn sessions_left(cluster: &Cluster, where_clause: &str) -> String {
    let query = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE {where_clause} AND pid <> pg_backend_pid()"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = cluster.sql("postgres", &query);
        if left == "0" || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Entries of the backup directory other than tusk's hidden files (the
/// lock, the records of the last runs).
fn backup_dir_entries(ws: &Workspace) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ws.backup_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Names of the helper containers beside the deployment's database.
fn helper_names(compose: &Compose) -> Vec<String> {
    let filter = format!("label=tusk.for={}", compose.container("postgres"));
    let (ok, names) = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
    assert!(ok);
    let mut names: Vec<String> = names.split_whitespace().map(str::to_string).collect();
    names.sort();
    names
}

fn container_exists(name: &str) -> bool {
    docker(&["inspect", "--format", "{{.Name}}", name]).0
}

/// The first whitespace-separated word of `text` starting with `prefix`,
/// without trailing punctuation.
fn word_starting(text: &str, prefix: &str) -> Option<String> {
    text.split_whitespace()
        .find(|word| word.starts_with(prefix))
        .map(|word| word.trim_end_matches([',', ':', ')']).to_string())
}

fn seeded_compose(prefix: &str) -> (Compose, TestDb) {
    let compose = Compose::up(prefix);
    let db = compose.mastodon_database(1);
    add_bulk(&db);
    (compose, db)
}

fn assert_apps_running(compose: &Compose, stderr: &str) {
    for service in APP_SERVICES {
        assert!(
            compose.is_running(service),
            "{service} not running again:\n{stderr}"
        );
    }
}

#[test]
fn sigterm_mid_dump_starts_the_apps_again_and_exits_143() {
    let _sweeps = sweeps_shared();
    if !docker_tests_enabled() {
        return;
    }
    let (compose, source) = seeded_compose("sg_term");
    let ws = Workspace::new();
    let mut cmd = compose.tusk(&ws);
    cmd.args(["--database-url", DB_URL, "backup", "--stop-services"]);
    let mut job = Running::start(cmd);
    job.wait_until("pg_dump's COPY", || copying(&source.cluster, "mastodon"));
    job.signal("TERM");
    let out = job.finish();

    assert_eq!(out.code, Some(143), "{}", out.stderr);
    assert!(
        out.stderr.contains("interrupted by SIGTERM"),
        "{}",
        out.stderr
    );
    assert_apps_running(&compose, &out.stderr);
    assert!(ws.set_ids().is_empty());
    assert!(
        backup_dir_entries(&ws).is_empty(),
        "{:?}",
        backup_dir_entries(&ws)
    );
    assert!(compose.helpers().is_empty(), "helper left:\n{}", out.stderr);
    assert!(ws.temp_leftovers().is_empty(), "{:?}", ws.temp_leftovers());
    // pg_dump went with its helper container.
    assert_eq!(
        sessions_left(&source.cluster, "application_name = 'pg_dump'"),
        "0"
    );
}

#[test]
fn a_second_sigterm_does_not_cut_the_cleanup_short_and_exec_tools_are_ended() {
    let _sweeps = sweeps_shared();
    if !docker_tests_enabled() {
        return;
    }
    let (compose, source) = seeded_compose("sg_twice");
    let ws = Workspace::new();
    // pg_dump by `docker exec`, which the Engine lets run on when its
    // client is gone.
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--docker-transport",
        "exec",
        "--database-url",
        DB_URL,
        "backup",
        "--stop-services",
    ]);
    let mut job = Running::start(cmd);
    job.wait_until("pg_dump's COPY", || copying(&source.cluster, "mastodon"));
    job.signal("TERM");
    job.wait_for_log("cleaning up: start ");
    job.signal("TERM");
    let out = job.finish();

    assert_eq!(out.code, Some(143), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("received SIGTERM again; still cleaning up: start "),
        "{}",
        out.stderr
    );
    assert_apps_running(&compose, &out.stderr);
    assert!(ws.set_ids().is_empty());
    assert!(backup_dir_entries(&ws).is_empty());
    // The exec'd pg_dump was ended, not left to dump into nowhere.
    assert!(
        out.stderr.contains("ended the cancelled tool in container"),
        "{}",
        out.stderr
    );
    assert_eq!(
        sessions_left(&source.cluster, "application_name LIKE 'tusk-exec-%'"),
        "0",
        "{}",
        out.stderr
    );
    let (_, processes) = docker(&[
        "exec",
        &compose.container("postgres"),
        "sh",
        "-c",
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '",
    ]);
    assert!(!processes.contains("pg_dump"), "{processes}");
}

#[test]
fn sighup_mid_backup_exits_129_and_keeps_nothing() {
    let _sweeps = sweeps_shared();
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("sg_hup", 1);
    add_bulk(&source);
    let ws = Workspace::new();
    let mut cmd = ws.tusk();
    cmd.args(["backup", "--database-url"]).arg(source.url());
    let mut job = Running::start(cmd);
    job.wait_until("pg_dump's COPY", || copying(&cluster, &source.name));
    job.signal("HUP");
    let out = job.finish();

    assert_eq!(out.code, Some(129), "{}", out.stderr);
    assert!(
        out.stderr.contains("interrupted by SIGHUP"),
        "{}",
        out.stderr
    );
    assert!(ws.set_ids().is_empty());
    assert!(
        backup_dir_entries(&ws).is_empty(),
        "{:?}",
        backup_dir_entries(&ws)
    );
    assert_eq!(
        sessions_left(
            &cluster,
            &format!(
                "datname = '{}' AND application_name = 'pg_dump'",
                source.name
            )
        ),
        "0"
    );
}

#[test]
fn sigterm_mid_restore_leaves_the_target_as_it_was() {
    let _sweeps = sweeps_shared();
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("sg_rs_src", 1);
    add_bulk(&source);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let target = cluster.mastodon_database("sg_rs_tgt", 1);
    let before = target.fingerprint();
    let temp = ws.temp_dir();

    let mut cmd = ws.tusk();
    cmd.args(["restore", &id, "--force", "-j", "2", "--temp-dir"])
        .arg(&temp)
        .arg("--target-url")
        .arg(target.url());
    let mut job = Running::start(cmd);
    let staging = format!("{}\\_tusk\\_restore\\_%", target.name);
    job.wait_until("pg_restore's COPY", || copying(&cluster, &staging));
    job.signal("TERM");
    let out = job.finish();

    assert_eq!(out.code, Some(143), "{}", out.stderr);
    assert_eq!(target.fingerprint(), before);
    assert!(
        cluster
            .databases_like(&format!("{}_tusk", target.name))
            .is_empty(),
        "{}",
        out.stderr
    );
    assert!(entries(&temp).is_empty(), "{:?}", entries(&temp));
}

#[test]
fn sigterm_mid_verify_drops_the_scratch_database_and_removes_the_container() {
    let _sweeps = sweeps_shared();
    if !docker_tests_enabled() {
        return;
    }
    let (compose, source) = seeded_compose("sg_verify");
    let ws = Workspace::new();
    let mut cmd = compose.tusk(&ws);
    cmd.args(["--json", "--database-url", DB_URL, "backup"]);
    let id = run(cmd).expect_code(0).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pg = compose.container("postgres");

    // In place, pg_restore -j 2 by exec on a copy staged in the container.
    let mut cmd = compose.tusk(&ws);
    cmd.args(["--database-url", DB_URL, "verify", &id, "-j", "2"]);
    let mut job = Running::start(cmd);
    job.wait_until("pg_restore's COPY", || {
        copying(&source.cluster, "tusk\\_verify\\_%")
    });
    job.signal("TERM");
    let out = job.finish();
    assert_eq!(out.code, Some(143), "{}", out.stderr);
    assert!(
        source.cluster.databases_like("tusk_verify_").is_empty(),
        "{}",
        out.stderr
    );
    assert_eq!(
        sessions_left(&source.cluster, "application_name LIKE 'tusk-exec-%'"),
        "0"
    );
    let (_, staged) = docker(&[
        "exec",
        &pg,
        "sh",
        "-c",
        "ls /tmp | grep tusk-restore || true",
    ]);
    assert!(staged.is_empty(), "{staged}");

    // In a throwaway container.
    let mut cmd = compose.tusk(&ws);
    cmd.args([
        "--database-url",
        DB_URL,
        "verify",
        &id,
        "--verify-container",
        "auto",
    ]);
    let mut job = Running::start(cmd);
    job.wait_for_log("test restore of");
    let container = word_starting(&job.stderr(), "tusk-verify-").unwrap();
    job.wait_until("pg_restore's COPY in the throwaway container", || {
        let (_, count) = docker(&[
            "exec",
            &container,
            "psql",
            "-U",
            "postgres",
            "-Atc",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %' \
             AND pid <> pg_backend_pid()",
        ]);
        count != "0" && !count.is_empty()
    });
    job.signal("TERM");
    let out = job.finish();
    assert_eq!(out.code, Some(143), "{}", out.stderr);
    assert!(
        !container_exists(&container),
        "{container} left:\n{}",
        out.stderr
    );
    assert!(source.cluster.databases_like("tusk_verify_").is_empty());
    assert!(ws.temp_leftovers().is_empty(), "{:?}", ws.temp_leftovers());
}

#[test]
fn what_sigkill_leaves_of_a_backup_is_removed_by_the_next_but_not_a_live_runs_helper() {
    let _sweeps = sweeps_exclusive();
    if !docker_tests_enabled() {
        return;
    }
    let (compose, source) = seeded_compose("sg_kill_bk");
    let ws = Workspace::new();
    let mut cmd = compose.tusk(&ws);
    cmd.args(["--database-url", DB_URL, "backup"]);
    let mut job = Running::start(cmd);
    job.wait_until("pg_dump's COPY", || copying(&source.cluster, "mastodon"));
    job.signal("KILL");
    let killed = job.finish();
    assert_eq!(killed.code, None);
    let partial = backup_dir_entries(&ws);
    assert!(
        partial.len() == 1 && partial[0].ends_with(".partial"),
        "{partial:?}"
    );
    let dead_helpers = helper_names(&compose);
    assert_eq!(dead_helpers.len(), 1, "{}", killed.stderr);
    let pipe_dirs = ws.temp_leftovers();
    assert!(
        pipe_dirs.len() == 1 && pipe_dirs[0].starts_with("tusk-pipe-"),
        "{pipe_dirs:?}"
    );

    // The next backup into that directory removes all of it...
    let mut cmd = compose.tusk(&ws);
    cmd.args(["--database-url", DB_URL, "backup"]);
    let mut next = Running::start(cmd);
    for removed in [
        format!("removed {}", ws.backup_dir().join(&partial[0]).display()),
        format!(
            "removed container {}, left by a tusk run that was killed",
            dead_helpers[0]
        ),
        format!("removed {}", ws.temp_dir().join(&pipe_dirs[0]).display()),
    ] {
        next.wait_for_log(&removed);
    }
    assert!(!container_exists(&dead_helpers[0]));
    next.wait_until("the next run's helper", || {
        helper_names(&compose).len() == 1 && ws.temp_leftovers().len() == 1
    });

    // ... and, frozen mid-dump, is a live run whose helper and pipe another
    // run (into another directory, same temporary directory) leaves alone.
    next.signal("STOP");
    let live_helper = helper_names(&compose);
    let live_pipe = ws.temp_leftovers();
    let other = Workspace::new();
    let mut cmd = compose.tusk_with_temp_dir(&other, &ws.temp_dir());
    cmd.args([
        "--database-url",
        "postgresql://postgres@db/postgres",
        "backup",
    ]);
    let beside = run(cmd).expect_code(0);
    assert_eq!(helper_names(&compose), live_helper, "{}", beside.stderr);
    assert_eq!(ws.temp_leftovers(), live_pipe, "{}", beside.stderr);
    next.signal("CONT");
    let next = next.finish();
    assert_eq!(next.code, Some(0), "{}", next.stderr);

    assert_eq!(ws.set_ids().len(), 1);
    assert_eq!(backup_dir_entries(&ws), ws.set_ids());
    assert!(compose.helpers().is_empty());
    assert!(ws.temp_leftovers().is_empty(), "{:?}", ws.temp_leftovers());
}

#[test]
fn what_sigkill_leaves_of_a_restore_is_removed_by_the_next_but_not_a_live_runs_staging() {
    let _sweeps = sweeps_exclusive();
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("sg_kill_rs", 1);
    add_bulk(&source);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let temp = ws.temp_dir();
    let restore_into = |target: &str| {
        let mut cmd = ws.tusk();
        cmd.args(["restore", &id, "-j", "2", "--temp-dir"])
            .arg(&temp)
            .arg("--target-url")
            .arg(cluster.db_url(target));
        cmd
    };
    let killed_target = TestDb {
        cluster: cluster.clone(),
        name: unique_name("sg_kill_rs_a"),
    };
    let staging_of = |target: &str| format!("{}\\_tusk\\_restore\\_%", target.replace('_', "\\_"));

    let mut job = Running::start(restore_into(&killed_target.name));
    job.wait_until("pg_restore's COPY", || {
        copying(&cluster, &staging_of(&killed_target.name))
    });
    job.signal("KILL");
    assert_eq!(job.finish().code, None);
    let left = cluster.databases_like(&format!("{}_tusk_restore_", killed_target.name));
    assert_eq!(left.len(), 1);
    let staged = entries(&temp);
    assert!(
        staged.len() == 1 && staged[0].starts_with("tusk-restore-"),
        "{staged:?}"
    );
    // Only tusk's exact names count: this one is not a staging database.
    let decoy = format!("{}_tusk_restore_notmine0", killed_target.name);
    cluster.sql("postgres", &format!("CREATE DATABASE \"{decoy}\""));

    // The same restore again removes both...
    let mut next = Running::start(restore_into(&killed_target.name));
    next.wait_for_log(&format!(
        "dropped database {}, left by a tusk run that was killed",
        left[0]
    ));
    next.wait_for_log(&format!("removed {}", temp.join(&staged[0]).display()));
    assert!(!cluster.database_exists(&left[0]));
    next.wait_until("the next run's COPY", || {
        copying(&cluster, &staging_of(&killed_target.name)) && entries(&temp).len() == 1
    });

    // ... and, frozen mid-restore, is a live run whose staging database and
    // staged archive another restore leaves alone.
    next.signal("STOP");
    let live_staging: Vec<String> = cluster
        .databases_like(&format!("{}_tusk_restore_", killed_target.name))
        .into_iter()
        .filter(|name| *name != decoy)
        .collect();
    assert_eq!(live_staging.len(), 1, "{live_staging:?}");
    let live_staged = entries(&temp);
    assert_eq!(live_staged.len(), 1);
    let beside = TestDb {
        cluster: cluster.clone(),
        name: unique_name("sg_kill_rs_b"),
    };
    let out = run(restore_into(&beside.name)).expect_code(0);
    assert!(cluster.database_exists(&live_staging[0]), "{}", out.stderr);
    assert_eq!(entries(&temp), live_staged, "{}", out.stderr);
    next.signal("CONT");
    let next = next.finish();
    assert_eq!(next.code, Some(0), "{}", next.stderr);

    assert!(cluster.database_exists(&decoy));
    cluster.sql("postgres", &format!("DROP DATABASE \"{decoy}\""));
    let expected = source.fingerprint();
    for target in [&killed_target, &beside] {
        assert!(
            cluster
                .databases_like(&format!("{}_tusk", target.name))
                .is_empty()
        );
        assert_eq!(target.fingerprint(), expected);
    }
    assert!(entries(&temp).is_empty(), "{:?}", entries(&temp));
}

#[test]
fn what_sigkill_leaves_of_a_verify_is_removed_by_the_next() {
    let _sweeps = sweeps_exclusive();
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("sg_kill_vf", 1);
    add_bulk(&source);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let temp = ws.temp_dir();
    let verify = || {
        let mut cmd = ws.tusk();
        cmd.args(["verify", &id, "-j", "2", "--temp-dir"])
            .arg(&temp)
            .arg("--verify-url")
            .arg(cluster.db_url("postgres"));
        cmd
    };
    let mut job = Running::start(verify());
    job.wait_for_log("test restore of");
    let scratch = word_starting(&job.stderr(), "tusk_verify_").unwrap();
    job.wait_until("pg_restore's COPY", || copying(&cluster, &scratch));
    job.signal("KILL");
    assert_eq!(job.finish().code, None);
    assert!(cluster.database_exists(&scratch));
    assert_eq!(entries(&temp).len(), 1, "{:?}", entries(&temp));

    let out = run(verify()).expect_code(0);
    assert!(
        out.stderr.contains(&format!(
            "dropped database {scratch}, left by a tusk run that was killed"
        )),
        "{}",
        out.stderr
    );
    assert!(!cluster.database_exists(&scratch));
    assert!(entries(&temp).is_empty(), "{:?}", entries(&temp));
}

#[test]
fn what_sigkill_leaves_of_a_docker_verify_is_removed_by_the_next() {
    let _sweeps = sweeps_exclusive();
    if !docker_tests_enabled() {
        return;
    }
    let (compose, source) = seeded_compose("sg_kill_vc");
    let ws = Workspace::new();
    let mut cmd = compose.tusk(&ws);
    cmd.args(["--json", "--database-url", DB_URL, "backup"]);
    let id = run(cmd).expect_code(0).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pg = compose.container("postgres");
    let staged_in_container = || {
        docker(&[
            "exec",
            &pg,
            "sh",
            "-c",
            "ls /tmp | grep tusk-restore || true",
        ])
        .1
    };

    // In place, -j 2: a scratch database and a copy staged in the container.
    let in_place = || {
        let mut cmd = compose.tusk(&ws);
        cmd.args(["--database-url", DB_URL, "verify", &id, "-j", "2"]);
        cmd
    };
    let mut job = Running::start(in_place());
    job.wait_for_log("test restore of");
    let scratch = word_starting(&job.stderr(), "tusk_verify_").unwrap();
    job.wait_until("pg_restore's COPY", || copying(&source.cluster, &scratch));
    job.signal("KILL");
    assert_eq!(job.finish().code, None);
    assert!(source.cluster.database_exists(&scratch));
    let staged = staged_in_container();
    assert!(staged.starts_with("tusk-restore-"), "{staged:?}");

    let out = run(in_place()).expect_code(0);
    for removed in [
        format!("dropped database {scratch}, left by a tusk run that was killed"),
        format!(
            "removed /tmp/{staged} (tools inside container {pg}), left by a tusk run that was killed"
        ),
    ] {
        assert!(out.stderr.contains(&removed), "{removed}:\n{}", out.stderr);
    }
    assert!(!source.cluster.database_exists(&scratch));
    assert_eq!(staged_in_container(), "");

    // In a throwaway container.
    let throwaway = || {
        let mut cmd = compose.tusk(&ws);
        cmd.args([
            "--database-url",
            DB_URL,
            "verify",
            &id,
            "--verify-container",
            "auto",
        ]);
        cmd
    };
    let mut job = Running::start(throwaway());
    job.wait_for_log("test restore of");
    let container = word_starting(&job.stderr(), "tusk-verify-").unwrap();
    job.signal("KILL");
    assert_eq!(job.finish().code, None);
    assert!(container_exists(&container));

    let out = run(throwaway()).expect_code(0);
    assert!(
        out.stderr.contains(&format!(
            "removed container {container}, left by a tusk run that was killed"
        )),
        "{}",
        out.stderr
    );
    assert!(!container_exists(&container));
}
