//! `tusk prune` on the Mastodon fixture: every rule changes exactly the rows
//! an SQL oracle written from tootctl's scopes (and, for user archives, the
//! backups vacuum's) picks, exactly their files
//! go (locally and in buckets), and a run killed midway converges on a
//! re-run to the state an uninterrupted run leaves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::s3::*;
use common::*;
use md5::{Digest, Md5};

/// Every rule, with the retention a small instance might pick.
const ALL_RULES: [&str; 12] = [
    "--media-cache-days",
    "7",
    "--user-archives-days",
    "7",
    "--profiles-days",
    "30",
    "--preview-cards-days",
    "30",
    "--unattached-media",
    "--orphans",
    "--orphans-min-age",
    "0",
];

/// One file of the media fixture, from its manifest.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    md5: String,
    kind: String,
    table: String,
    id: i64,
}

fn manifest(ws: &Workspace) -> Vec<Entry> {
    let text = std::fs::read_to_string(ws.path().join("manifest.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            Entry {
                path: f[0].into(),
                md5: f[3].into(),
                kind: f[6].into(),
                table: f[7].into(),
                id: f[8].parse().unwrap_or(0),
            }
        })
        .collect()
}

/// The rows each rule must touch, selected the way tootctl's scopes read
/// (lib/mastodon/cli/media.rb, preview_cards.rb; MediaAttachment.unattached).
#[derive(Debug, PartialEq)]
struct Oracle {
    unattached: BTreeSet<i64>,
    media_cache: BTreeSet<i64>,
    profiles: BTreeSet<i64>,
    /// Accounts that match the profile rule but for a follow.
    protected_by_follows: BTreeSet<i64>,
    preview_cards: BTreeSet<i64>,
    /// `backups` rows Mastodon's BackupsVacuum deletes at a 7-day retention.
    user_archives: BTreeSet<i64>,
    /// Expired cached media whose `file_file_name` is '': in the `cached`
    /// scope, skipped by tootctl (`file.blank?`).
    blank_cached: BTreeSet<i64>,
}

fn ids(db: &TestDb, sql: &str) -> BTreeSet<i64> {
    db.sql(sql).lines().map(|l| l.parse().unwrap()).collect()
}

fn oracle(db: &TestDb) -> Oracle {
    let now = "(now() AT TIME ZONE 'UTC')";
    let unattached = ids(
        db,
        &format!(
            "SELECT id FROM media_attachments WHERE status_id IS NULL \
             AND scheduled_status_id IS NULL AND created_at < {now} - interval '1 day'"
        ),
    );
    let cached_scope = format!(
        "SELECT id FROM media_attachments WHERE remote_url <> '' \
         AND file_file_name IS NOT NULL AND created_at < {now} - interval '7 days'"
    );
    let blank_cached = ids(
        db,
        &format!("{cached_scope} AND file_file_name ~ '^[[:space:]]*$'"),
    );
    let cached: BTreeSet<i64> = ids(db, &cached_scope)
        .difference(&blank_cached)
        .copied()
        .collect();
    let stale_profiles = format!(
        "SELECT id FROM accounts WHERE domain IS NOT NULL \
         AND last_webfingered_at <= {now} - interval '30 days' \
         AND updated_at <= {now} - interval '30 days' \
         AND (coalesce(avatar_file_name, '') <> '' OR coalesce(header_file_name, '') <> '')"
    );
    let followed = "SELECT account_id FROM follows UNION SELECT target_account_id FROM follows";
    Oracle {
        media_cache: cached.difference(&unattached).copied().collect(),
        unattached,
        profiles: ids(db, &format!("{stale_profiles} AND id NOT IN ({followed})")),
        protected_by_follows: ids(db, &format!("{stale_profiles} AND id IN ({followed})")),
        preview_cards: ids(
            db,
            &format!(
                "SELECT id FROM preview_cards WHERE coalesce(image_file_name, '') <> '' \
                 AND updated_at < {now} - interval '30 days'"
            ),
        ),
        user_archives: ids(
            db,
            &format!("SELECT id FROM backups WHERE created_at < {now} - interval '7 days'"),
        ),
        blank_cached,
    }
}

