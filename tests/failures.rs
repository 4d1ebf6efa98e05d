//! Bad input and failures mid-run: clear errors, documented exit codes,
//! and nothing lost or marked good.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_dump_killed_mid_stream_exits_1_and_leaves_the_previous_set_intact() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("kill_src", 1);
    let ws = Workspace::new();
    let previous = ws.backup(&source)["id"].as_str().unwrap().to_string();

    // Enough data that the dump takes a few seconds.
    source.sql(
        "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 12) AS body \
         FROM generate_series(1, 600000) g",
    );
    let mut cmd = ws.tusk();
    cmd.args(["backup", "--database-url"])
        .arg(source.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();

    // Terminate the backend serving pg_dump's COPY as soon as it shows up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let terminated = loop {
        let killed = cluster.sql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{}' AND query LIKE 'COPY %' AND pid <> pg_backend_pid()",
                source.name
            ),
        );
        if killed != "0" {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = child.wait_with_output().unwrap();
    assert!(terminated, "never saw pg_dump's COPY");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pg_dump"), "{stderr}");

    assert_eq!(ws.set_ids(), vec![previous.clone()], "no new complete set");
    let partials: Vec<_> = std::fs::read_dir(ws.backup_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partials.is_empty(), "{partials:?}");
    let mut cmd = ws.tusk();
    cmd.args(["verify", "--checksums-only", &previous]);
    run(cmd).expect_code(0);
}

#[test]
fn malformed_yaml_exits_2_naming_line_and_column() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join("tusk.yaml"),
        "instance: a\ncompression: zstd\nbackup_dri: /tmp\n",
    )
    .unwrap();
    let mut cmd = tusk(ws.path());
    cmd.args(["backups", "list"]);
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("backup_dri"), "{}", out.stderr);
    assert!(out.stderr.contains("line 3 column 1"), "{}", out.stderr);

    std::fs::write(ws.path().join("bad.yaml"), "instance: [unclosed\n").unwrap();
    let mut cmd = tusk(ws.path());
    cmd.args(["backups", "list", "--config", "bad.yaml"]);
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("bad.yaml"), "{}", out.stderr);
    assert!(out.stderr.contains("line 1 column 11"), "{}", out.stderr);

    let mut cmd = tusk(ws.path());
    cmd.env("TUSK_CONFIG", "missing.yaml")
        .args(["backups", "list"]);
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("missing.yaml"), "{}", out.stderr);
}

#[test]
fn config_file_env_file_and_flags_follow_one_precedence() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("prec_src", 1);
    let ws = Workspace::new();
    // .env.production names the database; the YAML file the backup dir and instance.
    let url = source.url();
    let (userinfo, rest) = url.split_once("://").unwrap().1.split_once('@').unwrap();
    let (user, password) = userinfo.split_once(':').unwrap();
    let (hostport, _) = rest.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    std::fs::write(
        ws.path().join(".env.production"),
        format!(
            "LOCAL_DOMAIN=env.example\nDB_HOST={host}\nDB_PORT={port}\nDB_USER={user}\n\
             DB_PASS={password}\nDB_NAME={}\n",
            source.name
        ),
    )
    .unwrap();
    std::fs::write(
        ws.path().join("tusk.yaml"),
        format!(
            "instance: yaml-name\nbackup_dir: {}\n",
            ws.path().join("from-yaml").display()
        ),
    )
    .unwrap();

    let mut cmd = tusk(ws.path());
    cmd.args(["--json", "backup"]);
    let report = run(cmd).expect_code(0).json();
    assert!(report["id"].as_str().unwrap().starts_with("yaml-name-"));
    assert!(report["path"].as_str().unwrap().contains("from-yaml"));

    // Environment beats the file, a flag beats the environment.
    let mut cmd = tusk(ws.path());
    cmd.env("TUSK_INSTANCE", "env-name")
        .args(["--json", "backup"]);
    let report = run(cmd).expect_code(0).json();
    assert!(report["id"].as_str().unwrap().starts_with("env-name-"));
    let mut cmd = tusk(ws.path());
    cmd.env("TUSK_INSTANCE", "env-name")
        .args(["backup", "--json", "--instance", "flag-name"]);
    let report = run(cmd).expect_code(0).json();
    assert!(report["id"].as_str().unwrap().starts_with("flag-name-"));
}

