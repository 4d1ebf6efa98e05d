//! The cut-over report: what `tusk migrate` did, and what is left for the
//! admin, specific to this instance (its `.env.production`, its media, its
//! search).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::mastodon::env_file::EnvFile;
use crate::output::human_bytes;

/// The secrets every Mastodon needs in `.env.production`.
const SECRETS: [&str; 4] = [
    "SECRET_KEY_BASE",
    "OTP_SECRET",
    "VAPID_PRIVATE_KEY",
    "VAPID_PUBLIC_KEY",
];
/// The keys Mastodon 4.3+ refuses to boot without (encrypted columns are
/// unreadable with new ones).
const ENCRYPTION_KEYS: [&str; 3] = [
    "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY",
    "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT",
    "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY",
];
/// Mastodon 4.3.0-rc.1's schema version: from here on the encryption keys
/// are required.
const MASTODON_4_3_FIRST_SCHEMA: &str = "20240916190140";

/// What the report is made from.
pub struct CutoverInputs {
    pub env: Option<EnvFile>,
    /// `S3_ENABLED`: media live in a bucket, not in `public/system`.
    pub media_in_bucket: bool,
    pub media_root: PathBuf,
    /// The newest applied migration of the source.
    pub schema_version: Option<String>,
    /// Where Mastodon must connect now.
    pub new_host: String,
    pub new_port: u16,
    pub new_database: String,
    /// Whether the old app is running again (`--restart-source`).
    pub source_restarted: bool,
    /// How the old app was stopped, for the "do not start it" advice.
    pub source_app: String,
    /// The migration's set, when it holds a snapshot of Sidekiq's Redis.
    pub redis_in_set: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CutoverReport {
    /// Left for the admin, in order.
    pub todo: Vec<String>,
    /// Things to fix before the new server can run.
    pub warnings: Vec<String>,
}

/// Builds the report; reads only the media folder's size.
pub fn report(inputs: &CutoverInputs) -> CutoverReport {
    let mut report = CutoverReport::default();
    let env_path = inputs
        .env
        .as_ref()
        .map(|env| env.path.display().to_string())
        .unwrap_or_else(|| ".env.production".into());

    report.todo.push(format!(
        "copy {env_path} to the new server (it holds the secrets; without them users are \
         logged out, two-factor logins and Web Push stop working)"
    ));
    match &inputs.env {
        Some(env) => report.warnings.extend(missing_secrets(env, inputs)),
        None => report.warnings.push(
            "no .env.production was found (set mastodon.env_file): check that the copy you move \
             has SECRET_KEY_BASE, OTP_SECRET, the VAPID keys and (4.3+) the \
             ACTIVE_RECORD_ENCRYPTION_* keys"
                .into(),
        ),
    }

    let uses_url = inputs
        .env
        .as_ref()
        .is_some_and(|env| env.get("DATABASE_URL").is_some());
    report.todo.push(if uses_url {
        format!(
            "point DATABASE_URL in .env.production at the new server: host {}, port {}, \
             database {}",
            inputs.new_host, inputs.new_port, inputs.new_database
        )
    } else {
        format!(
            "point Mastodon at the new server in .env.production: DB_HOST={} DB_PORT={} DB_NAME={}",
            inputs.new_host, inputs.new_port, inputs.new_database
        )
    });

    if inputs.media_in_bucket {
        report.todo.push(
            "media: they are in the bucket (S3_ENABLED), nothing to copy; keep the S3_* settings"
                .into(),
        );
    } else {
        let (files, bytes) = folder_size(&inputs.media_root);
        report.todo.push(format!(
            "media: copy {} ({files} files, {}) to the new server with `rsync -a`, or move it to \
             a bucket first with `tusk media push`",
            inputs.media_root.display(),
            human_bytes(bytes)
        ));
    }

    report.todo.push(match &inputs.redis_in_set {
        Some(id) => format!(
            "Redis: set {id} holds Sidekiq's Redis, taken with the app stopped; on the new server, \
             with Redis stopped, `tusk restore {id} --no-database --redis-to DIR` (DIR: Redis' data \
             directory, /var/lib/redis, or the redis volume's directory in Docker), then start Redis"
        ),
        None => "Redis: on the old server `redis-cli SAVE`, then copy its dump.rdb to the new \
                 server before Redis starts there (an empty Redis loses only queued jobs; feeds \
                 are rebuilt below)"
            .into(),
    });
    report.todo.push(
        "start Mastodon on the new server, then rebuild the home feeds: \
         `RAILS_ENV=production bin/tootctl feeds build` (Docker: \
         `docker compose run --rm web bin/tootctl feeds build`)"
            .into(),
    );
    let search = inputs
        .env
        .as_ref()
        .and_then(|env| env.get("ES_ENABLED"))
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    if search {
        report.todo.push(
            "Elasticsearch is configured (ES_ENABLED=true): `RAILS_ENV=production bin/tootctl \
             search deploy` on the new server"
                .into(),
        );
    }
    report.todo.push(if inputs.source_restarted {
        format!(
            "the old app ({}) runs again (--restart-source): whatever it writes now is not in \
             the new server",
            inputs.source_app
        )
    } else {
        format!(
            "the old app ({}) stays stopped: do not start it against the old database, or posts \
             written there are lost; move DNS to the new server",
            inputs.source_app
        )
    });
    report
}

fn missing_secrets(env: &EnvFile, inputs: &CutoverInputs) -> Vec<String> {
    let mut warnings = Vec::new();
    let missing: Vec<&str> = SECRETS
        .into_iter()
        .filter(|key| env.get(key).is_none())
        .collect();
    if !missing.is_empty() {
        warnings.push(format!(
            "{} lacks {}: copy them from wherever the running app gets them (they cannot be \
             made anew without logging everyone out)",
            env.path.display(),
            missing.join(", ")
        ));
    }
    let needs_encryption = inputs
        .schema_version
        .as_deref()
        .is_some_and(|version| version >= MASTODON_4_3_FIRST_SCHEMA);
    if needs_encryption {
        let missing: Vec<&str> = ENCRYPTION_KEYS
            .into_iter()
            .filter(|key| env.get(key).is_none())
            .collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "{} lacks {}: Mastodon 4.3+ does not boot without them, and encrypted columns \
                 cannot be read with new ones",
                env.path.display(),
                missing.join(", ")
            ));
        }
    }
    warnings
}