impl Oracle {
    /// Whether the fixture file belongs to a row some rule clears or deletes.
    fn prunes(&self, entry: &Entry) -> bool {
        match entry.table.as_str() {
            "media_attachments" => {
                self.unattached.contains(&entry.id) || self.media_cache.contains(&entry.id)
            }
            "accounts" => self.profiles.contains(&entry.id),
            "preview_cards" => self.preview_cards.contains(&entry.id),
            "backups" => self.user_archives.contains(&entry.id),
            _ => false,
        }
    }
}

/// The files that must survive every rule: all but the pruned rows' files
/// and the orphans of classes Mastodon stores.
fn survivors(entries: &[Entry], oracle: &Oracle) -> BTreeMap<String, String> {
    entries
        .iter()
        .filter(|e| !oracle.prunes(e))
        .filter(|e| e.kind != "orphan" || e.path.starts_with("preview_card_providers/"))
        .map(|e| (e.path.clone(), e.md5.clone()))
        .collect()
}

/// md5 of the rows of `table` matching `condition`, in id order.
fn rows_md5(db: &TestDb, table: &str, condition: &str) -> String {
    db.sql(&format!(
        "SELECT coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t.id)), '') FROM {table} t WHERE {condition}"
    ))
}

fn id_list(ids: &BTreeSet<i64>) -> String {
    if ids.is_empty() {
        return "NULL".into();
    }
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// md5 of every file under `root`, by relative path.
fn tree_md5s(root: &Path) -> BTreeMap<String, String> {
    local_tree(root)
        .into_keys()
        .map(|relative| {
            let bytes = std::fs::read(root.join(&relative)).unwrap();
            (relative, hex::encode(Md5::digest(&bytes)))
        })
        .collect()
}

fn rule<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn local_prune(ws: &Workspace, db: &TestDb, root: &Path) -> Command {
    let mut cmd = ws.tusk();
    cmd.args(["--json", "--database-url", &db.url(), "--media-root"])
        .arg(root)
        .arg("prune");
    cmd
}

#[test]
fn every_rule_changes_exactly_the_rows_tootctl_selects_and_removes_exactly_their_files() {
    let ws = Workspace::new();
    let (db, root, _) = media_tree(&ws, "pr_rules");
    let entries = manifest(&ws);
    let expected = oracle(&db);
    for (name, set) in [
        ("unattached", &expected.unattached),
        ("media_cache", &expected.media_cache),
        ("profiles", &expected.profiles),
        ("protected_by_follows", &expected.protected_by_follows),
        ("preview_cards", &expected.preview_cards),
        ("user_archives", &expected.user_archives),
        ("blank_cached", &expected.blank_cached),
    ] {
        assert!(!set.is_empty(), "the fixture gives the {name} set no rows");
    }
    assert!(
        ids(&db, "SELECT id FROM backups")
            .difference(&expected.user_archives)
            .next()
            .is_some(),
        "the fixture has user archives younger than the retention"
    );
    let fingerprint = db.fingerprint();
    let tree = tree_md5s(&root);

    // A dry run reports the work and changes nothing.
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args(ALL_RULES).arg("--dry-run");
    let dry = run(cmd).expect_code(0).json();
    assert_eq!(db.fingerprint(), fingerprint);
    assert_eq!(tree_md5s(&root), tree);

    let untouched_media = rows_md5(
        &db,
        "media_attachments",
        &format!(
            "id NOT IN ({}) AND id NOT IN ({})",
            id_list(&expected.unattached),
            id_list(&expected.media_cache)
        ),
    );
    let untouched_accounts = rows_md5(
        &db,
        "accounts",
        &format!("id NOT IN ({})", id_list(&expected.profiles)),
    );
    let untouched_cards = rows_md5(
        &db,
        "preview_cards",
        &format!("id NOT IN ({})", id_list(&expected.preview_cards)),
    );
    let young_archives = rows_md5(
        &db,
        "backups",
        &format!("id NOT IN ({})", id_list(&expected.user_archives)),
    );
    let blank_rows = rows_md5(
        &db,
        "media_attachments",
        &format!("id IN ({})", id_list(&expected.blank_cached)),
    );

    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args(ALL_RULES).arg("--yes");
    let report = run(cmd).expect_code(0).json();
    assert_eq!(
        oracle(&db).media_cache,
        BTreeSet::new(),
        "nothing cached is left"
    );

    // Rows: the counts match the oracle and the dry run.
    for (name, set) in [
        ("unattached_media", &expected.unattached),
        ("media_cache", &expected.media_cache),
        ("profiles", &expected.profiles),
        ("preview_cards", &expected.preview_cards),
        ("user_archives", &expected.user_archives),
    ] {
        assert_eq!(rule(&report, name)["rows"], set.len(), "{name}");
        assert_eq!(rule(&dry, name)["rows"], set.len(), "{name} (dry run)");
        assert_eq!(
            rule(&dry, name)["files"],
            rule(&report, name)["files"],
            "{name}"
        );
    }

    // Unattached uploads are gone; cached media keep their rows with
    // Paperclip's columns nulled; nothing else changed.
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM media_attachments WHERE id IN ({})",
            id_list(&expected.unattached)
        )),
        "0"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM media_attachments WHERE id IN ({}) AND remote_url <> '' \
             AND file_file_name IS NULL AND file_content_type IS NULL AND file_file_size IS NULL \
             AND file_updated_at IS NULL AND thumbnail_file_name IS NULL \
             AND thumbnail_content_type IS NULL AND thumbnail_file_size IS NULL",
            id_list(&expected.media_cache)
        )),
        expected.media_cache.len().to_string()
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM accounts WHERE id IN ({}) AND avatar_file_name IS NULL \
             AND avatar_content_type IS NULL AND avatar_file_size IS NULL AND avatar_updated_at IS NULL \
             AND header_file_name IS NULL AND header_file_size IS NULL \
             AND updated_at > (now() AT TIME ZONE 'UTC') - interval '1 hour'",
            id_list(&expected.profiles)
        )),
        expected.profiles.len().to_string(),
        "pruned profiles are nulled and touched, so they wait another period"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM preview_cards WHERE id IN ({}) AND image_file_name IS NULL \
             AND image_file_size IS NULL",
            id_list(&expected.preview_cards)
        )),
        expected.preview_cards.len().to_string()
    );
    assert_eq!(
        rows_md5(
            &db,
            "media_attachments",
            &format!("id NOT IN ({})", id_list(&expected.media_cache))
        ),
        untouched_media
    );
    assert_eq!(
        rows_md5(
            &db,
            "accounts",
            &format!("id NOT IN ({})", id_list(&expected.profiles))
        ),
        untouched_accounts,
        "other accounts, followed ones included, are untouched"
    );
    assert_eq!(
        rows_md5(
            &db,
            "preview_cards",
            &format!("id NOT IN ({})", id_list(&expected.preview_cards))
        ),
        untouched_cards
    );

    // User archives: the expired rows are gone, the younger ones untouched,
    // as after Mastodon's vacuum.
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM backups WHERE id IN ({})",
            id_list(&expected.user_archives)
        )),
        "0"
    );
    assert_eq!(rows_md5(&db, "backups", "true"), young_archives);
    // The blank-named cached attachment is left exactly as it was.
    assert_eq!(
        rows_md5(
            &db,
            "media_attachments",
            &format!("id IN ({})", id_list(&expected.blank_cached))
        ),
        blank_rows
    );

    // Files: exactly the survivors remain, byte for byte (local media
    // included), and no empty folders are left behind.
    assert_eq!(tree_md5s(&root), survivors(&entries, &expected));
    let orphans = rule(&report, "orphans");
    assert!(orphans["files"].as_u64().unwrap() > 0);
    assert!(
        orphans["orphans"]["kept_unknown_class"].as_u64().unwrap() >= 1,
        "{orphans}"
    );
    assert!(
        root.join("preview_card_providers/icons/000/000/001/original/x.png")
            .is_file()
    );
    assert_eq!(
        db.sql("SELECT to_regclass('tusk_prune_pending') IS NULL"),
        "t"
    );
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let children: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(!children.is_empty(), "{} was left empty", dir.display());
        for child in children {
            let child = child.unwrap();
            if child.file_type().unwrap().is_dir() {
                dirs.push(child.path());
            }
        }
    }

    // A second run finds nothing to do.
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args(ALL_RULES).arg("--yes");
    let again = run(cmd).expect_code(0).json();
    for r in again["rules"].as_array().unwrap() {
        assert_eq!(r["files"], 0, "{r}");
    }
}

