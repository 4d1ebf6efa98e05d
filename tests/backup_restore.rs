//! Round trips: a backup restored on the same and on a fresh cluster holds
//! exactly the rows it was taken from.

mod common;

use common::*;

/// Gives the fixture's tables to a role of their own, so restoring the
/// roles (globals) and the ownership can be checked.
fn hand_tables_to(db: &TestDb, role: &str, password: &str) {
    db.cluster.sql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
    );
    db.sql(&format!(
        "DO $$ DECLARE t record; BEGIN \
           FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP \
             EXECUTE format('ALTER TABLE public.%I OWNER TO {role}', t.tablename); \
           END LOOP; END $$; \
         ALTER DATABASE \"{}\" OWNER TO {role};",
        db.name
    ));
}

#[test]
fn backup_then_restore_on_a_fresh_cluster_keeps_every_row_role_and_owner() {
    let source = Cluster::main().mastodon_database("rt_src", 1);
    let role = unique_name("rt_owner");
    hand_tables_to(&source, &role, "ownerpw");
    let before = source.fingerprint();
    let ws = Workspace::new();

    let report = ws.backup(&source);
    let id = report["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("test-"), "{id}");
    assert_eq!(ws.set_ids(), vec![id.clone()]);
    let artefacts = report["artefacts"].as_array().unwrap();
    assert_eq!(artefacts.len(), 2);
    for artefact in artefacts {
        assert_eq!(artefact["sha256"].as_str().unwrap().len(), 64);
    }
    let manifest = ws.manifest(&id);
    assert_eq!(
        manifest["database"]["tables"]["accounts"].as_i64().unwrap(),
        before["public.accounts"].0
    );
    assert_eq!(manifest["database"]["schema_migrations"]["count"], 472);
    assert_eq!(
        manifest["database"]["schema_migrations"]["max"],
        "20241007071624"
    );
    assert_eq!(manifest["database"]["timestamp_id"], true);

    // The second cluster has never seen the role.
    let fresh = Cluster::second();
    let target_name = unique_name("rt_fresh");
    let mut restore = ws.tusk();
    restore
        .args(["--json", "restore", &id, "--target-url"])
        .arg(fresh.db_url(&target_name));
    let out = run(restore).expect_code(0).json();
    assert_eq!(out["database"], target_name.as_str());
    let restored = TestDb {
        cluster: fresh.clone(),
        name: target_name,
    };
    assert_eq!(restored.fingerprint(), before);
    assert_eq!(
        restored.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'statuses'"),
        role
    );
    assert_eq!(
        fresh.sql(
            "postgres",
            &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")
        ),
        "t"
    );
    // Nothing of the staging step is left behind.
    assert!(
        fresh
            .databases_like(&format!("{}_tusk", restored.name))
            .is_empty()
    );
}

#[test]
fn restore_where_the_roles_exist_in_parallel_and_with_no_owner() {
    let source = Cluster::main().mastodon_database("rx_src", 1);
    let role = unique_name("rx_owner");
    hand_tables_to(&source, &role, "pw");
    let before = source.fingerprint();
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();

    // Same cluster: every role already exists, including the bootstrap superuser.
    let cluster = Cluster::main();
    let parallel = TestDb {
        cluster: cluster.clone(),
        name: unique_name("rx_parallel"),
    };
    let temp = ws.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    let mut cmd = ws.tusk();
    cmd.args(["-v", "restore", &id, "-j", "2", "--temp-dir"])
        .arg(&temp)
        .arg("--target-url")
        .arg(parallel.url());
    let out = run(cmd).expect_code(0);
    assert_eq!(parallel.fingerprint(), before);
    // The staged copy got the data offsets pg_dump could not write to a pipe.
    assert!(
        out.stderr.contains(&format!(
            "recorded the data offsets of {} archive entries",
            before.len()
        )),
        "{}",
        out.stderr
    );
    // The seekable copy for parallel restore is gone.
    assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0);
    // Every table with rows has planner statistics, most of them gathered
    // while pg_restore was still at work.
    assert_eq!(
        parallel.sql(
            "SELECT string_agg(relname, ',') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.reltuples <> 0 \
             AND NOT EXISTS (SELECT 1 FROM pg_stats s WHERE s.schemaname = 'public' AND s.tablename = c.relname)"
        ),
        "",
        "tables without statistics"
    );
    let early: usize = out
        .stderr
        .split("analyzed ")
        .nth(1)
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ANALYZE summary in:\n{}", out.stderr));
    assert!(
        early >= 5,
        "only {early} tables analyzed during the restore"
    );

    // Mastodon's documented cross-server form.
    let no_owner = TestDb {
        cluster: cluster.clone(),
        name: unique_name("rx_noowner"),
    };
    let mut cmd = ws.tusk();
    cmd.args([
        "restore",
        &id,
        "--no-globals",
        "--no-owner",
        "--role",
        "postgres",
        "--target-url",
    ])
    .arg(no_owner.url());
    run(cmd).expect_code(0);
    assert_eq!(no_owner.fingerprint(), before);
    assert_eq!(
        no_owner.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'statuses'"),
        "postgres"
    );
}