/// Files and bytes under `root`; a missing folder is empty.
fn folder_size(root: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(env: &str, schema: &str) -> CutoverInputs {
        CutoverInputs {
            env: Some(
                EnvFile::parse(Path::new("/home/mastodon/live/.env.production"), env).unwrap(),
            ),
            media_in_bucket: false,
            media_root: PathBuf::from("/nonexistent/public/system"),
            schema_version: Some(schema.into()),
            new_host: "10.0.0.5".into(),
            new_port: 5432,
            new_database: "mastodon_production".into(),
            source_restarted: false,
            source_app: "web, streaming, sidekiq".into(),
            redis_in_set: None,
        }
    }

    #[test]
    fn redis_in_the_set_is_restored_with_tusk_else_copied_by_hand() {
        let by_hand = report(&inputs("SECRET_KEY_BASE=x\n", "20241007071624"));
        assert!(by_hand.todo.iter().any(|t| t.contains("redis-cli SAVE")));
        let mut with_redis = inputs("SECRET_KEY_BASE=x\n", "20241007071624");
        with_redis.redis_in_set = Some("social-20261208T020000Z".into());
        let report = report(&with_redis);
        assert!(
            report
                .todo
                .iter()
                .any(|t| t
                    .contains("tusk restore social-20261208T020000Z --no-database --redis-to DIR")),
            "{:?}",
            report.todo
        );
    }

    #[test]
    fn names_missing_secrets_and_4_3_keys() {
        let report = report(&inputs(
            "SECRET_KEY_BASE=x\nOTP_SECRET=y\n",
            "20241007071624",
        ));
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("VAPID_PRIVATE_KEY, VAPID_PUBLIC_KEY"));
        assert!(report.warnings[1].contains("ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY"));
        // A 4.2 schema does not need the encryption keys.
        let older = report_for(
            "SECRET_KEY_BASE=x\nOTP_SECRET=y\nVAPID_PRIVATE_KEY=a\nVAPID_PUBLIC_KEY=b\n",
            "20230907150100",
        );
        assert!(older.warnings.is_empty(), "{:?}", older.warnings);
    }

    fn report_for(env: &str, schema: &str) -> CutoverReport {
        report(&inputs(env, schema))
    }

    #[test]
    fn search_and_db_host_follow_the_env_file() {
        let with_search = report_for("ES_ENABLED=true\n", "1");
        assert!(with_search.todo.iter().any(|t| t.contains("search deploy")));
        assert!(
            with_search
                .todo
                .iter()
                .any(|t| t.contains("DB_HOST=10.0.0.5"))
        );
        let without = report_for("DATABASE_URL=postgresql://a@b/c\n", "1");
        assert!(!without.todo.iter().any(|t| t.contains("search deploy")));
        assert!(without.todo.iter().any(|t| t.contains("DATABASE_URL")));
    }
}