#[test]
fn headers_alone_and_include_follows_widen_the_selection_as_tootctl_does() {
    let ws = Workspace::new();
    let (db, root, _) = media_tree(&ws, "pr_follows");
    let expected = oracle(&db);
    let stale: BTreeSet<i64> = expected
        .profiles
        .union(&expected.protected_by_follows)
        .copied()
        .collect();
    // tootctl media remove --remove-headers --include-follows: every stale
    // remote account with a header, followed or not; avatars stay.
    let with_header = ids(
        &db,
        &format!(
            "SELECT id FROM accounts WHERE id IN ({}) AND coalesce(header_file_name, '') <> ''",
            id_list(&stale)
        ),
    );
    assert!(
        with_header
            .intersection(&expected.protected_by_follows)
            .next()
            .is_some(),
        "the fixture has a followed account with a header to prune"
    );
    let avatars_before =
        db.sql("SELECT string_agg(concat(id, avatar_file_name), ',' ORDER BY id) FROM accounts");

    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args([
        "--profiles-days",
        "30",
        "--headers",
        "--include-follows",
        "--yes",
    ]);
    let report = run(cmd).expect_code(0).json();

    assert_eq!(rule(&report, "profiles")["rows"], with_header.len());
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM accounts WHERE id IN ({}) AND header_file_name IS NULL",
            id_list(&with_header)
        )),
        with_header.len().to_string()
    );
    assert_eq!(
        db.sql("SELECT string_agg(concat(id, avatar_file_name), ',' ORDER BY id) FROM accounts"),
        avatars_before
    );
    for entry in manifest(&ws) {
        let header = entry.path.contains("accounts/headers/");
        let pruned = entry.table == "accounts" && header && with_header.contains(&entry.id);
        assert_eq!(root.join(&entry.path).exists(), !pruned, "{}", entry.path);
    }
}