#[test]
fn another_run_holding_the_lock_exits_4() {
    let source = Cluster::main().mastodon_database("lock_src", 1);
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.backup_dir()).unwrap();
    let mut holder = Command::new("flock")
        .arg(ws.backup_dir().join(".tusk.lock"))
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut cmd = ws.tusk();
    cmd.args(["backup", "--database-url"]).arg(source.url());
    let out = run(cmd);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = out.expect_code(4);
    assert!(
        out.stderr.contains("is held by another process"),
        "{}",
        out.stderr
    );
    assert!(ws.set_ids().is_empty());
}

#[test]
fn wrong_credentials_and_missing_settings_fail_clearly() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("cred_src", 1);
    let ws = Workspace::new();
    let wrong = cluster.url_as("postgres", "not-the-password", &source.name);
    let mut cmd = ws.tusk();
    cmd.args(["backup", "--database-url", &wrong]);
    let out = run(cmd).expect_code(1);
    assert!(
        out.stderr.contains("password authentication failed"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("not-the-password"), "{}", out.stderr);
    assert!(ws.set_ids().is_empty());

    let mut cmd = ws.tusk();
    cmd.arg("backup");
    let out = run(cmd).expect_code(2);
    assert!(
        out.stderr.contains("no database configured"),
        "{}",
        out.stderr
    );

    let mut cmd = ws.tusk();
    cmd.args(["restore", "no-such-set", "--target-url"])
        .arg(source.url());
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("no backup set"), "{}", out.stderr);
}

#[test]
fn the_password_never_reaches_argv_logs_json_or_the_manifest() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("pw_src", 1);
    let password = cluster.password();
    let ws = Workspace::new();

    // Shims that log their argv, then run the real tool.
    let shims = ws.path().join("shims");
    std::fs::create_dir(&shims).unwrap();
    let argv_log = ws.path().join("argv.log");
    for tool in ["pg_dump", "pg_dumpall", "pg_restore", "psql"] {
        let shim = shims.join(tool);
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$0 $*\" >> '{}'\nexec '{}' \"$@\"\n",
                argv_log.display(),
                pg_bin().join(tool).display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let mut all_output = String::new();
    let mut cmd = ws.tusk();
    cmd.args(["-v", "--json", "backup"])
        .env("TUSK_PG_BIN_DIR", &shims)
        .env("TUSK_DATABASE_URL", source.url());
    let backup = run(cmd).expect_code(0);
    let id = backup.json()["id"].as_str().unwrap().to_string();
    all_output.push_str(&backup.stdout);
    all_output.push_str(&backup.stderr);

    let mut cmd = ws.tusk();
    cmd.args(["-v", "--json", "verify", &id])
        .env("TUSK_PG_BIN_DIR", &shims)
        .env("TUSK_DATABASE_URL", source.url());
    let verify = run(cmd).expect_code(0);
    all_output.push_str(&verify.stdout);
    all_output.push_str(&verify.stderr);

    let target = TestDb {
        cluster: Cluster::second(),
        name: unique_name("pw_target"),
    };
    let mut cmd = ws.tusk();
    cmd.args(["-v", "--json", "restore", &id, "-j", "2"])
        .env("TUSK_PG_BIN_DIR", &shims)
        .env("TUSK_TARGET_URL", target.url());
    let restore = run(cmd).expect_code(0);
    all_output.push_str(&restore.stdout);
    all_output.push_str(&restore.stderr);

    let argv = std::fs::read_to_string(&argv_log).unwrap();
    for tool in ["pg_dump ", "pg_dumpall ", "pg_restore ", "psql "] {
        assert!(argv.contains(tool), "{tool} never ran:\n{argv}");
    }
    assert!(!argv.contains(&password), "password in argv:\n{argv}");
    assert!(!all_output.contains(&password), "password in output");
    let set_dir = ws.backup_dir().join(&id);
    for file in ["manifest.json", "verification.json"] {
        let text = std::fs::read_to_string(set_dir.join(file)).unwrap();
        assert!(!text.contains(&password), "password in {file}");
    }
}

