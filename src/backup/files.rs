//! The instance's own files in a set: `.env.production` (its secrets) and,
//! in Docker mode, the compose files and the compose project's `.env`.
//!
//! A dump alone does not bring an instance back: without the secrets in
//! `.env.production` two-factor logins, web push and encrypted columns are
//! lost for good. Files that hold secrets go into a set only when it is
//! encrypted, or when the operator says so (`--include-secrets-unencrypted`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::mastodon::env_file::EnvFile;
use crate::mastodon::secrets::{missing_secrets, schema_is_4_3_or_later};
use crate::set::encryption::Encryption;
use crate::set::manifest::{ArtefactKind, DatabaseFacts, MastodonInfo, SecretsCheck};

/// What a set holds beside the roles and the database, and how it is
/// sealed: decided by the caller (the settings), written by the backup.
#[derive(Debug, Clone, Default)]
pub struct SetContents {
    /// Encrypt every artefact; `None` writes them in clear text.
    pub encryption: Option<Encryption>,
    /// The instance's files to include ([`plan`]).
    pub files: Vec<InstanceFile>,
    /// Mastodon's `.env.production`, checked for its secrets.
    pub env_file: Option<EnvFile>,
    /// The Mastodon version, when the app containers tell it; else the
    /// backup takes it from the schema.
    pub mastodon: Option<MastodonInfo>,
    /// Redis servers to snapshot: Sidekiq's, and the cache's when asked.
    pub redis: Vec<super::redis::RedisSnapshot>,
    /// What the operator should know about the contents (files left out).
    pub notes: Vec<String>,
}

/// Checks `.env.production` for the secrets a restore cannot do without;
/// logs a warning and returns what the manifest records.
pub fn check_secrets(env: &EnvFile, facts: &DatabaseFacts) -> SecretsCheck {
    let four_three = facts
        .schema_migrations
        .as_ref()
        .and_then(|m| m.max.as_deref())
        .is_some_and(schema_is_4_3_or_later);
    let missing = missing_secrets(env, four_three);
    if !missing.is_empty() {
        tracing::warn!(
            "{} lacks {}: without them a restored instance loses two-factor logins, web push \
             subscriptions or encrypted columns for good; find the values and add them",
            env.path.display(),
            missing.join(", ")
        );
    }
    SecretsCheck {
        env_file: env.path.display().to_string(),
        missing,
    }
}

/// The version the manifest records: the containers' word, else the schema's.
pub fn mastodon_info(found: Option<MastodonInfo>, facts: &DatabaseFacts) -> Option<MastodonInfo> {
    if found.as_ref().is_some_and(|info| info.version.is_some()) {
        return found;
    }
    let newest = facts.schema_migrations.as_ref()?.max.as_deref()?;
    Some(MastodonInfo {
        version: crate::mastodon::secrets::version_from_schema(newest),
        source: "schema".into(),
        image: found.and_then(|info| info.image),
    })
}

/// The stored name of an artefact: `database.dump` + `.zst` + `.age`.
pub fn stored_name(stem: &str, compression_suffix: &str, encrypted: bool) -> String {
    let age = if encrypted {
        crate::set::encryption::AGE_SUFFIX
    } else {
        ""
    };
    format!("{stem}{compression_suffix}{age}")
}

/// One file to put in the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFile {
    /// `Secrets` or `Deployment`.
    pub kind: ArtefactKind,
    /// Where it is read from.
    pub path: PathBuf,
    /// The name `restore --files-to` writes it back as.
    pub restore_as: String,
    /// The artefact's name before the compression and encryption suffixes,
    /// never hidden (no leading dot): `env.production`.
    pub stored_stem: String,
}

/// The files a Docker deployment has beside `.env.production`.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFiles {
    /// The compose files that started the database container.
    pub compose_files: Vec<PathBuf>,
    /// The compose project's `.env`, when it exists.
    pub compose_env: Option<PathBuf>,
}

/// Which files go into the set, and notes on the ones left out.
pub fn plan(
    env_production: Option<&Path>,
    deployment: &DeploymentFiles,
    encrypted: bool,
    include_secrets_unencrypted: bool,
    notes: &mut Vec<String>,
) -> Vec<InstanceFile> {
    let secrets_allowed = encrypted || include_secrets_unencrypted;
    let mut files = Vec::new();
    let mut stems = BTreeSet::new();
    let mut add = |kind, path: &Path, restore_as: String, stem: String| {
        // Two compose files of the same name (from different directories)
        // must not overwrite each other in the set.
        let mut unique = stem.clone();
        let mut n = 2;
        while !stems.insert(unique.clone()) {
            unique = format!("{n}-{stem}");
            n += 1;
        }
        files.push(InstanceFile {
            kind,
            path: path.to_path_buf(),
            restore_as,
            stored_stem: unique,
        });
    };
    let mut left_out = Vec::new();
    if let Some(path) = env_production {
        if secrets_allowed {
            add(
                ArtefactKind::Secrets,
                path,
                ".env.production".into(),
                "env.production".into(),
            );
        } else {
            left_out.push(path.display().to_string());
        }
    }
    for compose in &deployment.compose_files {
        let name = compose
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "docker-compose.yml".into());
        let stem = name.trim_start_matches('.').to_string();
        add(ArtefactKind::Deployment, compose, name, stem);
    }
    if let Some(env) = &deployment.compose_env {
        // Compose's .env often holds the database password.
        if secrets_allowed {
            add(
                ArtefactKind::Secrets,
                env,
                ".env".into(),
                "compose.env".into(),
            );
        } else {
            left_out.push(env.display().to_string());
        }
    }
    if !left_out.is_empty() {
        let note = format!(
            "{} not included: the set is not encrypted. Configure encryption (encryption.recipients \
             in tusk.yaml) or pass --include-secrets-unencrypted, and keep a copy: without its \
             secrets the database alone does not bring the instance back",
            left_out.join(" and ")
        );
        tracing::warn!("{note}");
        notes.push(note);
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> DeploymentFiles {
        DeploymentFiles {
            compose_files: vec![
                "/srv/mastodon/docker-compose.yml".into(),
                "/srv/other/docker-compose.yml".into(),
            ],
            compose_env: Some("/srv/mastodon/.env".into()),
        }
    }

    #[test]
    fn secrets_go_in_only_when_encrypted_or_asked_for() {
        let env = Path::new("/srv/mastodon/.env.production");
        let mut notes = Vec::new();
        let encrypted = plan(Some(env), &deployment(), true, false, &mut notes);
        assert!(notes.is_empty());
        let stems: Vec<(&str, &str)> = encrypted
            .iter()
            .map(|f| (f.stored_stem.as_str(), f.restore_as.as_str()))
            .collect();
        assert_eq!(
            stems,
            vec![
                ("env.production", ".env.production"),
                ("docker-compose.yml", "docker-compose.yml"),
                ("2-docker-compose.yml", "docker-compose.yml"),
                ("compose.env", ".env"),
            ]
        );

        let clear = plan(Some(env), &deployment(), false, false, &mut notes);
        assert!(clear.iter().all(|f| f.kind == ArtefactKind::Deployment));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains(".env.production") && notes[0].contains("/srv/mastodon/.env"));

        let mut notes = Vec::new();
        let asked = plan(
            Some(env),
            &DeploymentFiles::default(),
            false,
            true,
            &mut notes,
        );
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].kind, ArtefactKind::Secrets);
        assert!(notes.is_empty());
    }
}
