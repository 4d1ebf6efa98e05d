//! The database's own properties (settings, role settings, comment, grants,
//! connection limit) come back with a restore, on the same server under
//! another name, in place of an existing database, and on a fresh server;
//! verify applies and compares them.
//!
//! Restores on the main cluster, where the roles exist, pass --no-globals:
//! two restores altering the same roles at once can fail with "tuple
//! concurrently updated", and these tests run in parallel.

mod common;

use std::process::Command;

use common::*;

/// Roles of one source database: one that may connect, one that may not,
/// and one with a setting of its own in the database.
struct Roles {
    reader: String,
    outsider: String,
    tuned: String,
}

const PASSWORD: &str = "proppw";
const COMMENT: &str = "Mastodon's database; it's \"ours\"";

/// A small database carrying every kind of database-level property.
fn database_with_properties(cluster: &Cluster, prefix: &str) -> (TestDb, Roles) {
    let db = cluster.empty_database(prefix);
    db.sql(
        "CREATE SCHEMA extra; CREATE TABLE accounts (id bigint PRIMARY KEY, name text); \
         INSERT INTO accounts SELECT g, 'user' || g FROM generate_series(1, 50) g",
    );
    let roles = Roles {
        reader: unique_name("dbp_reader"),
        outsider: unique_name("dbp_outsider"),
        tuned: unique_name("dbp_tuned"),
    };
    for role in [&roles.reader, &roles.outsider, &roles.tuned] {
        cluster.sql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"),
        );
    }
    db.sql(&format!("GRANT SELECT ON accounts TO {}", roles.reader));
    let name = &db.name;
    cluster.sql(
        "postgres",
        &format!(
            "ALTER DATABASE \"{name}\" SET search_path = \"$user\", public, extra; \
             ALTER DATABASE \"{name}\" SET timezone = 'Pacific/Auckland'; \
             ALTER DATABASE \"{name}\" SET statement_timeout = '42s'; \
             ALTER ROLE {tuned} IN DATABASE \"{name}\" SET work_mem = '12MB'; \
             COMMENT ON DATABASE \"{name}\" IS '{comment}'; \
             REVOKE CONNECT ON DATABASE \"{name}\" FROM PUBLIC; \
             GRANT CONNECT ON DATABASE \"{name}\" TO {reader}, {tuned}; \
             ALTER DATABASE \"{name}\" CONNECTION LIMIT 25",
            tuned = roles.tuned,
            reader = roles.reader,
            comment = COMMENT.replace('\'', "''"),
        ),
    );
    (db, roles)
}

/// The properties of `database` as plain lines, comparable across servers
/// and names (the owner's own grant is left out: owners differ).
fn properties_of(cluster: &Cluster, database: &str) -> Vec<String> {
    let sql = format!(
        "WITH d AS (SELECT * FROM pg_database WHERE datname = '{database}') \
         SELECT 'setting ' || coalesce(r.rolname || ' ', '') || s.setting \
           FROM d, pg_db_role_setting rs CROSS JOIN LATERAL unnest(rs.setconfig) s(setting) \
           LEFT JOIN pg_roles r ON r.oid = rs.setrole \
          WHERE rs.setdatabase = d.oid \
         UNION ALL SELECT 'comment ' || shobj_description(d.oid, 'pg_database') FROM d \
         UNION ALL SELECT 'connection limit ' || d.datconnlimit FROM d \
         UNION ALL SELECT 'grant ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' \
                                           ELSE pg_get_userbyid(a.grantee) END \
                          || ' ' || a.privilege_type \
           FROM d, aclexplode(d.datacl) a WHERE a.grantee <> d.datdba \
         ORDER BY 1"
    );
    cluster
        .sql("postgres", &sql)
        .lines()
        .map(str::to_string)
        .collect()
}

