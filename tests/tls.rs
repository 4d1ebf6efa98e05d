//! TLS to PostgreSQL: libpq's sslmode and sslrootcert for tusk's own sessions
//! and its client tools, against a cluster that refuses connections without
//! TLS and has a certificate from a throwaway CA (`TUSK_TEST_PG_TLS_*`, made by
//! scripts/lib/pg-cluster.sh), and the plain cluster for `prefer`.
//!
//! Every tusk run here gets `PGSSLMODE=disable` in its environment: the
//! client tools would inherit it and be refused by the TLS cluster unless
//! tusk hands them its own choice, so a passing backup proves that pg_dump,
//! pg_dumpall, pg_restore and psql used TLS too. `HOME` is the workspace, so
//! no `~/.postgresql/root.crt` of the machine takes part.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Cluster, Run, TestDb, Workspace, run, unique_name};

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the integration tests through scripts/test.sh")
    })
}

/// The cluster that accepts TLS connections only.
fn tls_cluster() -> Cluster {
    Cluster {
        url: env("TUSK_TEST_PG_TLS_URL"),
    }
}

fn ca() -> String {
    env("TUSK_TEST_PG_TLS_CA")
}

/// `url` with `params` appended to its query.
fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

/// `url` reaching the same server by `host` instead.
fn with_host(url: &str, host: &str) -> String {
    let (userinfo, rest) = url.split_once('@').unwrap();
    let (_, port_and_path) = rest.split_once(':').unwrap();
    format!("{userinfo}@{host}:{port_and_path}")
}

/// `tusk` for a TLS test: the workspace as `HOME` and a `PGSSLMODE` that
/// would break any tool that did not get tusk's own choice.
fn tusk(ws: &Workspace) -> Command {
    let mut cmd = ws.tusk();
    cmd.env("HOME", ws.path()).env("PGSSLMODE", "disable");
    cmd
}

fn backup(ws: &Workspace, url: &str, extra: &[&str]) -> Run {
    let mut cmd = tusk(ws);
    cmd.args(extra)
        .args(["--json", "backup", "--database-url"])
        .arg(url);
    run(cmd)
}

