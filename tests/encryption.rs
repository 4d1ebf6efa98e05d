//! Sets encrypted with age: round trips with X25519 and SSH keys, wrong and
//! missing keys, the standard `age` tool opening what tusk wrote (and the
//! manual recovery of docs/backup-sets.md), tampering, no clear text in a
//! set, and the secrets check of `.env.production`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The marker in the fixture's SECRET_KEY_BASE.
const SECRET_MARKER: &str = "tusk-fixture-secret-";

fn fixture(path: &str) -> PathBuf {
    repo_root().join("fixtures").join(path)
}

fn key(name: &str) -> PathBuf {
    fixture(&format!("encryption/{name}"))
}

/// The public key in an `age-keygen` file's comment.
fn public_key(name: &str) -> String {
    let text = std::fs::read_to_string(key(name)).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key as a comment")
        .to_string()
}

fn ssh_public_key() -> String {
    std::fs::read_to_string(key("id_ed25519.pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn age_bin() -> String {
    std::env::var("TUSK_TEST_AGE_BIN").unwrap_or_else(|_| "age".into())
}

/// A workspace whose tusk.yaml encrypts to `recipients` and whose
/// `.env.production` is `env_text`.
fn encrypted_workspace(recipients: &[String], env_text: &str) -> Workspace {
    let ws = Workspace::new();
    let yaml = format!(
        "encryption:\n  recipients:\n{}",
        recipients
            .iter()
            .map(|r| format!("    - \"{r}\"\n"))
            .collect::<String>()
    );
    std::fs::write(ws.path().join("tusk.yaml"), yaml).unwrap();
    std::fs::write(ws.path().join(".env.production"), env_text).unwrap();
    ws
}

fn env_production() -> String {
    std::fs::read_to_string(fixture("mastodon/env.production")).unwrap()
}

fn backup(ws: &Workspace, db: &TestDb) -> serde_json::Value {
    let mut cmd = ws.tusk_configured();
    cmd.args(["--json", "backup", "--database-url"])
        .arg(db.url());
    run(cmd).expect_code(0).json()
}

fn set_dir(ws: &Workspace, report: &serde_json::Value) -> PathBuf {
    ws.backup_dir().join(report["id"].as_str().unwrap())
}

/// Every file of the set, with its bytes.
fn set_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn an_encrypted_set_restores_database_roles_and_env_production_with_an_x25519_key() {
    let source = Cluster::main().mastodon_database("enc_x", 1);
    let before = source.fingerprint();
    let recipients = vec![public_key("admin.key"), public_key("recovery.key")];
    let ws = encrypted_workspace(&recipients, &env_production());
    let report = backup(&ws, &source);
    let dir = set_dir(&ws, &report);

    let manifest = ws.manifest(report["id"].as_str().unwrap());
    assert_eq!(manifest["format"], 2);
    assert_eq!(manifest["encryption"]["algorithm"], "age");
    assert_eq!(
        manifest["encryption"]["recipients"],
        serde_json::json!(recipients)
    );
    let names: Vec<&str> = manifest["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "globals.sql.zst.age",
            "database.dump.zst.age",
            "env.production.zst.age"
        ]
    );
    assert_eq!(manifest["secrets"]["missing"], serde_json::json!([]));
    assert_eq!(manifest["mastodon"]["source"], "schema");

    // Never clear text: no file of the set, the manifest included, holds
    // the secret; every artefact is an age file that shows none of the
    // data (the fixture's accounts are on tusk.example).
    let files = set_files(&dir);
    assert_eq!(files.len(), 4, "three artefacts and the manifest");
    for (name, bytes) in files {
        assert!(!contains(&bytes, SECRET_MARKER), "{name} holds the secret");
        if name != "manifest.json" {
            assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{name}");
            assert!(!contains(&bytes, "tusk.example"), "{name}");
        }
    }

    // The recovery key alone opens it, on a fresh server.
    let fresh = Cluster::second();
    let target = unique_name("enc_x_fresh");
    let files_to = ws.path().join("restored-files");
    let mut restore = ws.tusk_configured();
    restore
        .args(["--json", "restore", report["id"].as_str().unwrap()])
        .arg("--identity")
        .arg(key("recovery.key"))
        .arg("--files-to")
        .arg(&files_to)
        .arg("--target-url")
        .arg(fresh.db_url(&target));
    let out = run(restore).expect_code(0).json();
    assert_eq!(out["database"], target.as_str());
    assert_eq!(
        out["files"][0]["path"],
        files_to.join(".env.production").display().to_string()
    );
    let restored = TestDb {
        cluster: fresh.clone(),
        name: target,
    };
    assert_eq!(restored.fingerprint(), before);
    let env_back = files_to.join(".env.production");
    assert_eq!(
        std::fs::read_to_string(&env_back).unwrap(),
        env_production()
    );
    assert_eq!(
        std::fs::metadata(&env_back).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // An existing file is never overwritten without --force.
    std::fs::write(&env_back, "KEEP=me\n").unwrap();
    let mut again = ws.tusk_configured();
    again
        .args(["restore", report["id"].as_str().unwrap(), "--no-database"])
        .arg("--identity")
        .arg(key("admin.key"))
        .arg("--files-to")
        .arg(&files_to);
    let refused = run(again).expect_code(2);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(&env_back).unwrap(), "KEEP=me\n");
    let mut forced = ws.tusk_configured();
    forced
        .args([
            "restore",
            report["id"].as_str().unwrap(),
            "--no-database",
            "--force",
        ])
        .arg("--identity")
        .arg(key("admin.key"))
        .arg("--files-to")
        .arg(&files_to);
    run(forced).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&env_back).unwrap(),
        env_production()
    );
    assert_eq!(
        std::fs::metadata(&env_back).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // verify restores it too (with the key), and --checksums-only needs none.
    let mut verify = ws.tusk_configured();
    verify
        .args(["verify", report["id"].as_str().unwrap(), "--database-url"])
        .arg(source.url())
        .arg("--identity")
        .arg(key("admin.key"));
    run(verify).expect_code(0);
    let mut checksums = ws.tusk_configured();
    checksums.args(["verify", report["id"].as_str().unwrap(), "--checksums-only"]);
    run(checksums).expect_code(0);
}