fn expected_properties(roles: &Roles) -> Vec<String> {
    let mut lines = vec![
        "comment Mastodon's database; it's \"ours\"".to_string(),
        "connection limit 25".to_string(),
        "grant PUBLIC TEMPORARY".to_string(),
        format!("grant {} CONNECT", roles.reader),
        format!("grant {} CONNECT", roles.tuned),
        "setting TimeZone=Pacific/Auckland".to_string(),
        "setting search_path=\"$user\", public, extra".to_string(),
        "setting statement_timeout=42s".to_string(),
        format!("setting {} work_mem=12MB", roles.tuned),
    ];
    lines.sort();
    lines
}

/// Runs one query as `user`; the outcome and psql's stderr.
fn query_as(cluster: &Cluster, user: &str, database: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(pg_bin().join("psql"))
        .args(["-X", "-A", "-t", "-q", "-d"])
        .arg(cluster.url_as(user, PASSWORD, database))
        .args(["-c", sql])
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every property is on `database`, and the roles see them take effect.
fn assert_restored_properties(cluster: &Cluster, database: &str, roles: &Roles) {
    assert_eq!(
        properties_of(cluster, database),
        expected_properties(roles),
        "{database}"
    );
    let (ok, _, stderr) = query_as(cluster, &roles.outsider, database, "SELECT 1");
    assert!(!ok, "{} connected to {database}", roles.outsider);
    assert!(stderr.contains("permission denied"), "{stderr}");
    let (ok, shown, stderr) = query_as(
        cluster,
        &roles.reader,
        database,
        "SELECT current_setting('search_path') || '|' || current_setting('TimeZone') \
                || '|' || current_setting('statement_timeout') \
                || '|' || (SELECT count(*) FROM accounts)",
    );
    assert!(ok, "{stderr}");
    assert_eq!(shown, "\"$user\", public, extra|Pacific/Auckland|42s|50");
    let (ok, shown, stderr) = query_as(cluster, &roles.tuned, database, "SHOW work_mem");
    assert!(ok, "{stderr}");
    assert_eq!(shown, "12MB");
}

fn backup_id(ws: &Workspace, db: &TestDb) -> String {
    ws.backup(db)["id"].as_str().unwrap().to_string()
}

#[test]
fn the_manifest_records_the_database_properties() {
    let cluster = Cluster::main();
    let (source, roles) = database_with_properties(&cluster, "dbp_manifest");
    let ws = Workspace::new();
    let id = backup_id(&ws, &source);
    let properties = &ws.manifest(&id)["database"]["properties"];
    assert_eq!(
        properties["settings"],
        serde_json::json!({
            "TimeZone": "Pacific/Auckland",
            "search_path": "\"$user\", public, extra",
            "statement_timeout": "42s",
        })
    );
    assert_eq!(
        properties["role_settings"][&roles.tuned],
        serde_json::json!({"work_mem": "12MB"})
    );
    assert_eq!(properties["comment"], COMMENT);
    assert_eq!(properties["connection_limit"], 25);
    assert_eq!(properties["is_template"], false);
    assert_eq!(
        properties["privileges"],
        serde_json::json!({
            "(owner)": "CTc",
            "PUBLIC": "T",
            (roles.reader.as_str()): "c",
            (roles.tuned.as_str()): "c",
        })
    );
}

#[test]
fn a_restore_on_the_same_server_brings_back_every_property() {
    let cluster = Cluster::main();
    let (source, roles) = database_with_properties(&cluster, "dbp_same");
    let ws = Workspace::new();
    let id = backup_id(&ws, &source);

    // Under another name.
    let copy = TestDb {
        cluster: cluster.clone(),
        name: unique_name("dbp_copy"),
    };
    let mut cmd = ws.tusk();
    cmd.args(["--json", "restore", &id, "--no-globals", "--target-url"])
        .arg(copy.url());
    let report = run(cmd).expect_code(0).json();
    let applied: Vec<&str> = report["database_properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for property in [
        "setting search_path",
        "setting TimeZone",
        "setting statement_timeout",
        "comment",
        "grants",
        "connection limit",
    ] {
        assert!(applied.contains(&property), "{property} in {applied:?}");
    }
    assert_restored_properties(&cluster, &copy.name, &roles);
    assert!(
        cluster
            .databases_like(&format!("{}_tusk_", copy.name))
            .is_empty()
    );

    // In place of an existing database with properties of its own.
    let existing = cluster.empty_database("dbp_existing");
    existing.sql("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)");
    cluster.sql(
        "postgres",
        &format!(
            "ALTER DATABASE \"{0}\" SET lock_timeout = '1s'; \
             ALTER DATABASE \"{0}\" SET timezone = 'UTC'; \
             COMMENT ON DATABASE \"{0}\" IS 'old'",
            existing.name
        ),
    );
    let mut cmd = ws.tusk();
    cmd.args(["restore", &id, "--no-globals", "--force", "--target-url"])
        .arg(existing.url());
    run(cmd).expect_code(0);
    assert_restored_properties(&cluster, &existing.name, &roles);
    assert!(
        cluster
            .databases_like(&format!("{}_tusk_", existing.name))
            .is_empty()
    );
}

#[test]
fn a_restore_on_a_fresh_server_brings_back_every_property() {
    let (source, roles) = database_with_properties(&Cluster::main(), "dbp_fresh");
    let ws = Workspace::new();
    let id = backup_id(&ws, &source);
    let fresh = Cluster::second();

    // Without the roles, the grants and role settings cannot be applied:
    // refused before anything is created, naming the roles.
    let refused_name = unique_name("dbp_refused");
    let mut cmd = ws.tusk();
    cmd.args(["restore", &id, "--no-globals", "--target-url"])
        .arg(fresh.db_url(&refused_name));
    let refused = run(cmd).expect_code(2);
    assert!(refused.stderr.contains(&roles.tuned), "{}", refused.stderr);
    assert!(refused.stderr.contains(&roles.reader), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("was not changed"),
        "{}",
        refused.stderr
    );
    assert!(fresh.databases_like(&refused_name).is_empty());

    // With the roles (globals), everything comes back.
    let restored = TestDb {
        cluster: fresh.clone(),
        name: unique_name("dbp_restored"),
    };
    let mut cmd = ws.tusk();
    cmd.args(["restore", &id, "--target-url"])
        .arg(restored.url());
    run(cmd).expect_code(0);
    assert_restored_properties(&fresh, &restored.name, &roles);
}

#[test]
fn no_acl_leaves_the_database_grants_out() {
    let cluster = Cluster::main();
    let (source, roles) = database_with_properties(&cluster, "dbp_noacl");
    let ws = Workspace::new();
    let id = backup_id(&ws, &source);
    let restored = TestDb {
        cluster: cluster.clone(),
        name: unique_name("dbp_noacl_copy"),
    };
    let mut cmd = ws.tusk();
    cmd.args([
        "--json",
        "restore",
        &id,
        "--no-globals",
        "--no-acl",
        "--target-url",
    ])
    .arg(restored.url());
    let report = run(cmd).expect_code(0).json();
    assert!(
        !report["database_properties"]
            .as_array()
            .unwrap()
            .contains(&"grants".into())
    );
    let properties = properties_of(&cluster, &restored.name);
    assert!(
        properties.iter().all(|p| !p.starts_with("grant ")),
        "{properties:?}"
    );
    assert!(properties.contains(&"connection limit 25".to_string()));
    // Default privileges: everyone may connect again.
    let (ok, _, stderr) = query_as(&cluster, &roles.outsider, &restored.name, "SELECT 1");
    assert!(ok, "{stderr}");
}

#[test]
fn verify_applies_and_compares_the_properties() {
    let cluster = Cluster::main();
    let (source, roles) = database_with_properties(&cluster, "dbp_verify");
    let ws = Workspace::new();
    let id = backup_id(&ws, &source);

    let verify = |ws: &Workspace| {
        let mut cmd = ws.tusk();
        cmd.args(["--json", "verify", &id, "--database-url"])
            .arg(source.url());
        run(cmd)
    };
    // The manifest holds the source's settings, comment and grants, so this
    // passes only if verify applied them to its scratch database.
    let out = verify(&ws).expect_code(0);
    let report = out.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["notes"], serde_json::json!([]), "{report}");
    assert!(cluster.kept_scratch_of(&out.stderr).is_empty());

    // On a server without the roles, their grants and settings are left
    // out of both the restore and the comparison (other tests may have
    // restored the roles there already, so there may be nothing to say).
    let other = Cluster::second();
    let mut cmd = ws.tusk();
    cmd.args(["--json", "verify", &id, "--verify-url"])
        .arg(&other.url);
    let out = run(cmd).expect_code(0);
    let report = out.json();
    assert_eq!(report["ok"], true, "{report}");
    for note in report["notes"].as_array().unwrap() {
        assert!(
            note.as_str().unwrap().contains("roles do not exist"),
            "{report}"
        );
    }
    assert!(other.kept_scratch_of(&out.stderr).is_empty());

    // A manifest that recorded other values than the archive restores: the
    // comparison names each property with what was expected and found.
    let manifest_path = ws.backup_dir().join(&id).join("manifest.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&original).unwrap();
    let properties = &mut manifest["database"]["properties"];
    properties["settings"]["statement_timeout"] = "99s".into();
    properties["comment"] = "another comment".into();
    properties["privileges"]["PUBLIC"] = "Tc".into();
    properties["role_settings"][&roles.tuned]["work_mem"] = "1GB".into();
    std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let out = verify(&ws).expect_code(3);
    let report = out.json();
    let mut problems: Vec<(String, String, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["kind"], "database_property", "{p}");
            (
                p["subject"].as_str().unwrap().to_string(),
                p["expected"].as_str().unwrap().to_string(),
                p["got"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    problems.sort();
    let mut expected = vec![
        (
            "comment".to_string(),
            "another comment".to_string(),
            COMMENT.to_string(),
        ),
        ("privileges of PUBLIC".into(), "Tc".into(), "T".into()),
        (
            "setting statement_timeout".into(),
            "99s".into(),
            "42s".into(),
        ),
        (
            format!("setting work_mem for role {}", roles.tuned),
            "1GB".into(),
            "12MB".into(),
        ),
    ];
    expected.sort();
    assert_eq!(problems, expected);
    assert!(cluster.kept_scratch_of(&out.stderr).is_empty());

    // A set written before tusk recorded the properties verifies as before,
    // with a note.
    let mut manifest: serde_json::Value = serde_json::from_str(&original).unwrap();
    manifest["database"]
        .as_object_mut()
        .unwrap()
        .remove("properties");
    std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let report = verify(&ws).expect_code(0).json();
    assert_eq!(report["ok"], true);
    assert!(
        report["notes"][0]
            .as_str()
            .unwrap()
            .contains("before tusk recorded"),
        "{report}"
    );
}

#[test]
fn a_template_database_stays_one_and_can_be_replaced() {
    let cluster = Cluster::main();
    let source = cluster.empty_database("dbp_template");
    source.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    cluster.sql(
        "postgres",
        &format!("ALTER DATABASE \"{}\" IS_TEMPLATE true", source.name),
    );
    let ws = Workspace::new();
    let id = backup_id(&ws, &source);
    let restored = TestDb {
        cluster: cluster.clone(),
        name: unique_name("dbp_template_copy"),
    };
    for force in [false, true] {
        let mut cmd = ws.tusk();
        cmd.args(["restore", &id, "--no-globals", "--target-url"])
            .arg(restored.url());
        if force {
            // Replacing drops the old copy, itself a template.
            cmd.arg("--force");
        }
        run(cmd).expect_code(0);
        assert_eq!(
            cluster.sql(
                "postgres",
                &format!(
                    "SELECT datistemplate FROM pg_database WHERE datname = '{}'",
                    restored.name
                )
            ),
            "t"
        );
    }
    assert!(
        cluster
            .databases_like(&format!("{}_tusk_", restored.name))
            .is_empty()
    );
    // A template cannot be dropped: let the guards drop them.
    for db in [&source, &restored] {
        cluster.sql(
            "postgres",
            &format!("ALTER DATABASE \"{}\" IS_TEMPLATE false", db.name),
        );
    }
}

/// In Docker mode the container's own pg_dump and pg_restore write and read
/// the archive: every PostgreSQL major the tests have an image for.
#[test]
fn docker_mode_restores_and_verifies_the_properties() {
    if !docker_tests_enabled() {
        return;
    }
    for image in docker_images() {
        eprintln!("Docker mode with {image}");
        let compose = Compose::up_with_image("dbp_dk", &image);
        let cluster = compose.cluster();
        let (source, roles) = database_with_properties(&cluster, "dbp_dk");
        let ws = Workspace::new();
        let url = format!("postgresql://postgres@db/{}", source.name);
        let mut cmd = compose.tusk(&ws);
        cmd.args(["--json", "--database-url", &url, "backup"]);
        let id = run(cmd).expect_code(0).json()["id"]
            .as_str()
            .unwrap()
            .to_string();

        let copy = unique_name("dbp_dk_copy");
        let mut cmd = compose.tusk(&ws);
        cmd.args(["--database-url", &url, "restore", &id, "--database", &copy]);
        run(cmd).expect_code(0);
        assert_restored_properties(&cluster, &copy, &roles);

        let mut cmd = compose.tusk(&ws);
        cmd.args(["--json", "--database-url", &url, "verify", &id]);
        let report = run(cmd).expect_code(0).json();
        assert_eq!(report["ok"], true, "{image}: {report}");
        assert_eq!(report["notes"], serde_json::json!([]), "{image}: {report}");
    }
}

#[test]
fn a_property_the_role_may_not_set_fails_a_restore_early_but_not_verify() {
    let cluster = Cluster::main();
    let source = cluster.empty_database("dbp_denied");
    source.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    // Only a superuser may set this one.
    cluster.sql(
        "postgres",
        &format!(
            "ALTER DATABASE \"{}\" SET log_min_duration_statement = '250ms'",
            source.name
        ),
    );
    let restorer = unique_name("dbp_restorer");
    cluster.sql(
        "postgres",
        &format!("CREATE ROLE {restorer} LOGIN CREATEDB PASSWORD '{PASSWORD}'"),
    );
    let ws = Workspace::new();
    let id = backup_id(&ws, &source);

    let target = unique_name("dbp_denied_copy");
    let mut cmd = ws.tusk();
    cmd.args([
        "restore",
        &id,
        "--no-globals",
        "--no-owner",
        "--role",
        &restorer,
        "--target-url",
    ])
    .arg(cluster.url_as(&restorer, PASSWORD, &target));
    let out = run(cmd).expect_code(1);
    assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    assert!(
        out.stderr.contains("setting log_min_duration_statement"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    assert!(cluster.databases_like(&target).is_empty());

    // Verify, though, only reports what it may not check.
    let mut cmd = ws.tusk();
    cmd.args(["--json", "verify", &id, "--database-url"])
        .arg(cluster.url_as(&restorer, PASSWORD, &source.name));
    let out = run(cmd).expect_code(0);
    let report = out.json();
    assert_eq!(
        report["notes"],
        serde_json::json!([
            "not applied nor compared, the verifying role may not set them: \
             setting log_min_duration_statement"
        ]),
        "{report}"
    );
    assert!(cluster.kept_scratch_of(&out.stderr).is_empty());
}