#[test]
fn user_archives_go_as_mastodons_backups_vacuum_deletes_them() {
    let ws = Workspace::new();
    let (db, root, _) = media_tree(&ws, "pr_archives");
    let archive_files: Vec<Entry> = manifest(&ws)
        .into_iter()
        .filter(|e| e.table == "backups")
        .collect();
    let expired = oracle(&db).user_archives;
    let kept: BTreeSet<i64> = ids(&db, "SELECT id FROM backups")
        .difference(&expired)
        .copied()
        .collect();
    let expired_files: BTreeSet<String> = archive_files
        .iter()
        .filter(|e| expired.contains(&e.id))
        .map(|e| e.path.clone())
        .collect();
    assert!(!expired_files.is_empty() && !kept.is_empty());
    assert!(
        expired_files.len() < expired.len(),
        "the fixture has an expired archive that was never written"
    );
    let expired_bytes: u64 = db
        .sql(&format!(
            "SELECT coalesce(sum(dump_file_size), 0) FROM backups WHERE id IN ({})",
            id_list(&expired)
        ))
        .parse()
        .unwrap();
    let fingerprint = db.fingerprint();
    let tree = tree_md5s(&root);
    let prune = |extra: &[&str]| {
        let mut cmd = local_prune(&ws, &db, &root);
        // --only narrows the rules given to the one asked for.
        cmd.args([
            "--user-archives-days",
            "7",
            "--media-cache-days",
            "7",
            "--only",
            "user_archives",
        ])
        .args(extra);
        run(cmd).expect_code(0).json()
    };

    let dry = prune(&["--dry-run"]);
    assert_eq!(dry["rules"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(rule(&dry, "user_archives")["rows"], expired.len());
    assert_eq!(rule(&dry, "user_archives")["files"], expired_files.len());
    assert_eq!(db.fingerprint(), fingerprint, "a dry run changes nothing");
    assert_eq!(tree_md5s(&root), tree);

    let report = prune(&["--yes"]);
    let archives = rule(&report, "user_archives");
    assert_eq!(archives["rows"], expired.len());
    assert_eq!(archives["files"], expired_files.len());
    assert_eq!(archives["bytes"], expired_bytes);
    assert_eq!(ids(&db, "SELECT id FROM backups"), kept);
    let mut want = tree.clone();
    want.retain(|path, _| !expired_files.contains(path));
    assert_eq!(
        tree_md5s(&root),
        want,
        "exactly the expired archives' files go"
    );
    assert!(!root.join("backups/dumps/000/000/007").exists());
    assert_eq!(
        db.sql("SELECT to_regclass('tusk_prune_pending') IS NULL"),
        "t"
    );
}

#[test]
fn prune_in_buckets_with_a_key_prefix_leaves_exactly_the_survivors() {
    if !s3_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let (db, root, _) = media_tree(&ws, "pr_s3");
    let entries = manifest(&ws);
    let expected = oracle(&db);
    for server in [S3Server::s3s_fs(), S3Server::moto()] {
        let bucket = server.create_bucket("prune");
        let twin = db.copy("pr_s3_twin");
        let mut push = server.tusk(&ws, &bucket, &root);
        push.args(["--s3-key-prefix", "social", "--json", "media", "push"]);
        run(push).expect_code(0);

        let mut cmd = server.tusk(&ws, &bucket, &root);
        cmd.args([
            "--s3-key-prefix",
            "social",
            "--media-store",
            "s3",
            "--database-url",
            &twin.url(),
            "--json",
            "prune",
            "--yes",
        ])
        .args(ALL_RULES);
        let report = run(cmd).expect_code(0).json();
        assert_eq!(
            rule(&report, "media_cache")["rows"],
            expected.media_cache.len()
        );
        assert_eq!(
            rule(&report, "user_archives")["rows"],
            expected.user_archives.len()
        );

        let left: BTreeSet<String> = server.listing(&bucket).into_keys().collect();
        let want: BTreeSet<String> = survivors(&entries, &expected)
            .into_keys()
            .map(|path| format!("social/{path}"))
            .collect();
        assert_eq!(left, want, "on {}", server.endpoint);
    }
}

#[test]
fn a_run_killed_midway_converges_on_a_rerun_to_the_uninterrupted_end_state() {
    if !s3_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let (db, root, _) = media_tree_at(&ws, "pr_kill", 3);
    let twin = db.copy("pr_kill_twin");
    let server = S3Server::s3s_fs();
    let (calm, cut) = (server.create_bucket("calm"), server.create_bucket("cut"));
    for bucket in [&calm, &cut] {
        let mut push = server.tusk(&ws, bucket, &root);
        push.args(["--json", "media", "push"]);
        run(push).expect_code(0);
    }
    let prune = |bucket: &str, target: &TestDb, extra: &[&str]| {
        let mut cmd = server.tusk(&ws, bucket, &root);
        cmd.args(["--media-store", "s3", "--database-url", &target.url()])
            .args(["prune", "--yes"])
            .args(ALL_RULES)
            .args(extra);
        cmd
    };
    run(prune(&calm, &db, &[])).expect_code(0);

    // One row per batch, one batch at a time; killed once cached media
    // started to go but before they all went.
    let cached = oracle(&twin).media_cache.len();
    let mut child = prune(&cut, &twin, &["--batch-size", "1", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = oracle(&twin).media_cache.len();
        if left < cached && left > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted ({left} of {cached} left)"
        );
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!oracle(&twin).media_cache.is_empty(), "killed midway");

    let rerun = run(prune(&cut, &twin, &["--json"])).expect_code(0).json();
    assert!(rerun["rules"].as_array().unwrap().len() == 6);

    // Same rows (but for the time they were touched), same objects.
    let state = |target: &TestDb| {
        [
            "SELECT md5(string_agg(concat_ws('|', id, file_file_name, file_content_type, file_file_size, \
             thumbnail_file_name, remote_url, status_id), ',' ORDER BY id)) FROM media_attachments",
            "SELECT md5(string_agg(concat_ws('|', id, avatar_file_name, avatar_file_size, header_file_name, \
             header_file_size), ',' ORDER BY id)) FROM accounts",
            "SELECT md5(string_agg(concat_ws('|', id, image_file_name, image_file_size), ',' ORDER BY id)) \
             FROM preview_cards",
            "SELECT md5(string_agg(concat_ws('|', id, dump_file_name), ',' ORDER BY id)) FROM backups",
            "SELECT to_regclass('tusk_prune_pending') IS NULL",
        ]
        .map(|sql| target.sql(sql))
    };
    assert_eq!(state(&twin), state(&db));
    assert_eq!(server.listing(&cut), server.listing(&calm));
}

#[test]
fn keys_an_interrupted_run_left_in_the_journal_are_deleted_first() {
    let ws = Workspace::new();
    let (db, root, _) = media_tree(&ws, "pr_journal");
    // What a run killed between its commit and its delete leaves behind.
    let leftover = "cache/media_attachments/files/000/000/777/original/0123456789abcdef.jpg";
    std::fs::create_dir_all(root.join(leftover).parent().unwrap()).unwrap();
    std::fs::write(root.join(leftover), b"stale").unwrap();
    db.sql(&format!(
        "CREATE TABLE tusk_prune_pending (key text PRIMARY KEY, queued_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO tusk_prune_pending (key) VALUES ('{leftover}')"
    ));
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args(["--preview-cards-days", "365", "--yes"]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(report["journal_replayed"], 1);
    assert!(!root.join(leftover).exists());
    assert!(
        !root
            .join("cache/media_attachments/files/000/000/777")
            .exists()
    );
    assert_eq!(
        db.sql("SELECT to_regclass('tusk_prune_pending') IS NULL"),
        "t"
    );
}

#[test]
fn refusals_change_nothing() {
    let ws = Workspace::new();
    let (db, root, _) = media_tree(&ws, "pr_refuse");
    let fingerprint = db.fingerprint();
    let tree = tree_md5s(&root);

    // No rule anywhere: a usage error.
    let out = run(local_prune(&ws, &db, &root)).expect_code(2);
    assert!(out.stderr.contains("no rule"), "{}", out.stderr);

    // No terminal to confirm on and no --yes.
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args(["--media-cache-days", "1"]);
    let out = run(cmd).expect_code(2);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);

    // Another prune holds the lock.
    let mut holder = Command::new(pg_bin().join("psql"))
        .args(["-X", "-q", "-d", &db.url(), "-c"])
        .arg("SELECT pg_advisory_lock(8391740385960031598), pg_sleep(30)")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0" {
        assert!(Instant::now() < deadline, "psql never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args(["--media-cache-days", "1", "--yes"]);
    let out = run(cmd).expect_code(4);
    assert!(out.stderr.contains("another tusk prune"), "{}", out.stderr);
    holder.kill().unwrap();
    holder.wait().unwrap();

    // Orphans against a database without the instance's rows: the wrong
    // database, not a bucket full of orphans.
    let empty = Cluster::main().empty_database("pr_refuse_empty");
    let loaded = Command::new(pg_bin().join("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &empty.url(),
            "-f",
        ])
        .arg(repo_root().join("fixtures/mastodon/schema.sql"))
        .status()
        .unwrap();
    assert!(loaded.success());
    let mut cmd = local_prune(&ws, &empty, &root);
    cmd.args(["--orphans", "--orphans-min-age", "0", "--yes"]);
    let out = run(cmd).expect_code(1);
    assert!(out.stderr.contains("has no accounts"), "{}", out.stderr);

    assert_eq!(db.fingerprint(), fingerprint);
    assert_eq!(tree_md5s(&root), tree);
}

#[test]
fn vacuum_semantics_keep_cached_media_updated_since_the_cutoff() {
    let ws = Workspace::new();
    let (db, root, _) = media_tree(&ws, "pr_vacuum");
    let cached = oracle(&db).media_cache;
    // Mastodon's vacuum also needs updated_at before the cutoff: touch a few.
    let touched: BTreeSet<i64> = cached.iter().copied().step_by(3).collect();
    db.sql(&format!(
        "UPDATE media_attachments SET updated_at = now() AT TIME ZONE 'UTC' WHERE id IN ({})",
        id_list(&touched)
    ));
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args([
        "--media-cache-days",
        "7",
        "--media-cache-semantics",
        "vacuum",
        "--yes",
    ]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(
        rule(&report, "media_cache")["rows"],
        cached.len() - touched.len()
    );
    assert_eq!(
        ids(
            &db,
            &format!(
                "SELECT id FROM media_attachments WHERE id IN ({}) AND file_file_name IS NOT NULL",
                id_list(&cached)
            )
        ),
        touched,
        "exactly the touched rows keep their files"
    );
    // The vacuum's update_all leaves updated_at alone.
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM media_attachments WHERE id IN ({}) \
             AND updated_at > (now() AT TIME ZONE 'UTC') - interval '1 hour'",
            id_list(&cached)
        )),
        touched.len().to_string()
    );
}

#[test]
fn orphan_scans_resume_after_a_key_and_empty_tables_own_no_files() {
    let ws = Workspace::new();
    let (db, root, summary) = media_tree(&ws, "pr_orphans");
    // A class whose table exists but is empty: its files are orphans.
    db.sql("CREATE TABLE custom_emojis (id bigserial PRIMARY KEY, image_file_name varchar)");
    let emoji = "custom_emojis/images/000/000/001/original/blobcat.png";
    std::fs::create_dir_all(root.join(emoji).parent().unwrap()).unwrap();
    std::fs::write(root.join(emoji), b"png").unwrap();

    let mut orphans: Vec<String> = summary["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_string())
        .filter(|o| !o.starts_with("preview_card_providers/"))
        .collect();
    orphans.push(emoji.to_string());
    orphans.sort();
    assert!(orphans.len() >= 3, "{orphans:?}");
    // Resume after the second orphan: the first two stay.
    let after = &orphans[1];
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args([
        "--orphans",
        "--orphans-min-age",
        "0",
        "--start-after",
        after,
        "--yes",
    ]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(rule(&report, "orphans")["files"], orphans.len() - 2);
    for (i, orphan) in orphans.iter().enumerate() {
        assert_eq!(root.join(orphan).exists(), i < 2, "{orphan}");
    }

    // Young files are kept until they are old enough.
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args(["--orphans", "--yes"]);
    run(cmd).expect_code(0);
    assert!(
        !root.join(&orphans[0]).exists(),
        "the fixture's orphans are old"
    );
    let fresh = "media_attachments/files/000/000/999/original/0123456789abcdef.jpg";
    std::fs::create_dir_all(root.join(fresh).parent().unwrap()).unwrap();
    std::fs::write(root.join(fresh), b"new").unwrap();
    let mut cmd = local_prune(&ws, &db, &root);
    cmd.args(["--orphans", "--yes"]);
    let report = run(cmd).expect_code(0).json();
    assert_eq!(rule(&report, "orphans")["orphans"]["kept_recent"], 1);
    assert!(root.join(fresh).exists());
}

#[test]
fn on_a_terminal_prune_asks_first_and_no_changes_nothing() {
    let ws = Workspace::new();
    let (db, root, _) = media_tree(&ws, "pr_tty");
    let fingerprint = db.fingerprint();
    let tree = tree_md5s(&root);

    let command_line = format!(
        "'{}' --database-url '{}' --media-root '{}' prune --media-cache-days 7",
        assert_cmd::cargo::cargo_bin("tusk").display(),
        db.url(),
        root.display()
    );
    let (code, screen) = run_on_terminal(&command_line, b"n\n");
    assert!(
        screen.contains("Prune media cached over 7 days"),
        "no question asked:\n{screen}"
    );
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("nothing pruned"), "{screen}");
    assert_eq!(db.fingerprint(), fingerprint);
    assert_eq!(tree_md5s(&root), tree);
}