#[test]
fn an_ssh_ed25519_key_encrypts_and_opens_a_set() {
    let source = Cluster::main().mastodon_database("enc_ssh", 1);
    let before = source.fingerprint();
    let ws = encrypted_workspace(&[ssh_public_key()], &env_production());
    let report = backup(&ws, &source);
    let target = unique_name("enc_ssh_back");
    let mut restore = ws.tusk_configured();
    restore
        .args(["restore", report["id"].as_str().unwrap(), "--target-url"])
        .arg(source.cluster.db_url(&target))
        .arg("--identity")
        .arg(key("id_ed25519"));
    run(restore).expect_code(0);
    let restored = TestDb {
        cluster: source.cluster.clone(),
        name: target,
    };
    assert_eq!(restored.fingerprint(), before);
}

#[test]
fn a_wrong_or_missing_key_is_exit_1_naming_the_recipients_and_restores_nothing() {
    let source = Cluster::main().mastodon_database("enc_wrong", 1);
    let admin = public_key("admin.key");
    let ws = encrypted_workspace(std::slice::from_ref(&admin), &env_production());
    let report = backup(&ws, &source);
    let fresh = Cluster::second();
    let target = unique_name("enc_wrong_t");
    let files_to = ws.path().join("files");
    for identity in [Some(key("wrong.key")), Some(key("id_ed25519")), None] {
        let mut restore = ws.tusk_configured();
        restore
            .args(["restore", report["id"].as_str().unwrap(), "--target-url"])
            .arg(fresh.db_url(&target))
            .arg("--files-to")
            .arg(&files_to);
        if let Some(identity) = &identity {
            restore.arg("--identity").arg(identity);
        }
        let failed = run(restore).expect_code(1);
        assert!(
            failed.stderr.contains(&admin),
            "{identity:?}: {}",
            failed.stderr
        );
        assert!(!fresh.database_exists(&target), "{identity:?}");
        assert!(!files_to.exists(), "{identity:?}");
        assert!(fresh.databases_like(&target).is_empty());
    }
    // verify needs the key for its test restore, and says so.
    let mut verify = ws.tusk_configured();
    verify
        .args(["verify", report["id"].as_str().unwrap(), "--database-url"])
        .arg(source.url())
        .arg("--identity")
        .arg(key("wrong.key"));
    let failed = run(verify).expect_code(1);
    assert!(failed.stderr.contains(&admin), "{}", failed.stderr);
}