/// Asserts a refused connection: exit 1, the explanation, no password.
fn assert_refused(out: &Run, password: &str, expected: &[&str]) {
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    for text in expected {
        assert!(out.stderr.contains(text), "no {text:?} in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains(password), "{}", out.stderr);
    assert!(!out.stdout.contains(password), "{}", out.stdout);
}

#[test]
fn require_backs_up_restores_and_verifies_through_tls() {
    let cluster = tls_cluster();
    let source = cluster.mastodon_database("tls_req", 1);
    let before = source.fingerprint();
    let ws = Workspace::new();

    // channel_binding=require: tusk's session authenticates with
    // SCRAM-SHA-256-PLUS, bound to the server's certificate.
    let report = backup(
        &ws,
        &with_params(&source.url(), "sslmode=require&channel_binding=require"),
        &[],
    )
    .expect_code(0)
    .json();
    let id = report["id"].as_str().unwrap().to_string();
    // The manifest records the server without the password or the TLS parameters.
    let manifest = ws.manifest(&id);
    let server = format!(
        "postgresql://postgres@127.0.0.1:{}/{}",
        env("TUSK_TEST_PG_TLS_PORT"),
        source.name
    );
    assert_eq!(manifest["source"]["server"].as_str(), Some(server.as_str()));

    // Round trip into a new database on the same TLS-only server: pg_dumpall
    // (globals), pg_restore and psql all connect through TLS.
    let target = unique_name("tls_req_target");
    let mut restore = tusk(&ws);
    restore
        .args(["--json", "restore", &id, "--target-url"])
        .arg(with_params(&cluster.db_url(&target), "sslmode=require"));
    run(restore).expect_code(0);
    let restored = TestDb {
        cluster: cluster.clone(),
        name: target,
    };
    assert_eq!(restored.fingerprint(), before);

    // A test restore into a scratch database on the TLS server.
    let mut verify = tusk(&ws);
    verify
        .args([
            "--pg-sslmode",
            "require",
            "--json",
            "verify",
            &id,
            "--verify-url",
        ])
        .arg(cluster.db_url("postgres"));
    run(verify).expect_code(0);
}

#[test]
fn verify_full_with_the_ca_works_from_flags_url_and_env_file() {
    let cluster = tls_cluster();
    let source = cluster.empty_database("tls_vf");
    source.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)");
    let ws = Workspace::new();

    // Flags (settings).
    backup(
        &ws,
        &source.url(),
        &["--pg-sslmode", "verify-full", "--pg-sslrootcert", &ca()],
    )
    .expect_code(0);

    // URL parameters, with a key/value string this time.
    let password = cluster.password();
    let port = env("TUSK_TEST_PG_TLS_PORT");
    let key_value = format!(
        "host=127.0.0.1 port={port} user=postgres password='{password}' dbname={} \
         sslmode=verify-full sslrootcert='{}'",
        source.name,
        ca()
    );
    backup(&ws, &key_value, &[]).expect_code(0);

    // Mastodon's .env.production: DB_SSLMODE, and PGSSLROOTCERT, which
    // libpq reads from the environment Mastodon loads that file into.
    let env_file = ws.path().join(".env.production");
    std::fs::write(
        &env_file,
        format!(
            "DB_HOST=localhost\nDB_PORT={port}\nDB_USER=postgres\nDB_PASS={password}\n\
             DB_NAME={}\nDB_SSLMODE=verify-full\nPGSSLROOTCERT={}\n",
            source.name,
            ca()
        ),
    )
    .unwrap();
    let mut cmd = tusk(&ws);
    cmd.args(["--json", "backup"]);
    run(cmd).expect_code(0);
    assert_eq!(ws.set_ids().len(), 3);
}

#[test]
fn verify_full_refuses_a_host_name_not_in_the_certificate() {
    let cluster = tls_cluster();
    let source = cluster.empty_database("tls_name");
    let ws = Workspace::new();
    let alt_host = env("TUSK_TEST_PG_TLS_ALT_HOST");
    let url = with_host(&source.url(), &alt_host);

    let out = backup(
        &ws,
        &with_params(&url, &format!("sslmode=verify-full&sslrootcert={}", ca())),
        &[],
    );
    assert_refused(
        &out,
        &cluster.password(),
        &[
            "certificate is for localhost, 127.0.0.1, not 127.0.0.2",
            "sslmode=verify-ca",
        ],
    );
    assert!(ws.set_ids().is_empty());

    // verify-ca checks the CA only, so the same address is fine.
    backup(
        &ws,
        &with_params(&url, &format!("sslmode=verify-ca&sslrootcert={}", ca())),
        &[],
    )
    .expect_code(0);
}

#[test]
fn verify_full_refuses_an_unknown_ca_and_a_missing_one() {
    let cluster = tls_cluster();
    let source = cluster.empty_database("tls_ca");
    let ws = Workspace::new();
    let other_ca = env("TUSK_TEST_PG_TLS_OTHER_CA");

    let out = backup(
        &ws,
        &source.url(),
        &["--pg-sslmode", "verify-full", "--pg-sslrootcert", &other_ca],
    );
    assert_refused(
        &out,
        &cluster.password(),
        &["not signed by a CA in sslrootcert", &other_ca],
    );

    // require with a root certificate checks the chain, as verify-ca (libpq).
    let out = backup(
        &ws,
        &with_params(
            &source.url(),
            &format!("sslmode=require&sslrootcert={other_ca}"),
        ),
        &[],
    );
    assert_refused(
        &out,
        &cluster.password(),
        &["not signed by a CA in sslrootcert"],
    );

    // No root certificate at all (HOME has no .postgresql/root.crt).
    let out = backup(&ws, &with_params(&source.url(), "sslmode=verify-full"), &[]);
    assert_refused(
        &out,
        &cluster.password(),
        &["no root certificate", "sslrootcert"],
    );

    // libpq's default file is used when it exists.
    let default = ws.path().join(".postgresql");
    std::fs::create_dir_all(&default).unwrap();
    std::fs::copy(ca(), default.join("root.crt")).unwrap();
    backup(&ws, &with_params(&source.url(), "sslmode=verify-full"), &[]).expect_code(0);
    assert!(Path::new(&ws.backup_dir()).is_dir());
    assert_eq!(ws.set_ids().len(), 1);
}

#[test]
fn prefer_falls_back_to_plain_on_a_server_without_tls() {
    let plain = Cluster::main();
    let source = plain.empty_database("tls_prefer");
    source.sql("CREATE TABLE t (id int)");
    let ws = Workspace::new();

    // The default (prefer), and prefer named in the URL.
    backup(&ws, &source.url(), &[]).expect_code(0);
    backup(&ws, &with_params(&source.url(), "sslmode=prefer"), &[]).expect_code(0);
    assert_eq!(ws.set_ids().len(), 2);

    // require does not fall back.
    let out = backup(&ws, &source.url(), &["--pg-sslmode", "require"]);
    assert_refused(
        &out,
        &plain.password(),
        &["does not accept TLS connections", "sslmode=require"],
    );
}

#[test]
fn disable_is_refused_by_a_server_that_requires_tls_and_allow_retries_with_it() {
    let cluster = tls_cluster();
    let source = cluster.empty_database("tls_off");
    let ws = Workspace::new();
    let out = backup(&ws, &with_params(&source.url(), "sslmode=disable"), &[]);
    assert_refused(&out, &cluster.password(), &["no encryption"]);
    assert!(ws.set_ids().is_empty());

    // allow: plain first, refused, then TLS (tusk's sessions and the tools).
    backup(&ws, &with_params(&source.url(), "sslmode=allow"), &[]).expect_code(0);
    assert_eq!(ws.set_ids().len(), 1);
}

#[test]
fn a_unix_socket_ignores_sslmode_as_libpq_does() {
    let cluster = tls_cluster();
    let source = cluster.empty_database("tls_socket");
    let ws = Workspace::new();
    // verify-full with no root certificate anywhere: over the socket there
    // is no TLS to check, for tusk's sessions and for the tools alike.
    let key_value = format!(
        "host={} port={} user=postgres dbname={} sslmode=verify-full",
        env("TUSK_TEST_PG_TLS_HOST"),
        env("TUSK_TEST_PG_TLS_PORT"),
        source.name
    );
    backup(&ws, &key_value, &[]).expect_code(0);
}