#[test]
fn a_non_superuser_backup_notes_missing_role_passwords() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("ns_src", 1);
    let role = unique_name("ns_reader");
    cluster.sql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'readerpw'; GRANT pg_read_all_data TO {role}"),
    );
    let ws = Workspace::new();
    let mut cmd = ws.tusk();
    cmd.args(["--json", "backup", "--database-url"])
        .arg(cluster.url_as(&role, "readerpw", &source.name));
    let out = run(cmd).expect_code(0);
    let report = out.json();
    assert!(out.stderr.contains("no-role-passwords"), "{}", out.stderr);
    let manifest = ws.manifest(report["id"].as_str().unwrap());
    assert_eq!(manifest["source"]["superuser"], false);
    assert_eq!(manifest["source"]["role_passwords"], false);
    assert!(
        manifest["notes"][0]
            .as_str()
            .unwrap()
            .contains("without passwords")
    );
}

#[test]
fn artefacts_are_private_and_the_json_report_is_complete() {
    let source = Cluster::main().mastodon_database("perm_src", 1);
    let ws = Workspace::new();
    let report = ws.backup(&source);
    for key in ["id", "path", "bytes", "artefacts", "durations"] {
        assert!(!report[key].is_null(), "{key} missing from {report}");
    }
    let dir = ws.backup_dir().join(report["id"].as_str().unwrap());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let total: u64 = report["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let name = a["name"].as_str().unwrap();
            let size = std::fs::metadata(dir.join(name)).unwrap().len();
            assert_eq!(a["bytes"].as_u64().unwrap(), size, "{name}");
            size
        })
        .sum();
    assert_eq!(report["bytes"].as_u64().unwrap(), total);
}

#[test]
fn a_pg_dump_older_than_the_server_is_refused_before_anything_is_written() {
    let source = Cluster::main().mastodon_database("old_src", 1);
    let ws = Workspace::new();
    // A pg_dump that claims to be 9.6 and must never be asked to dump.
    let shims = ws.path().join("old-tools");
    std::fs::create_dir(&shims).unwrap();
    let marker = ws.path().join("dumped");
    std::fs::write(
        shims.join("pg_dump"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 9.6.24'; exit 0; fi\ntouch '{}'\nexit 1\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        shims.join("pg_dump"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let mut cmd = ws.tusk();
    cmd.args(["backup", "--database-url"])
        .arg(source.url())
        .env("TUSK_PG_BIN_DIR", &shims);
    let out = run(cmd).expect_code(1);
    assert!(
        out.stderr.contains("9.6.24") && out.stderr.contains("cannot dump"),
        "{}",
        out.stderr
    );
    assert!(!marker.exists(), "pg_dump was asked to dump");
    assert!(ws.set_ids().is_empty());
}

#[test]
fn a_failed_parallel_restore_leaves_the_target_and_temp_dir_as_they_were() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("rf_src", 1);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let target = cluster.empty_database("rf_target");
    let temp = ws.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();

    // pg_restore stops at its first error: the role does not exist.
    let mut cmd = ws.tusk();
    cmd.args([
        "restore",
        &id,
        "-j",
        "2",
        "--no-globals",
        "--no-owner",
        "--role",
        "no_such_role",
    ])
    .arg("--temp-dir")
    .arg(&temp)
    .arg("--target-url")
    .arg(target.url());
    let out = run(cmd).expect_code(1);
    assert!(out.stderr.contains("no_such_role"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_dir(&temp).unwrap().count(),
        0,
        "staged copy left behind"
    );
    assert_eq!(
        target.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0"
    );
    assert!(
        cluster
            .databases_like(&format!("{}_tusk", target.name))
            .is_empty()
    );
}