#[test]
fn the_age_tool_opens_a_set_and_the_documented_manual_recovery_restores_it() {
    let source = Cluster::main().mastodon_database("enc_manual", 1);
    let before = source.fingerprint();
    let ws = encrypted_workspace(&[public_key("admin.key")], &env_production());
    let report = backup(&ws, &source);
    let dir = set_dir(&ws, &report);

    // docs/backup-sets.md, "Restoring without tusk", with the real age binary.
    let target = unique_name("enc_manual_t");
    let script = format!(
        r#"set -eu
cd "{dir}"
age -d -i "{key}" env.production.zst.age | zstd -dc > "{out}/.env.production"
age -d -i "{key}" globals.sql.zst.age | zstd -dc > "{out}/globals.sql"
createdb -T template0 "{target}"
age -d -i "{key}" database.dump.zst.age | zstd -dc | pg_restore --exit-on-error -d "{target}"
"#,
        dir = dir.display(),
        key = key("admin.key").display(),
        out = ws.path().display(),
        target = target,
    );
    let age_dir = Path::new(&age_bin()).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}:{}",
        age_dir.display(),
        pg_bin().display(),
        std::env::var("PATH").unwrap()
    );
    let url = source.cluster.db_url("postgres");
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("PATH", path)
        .env("PGDATABASE", "postgres")
        .envs(libpq_env(&url))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "manual recovery failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = TestDb {
        cluster: source.cluster.clone(),
        name: target,
    };
    assert_eq!(restored.fingerprint(), before);
    assert_eq!(
        std::fs::read_to_string(ws.path().join(".env.production")).unwrap(),
        env_production()
    );
    let globals = std::fs::read_to_string(ws.path().join("globals.sql")).unwrap();
    assert!(globals.contains("CREATE ROLE"), "{globals}");
}

/// libpq's variables for a `postgresql://user:password@host:port/db` URL.
fn libpq_env(url: &str) -> Vec<(String, String)> {
    let rest = url.strip_prefix("postgresql://").unwrap();
    let (login, rest) = rest.split_once('@').unwrap();
    let (user, password) = login.split_once(':').unwrap_or((login, ""));
    let host_port = rest.split('/').next().unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    vec![
        ("PGUSER".into(), user.into()),
        ("PGPASSWORD".into(), password.into()),
        ("PGHOST".into(), host.into()),
        ("PGPORT".into(), port.into()),
    ]
}

#[test]
fn a_flipped_byte_in_a_ciphertext_is_exit_3_naming_the_artefact_without_any_key() {
    let source = Cluster::main().mastodon_database("enc_flip", 1);
    let ws = encrypted_workspace(&[public_key("admin.key")], &env_production());
    let report = backup(&ws, &source);
    let dir = set_dir(&ws, &report);
    let victim = dir.join("database.dump.zst.age");
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();

    let mut verify = ws.tusk_configured();
    verify.args([
        "--json",
        "verify",
        report["id"].as_str().unwrap(),
        "--checksums-only",
    ]);
    let failed = run(verify).expect_code(3);
    let problems = failed.json()["problems"].clone();
    assert_eq!(problems[0]["kind"], "checksum", "{problems}");
    assert_eq!(
        problems[0]["subject"], "database.dump.zst.age",
        "{problems}"
    );
}