#[test]
fn a_non_empty_target_is_refused_without_force_and_replaced_with_it() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("ne_src", 1);
    let before = source.fingerprint();
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();

    let target = cluster.empty_database("ne_target");
    target.sql("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1), (2), (3)");
    let target_before = target.fingerprint();

    let mut cmd = ws.tusk();
    cmd.args(["restore", &id, "--target-url"]).arg(target.url());
    let refused = run(cmd).expect_code(2);
    assert!(refused.stderr.contains("not empty"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(target.fingerprint(), target_before, "target unchanged");

    // --yes answers prompts but is not --force.
    let mut cmd = ws.tusk();
    cmd.args(["restore", &id, "--yes", "--target-url"])
        .arg(target.url());
    run(cmd).expect_code(2);
    assert_eq!(target.fingerprint(), target_before, "target unchanged");

    let mut cmd = ws.tusk();
    cmd.args(["restore", &id, "--force", "--target-url"])
        .arg(target.url());
    run(cmd).expect_code(0);
    assert_eq!(target.fingerprint(), before);
    assert!(
        cluster
            .databases_like(&format!("{}_tusk", target.name))
            .is_empty()
    );
}

#[test]
fn backups_list_shows_sets_oldest_first() {
    let source = Cluster::main().mastodon_database("ls_src", 1);
    let ws = Workspace::new();
    let first = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let second = ws.backup(&source)["id"].as_str().unwrap().to_string();
    assert_ne!(first, second);

    let mut cmd = ws.tusk();
    cmd.args(["--json", "backups", "list"]);
    let listed = run(cmd).expect_code(0).json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![first.as_str(), second.as_str()]);
    assert_eq!(listed[0]["schema_version"], "20241007071624");
    assert!(listed[0]["verification"].is_null());

    let mut cmd = ws.tusk();
    cmd.args(["backups", "list"]);
    let text = run(cmd).expect_code(0).stdout;
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains(&first) && text.contains("never"), "{text}");
}

#[test]
fn gzip_and_uncompressed_sets_restore_too() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("cz_src", 1);
    let before = source.fingerprint();
    for compression in ["gzip", "none"] {
        let ws = Workspace::new();
        let mut cmd = ws.tusk();
        cmd.args([
            "--json",
            "--compression",
            compression,
            "backup",
            "--database-url",
        ])
        .arg(source.url());
        let report = run(cmd).expect_code(0).json();
        let id = report["id"].as_str().unwrap();
        let names: Vec<&str> = report["artefacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        let expected_suffix = if compression == "gzip" {
            ".gz"
        } else {
            ".dump"
        };
        assert!(
            names.iter().any(|n| n.ends_with(expected_suffix)),
            "{names:?}"
        );

        let target = TestDb {
            cluster: cluster.clone(),
            name: unique_name("cz_target"),
        };
        let mut cmd = ws.tusk();
        cmd.args(["restore", id, "--target-url"]).arg(target.url());
        run(cmd).expect_code(0);
        assert_eq!(target.fingerprint(), before, "{compression}");
    }
}

#[test]
fn on_a_terminal_force_asks_first_and_no_keeps_the_target() {
    let cluster = Cluster::main();
    let source = cluster.mastodon_database("tty_src", 1);
    let ws = Workspace::new();
    let id = ws.backup(&source)["id"].as_str().unwrap().to_string();
    let target = cluster.empty_database("tty_target");
    target.sql("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)");
    let before = target.fingerprint();

    // `script` gives tusk a pseudo-terminal, as an admin's shell would.
    let tusk_bin = assert_cmd::cargo::cargo_bin("tusk");
    let command_line = format!(
        "'{}' --backup-dir '{}' restore {id} --force --target-url '{}'",
        tusk_bin.display(),
        ws.backup_dir().display(),
        target.url()
    );
    let (code, screen) = run_on_terminal(&command_line, b"n\n");
    assert!(
        screen.contains("Replace database"),
        "no question asked:\n{screen}"
    );
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("not changed"), "{screen}");
    assert_eq!(target.fingerprint(), before);
}