#[test]
fn without_encryption_env_production_stays_out_unless_asked_and_missing_keys_are_recorded() {
    let source = Cluster::main().mastodon_database("enc_plain", 1);
    // A 4.3 schema, but the file lacks the ActiveRecord encryption keys.
    let without_ar: String = env_production()
        .lines()
        .filter(|line| !line.starts_with("ACTIVE_RECORD_ENCRYPTION_"))
        .map(|line| format!("{line}\n"))
        .collect();
    let ws = Workspace::new();
    std::fs::write(ws.path().join("tusk.yaml"), "").unwrap();
    std::fs::write(ws.path().join(".env.production"), &without_ar).unwrap();

    let report = backup(&ws, &source);
    let manifest = ws.manifest(report["id"].as_str().unwrap());
    assert_eq!(manifest["format"], 1);
    assert!(manifest.get("encryption").is_none());
    assert_eq!(manifest["artefacts"].as_array().unwrap().len(), 2);
    let notes = manifest["notes"].to_string();
    assert!(notes.contains("--include-secrets-unencrypted"), "{notes}");
    assert_eq!(
        manifest["secrets"]["missing"],
        serde_json::json!([
            "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY",
            "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT",
            "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY"
        ])
    );
    assert!(
        notes.contains("ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY"),
        "{notes}"
    );

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut asked = ws.tusk_configured();
    asked
        .args([
            "--json",
            "backup",
            "--include-secrets-unencrypted",
            "--database-url",
        ])
        .arg(source.url());
    let report = run(asked).expect_code(0).json();
    let manifest = ws.manifest(report["id"].as_str().unwrap());
    let secrets = &manifest["artefacts"][2];
    assert_eq!(secrets["name"], "env.production.zst");
    assert_eq!(secrets["kind"], "secrets");
    assert_eq!(manifest["format"], 2);
}

#[test]
fn a_passphrase_from_tusk_passphrase_file_encrypts_and_opens_a_set() {
    let source = Cluster::main().mastodon_database("enc_pass", 1);
    let before = source.fingerprint();
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join("tusk.yaml"),
        "encryption:\n  passphrase: true\n",
    )
    .unwrap();
    std::fs::write(ws.path().join(".env.production"), env_production()).unwrap();
    let passphrase = ws.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();

    // Without the file and without a terminal: a clear refusal, no set.
    let mut refused = ws.tusk_configured();
    refused.args(["backup", "--database-url"]).arg(source.url());
    let out = run(refused).expect_code(2);
    assert!(
        out.stderr.contains("TUSK_PASSPHRASE_FILE"),
        "{}",
        out.stderr
    );
    assert!(ws.set_ids().is_empty());

    let mut cmd = ws.tusk_configured();
    cmd.env("TUSK_PASSPHRASE_FILE", &passphrase)
        .args(["--json", "backup", "--database-url"])
        .arg(source.url());
    let report = run(cmd).expect_code(0).json();
    let manifest = ws.manifest(report["id"].as_str().unwrap());
    assert_eq!(manifest["encryption"]["passphrase"], true);

    let target = unique_name("enc_pass_back");
    let mut restore = ws.tusk_configured();
    restore
        .env("TUSK_PASSPHRASE_FILE", &passphrase)
        .args(["restore", report["id"].as_str().unwrap(), "--target-url"])
        .arg(source.cluster.db_url(&target));
    run(restore).expect_code(0);
    let restored = TestDb {
        cluster: source.cluster.clone(),
        name: target,
    };
    assert_eq!(restored.fingerprint(), before);

    // The age tool asks for a passphrase on a terminal only; tusk's file
    // opens with `age -d` given the same passphrase there.
    let dir = set_dir(&ws, &report);
    let (code, screen) = run_on_terminal(
        &format!(
            "{} -d -o {}/env.out {}/env.production.zst.age",
            age_bin(),
            ws.path().display(),
            dir.display()
        ),
        b"correct horse battery staple\n",
    );
    assert_eq!(code, Some(0), "{screen}");
    let decoded = Command::new("zstd")
        .args(["-dc"])
        .arg(ws.path().join("env.out"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&decoded.stdout), env_production());
}
