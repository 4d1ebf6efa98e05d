//! `manifest.json`: what a backup set holds and what the database looked
//! like in the snapshot that was dumped; and `verification.json`, the
//! outcome of the last `tusk verify`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::content::ContentDigests;
use super::encryption::EncryptionInfo;
use super::properties::DatabaseProperties;
use crate::set::Compression;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const VERIFICATION_FILE: &str = "verification.json";
/// The newest layout this tusk reads. Sets are written as format 1 unless
/// they hold something a format-1 reader would misread: encryption, or
/// artefacts other than the globals and the database
/// ([`Manifest::required_format`]).
pub const MANIFEST_FORMAT: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version of this file.
    pub format: u32,
    pub id: String,
    pub instance: String,
    pub tool: ToolInfo,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub source: SourceInfo,
    pub database: DatabaseFacts,
    pub compression: CompressionInfo,
    pub artefacts: Vec<Artefact>,
    /// Seconds per stage (`connect`, `globals`, `database`, `finish`).
    pub durations: BTreeMap<String, f64>,
    /// Things an operator should know about this set, e.g. missing role passwords.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Digests of every table's rows, the sequences' values and the large
    /// objects, taken from the archive as it was written; absent in sets
    /// written before tusk recorded them (verify then computes them from
    /// the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentDigests>,
    /// How the artefacts are encrypted; absent for a set in clear text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
    /// The Mastodon version that wrote the database, as far as it was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mastodon: Option<MastodonInfo>,
    /// What the check of `.env.production` found, when the set includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsCheck>,
}

/// The Mastodon version of the instance backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MastodonInfo {
    /// `4.3.2`, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the version came from: `image` (the web container's image
    /// tag), `tootctl` (`tootctl version` in it) or `schema` (the newest
    /// migration, which names a release series only).
    pub source: String,
    /// The web container's image, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The secrets Mastodon cannot do without, checked in `.env.production`
/// before the set is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsCheck {
    /// The file checked.
    pub env_file: String,
    /// Variables missing or empty there: without them two-factor logins,
    /// web push or encrypted columns are lost for good.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `postgresql://user@host:port/db`, never with a password.
    pub server: String,
    pub server_version: String,
    pub server_major: u32,
    pub pg_dump_version: String,
    /// `direct` or `docker`.
    pub mode: String,
    pub superuser: bool,
    /// False when the dumping role could not read password hashes.
    pub role_passwords: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseFacts {
    pub name: String,
    pub owner: String,
    pub encoding: String,
    pub size_bytes: i64,
    pub schema_migrations: Option<MigrationsFacts>,
    /// Exact row count of every table, keyed `table` (public schema) or
    /// `schema.table`, counted in the snapshot that was dumped.
    pub tables: BTreeMap<String, i64>,
    /// Whether Mastodon's `timestamp_id()` function exists.
    pub timestamp_id: bool,
    /// Every sequence, schema-qualified.
    pub sequences: Vec<String>,
    /// Settings, comment and privileges of the database itself; absent in
    /// sets written before tusk recorded them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<DatabaseProperties>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationsFacts {
    pub count: i64,
    pub max: Option<String>,
    /// sha256 of the sorted versions joined by newlines.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CompressionInfo {
    pub algorithm: Compression,
    pub level: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtefactKind {
    /// `pg_dumpall --globals-only`, plain SQL.
    Globals,
    /// `pg_dump --format=custom`.
    Database,
    /// Mastodon's `.env.production`: its secrets.
    Secrets,
    /// A deployment file: the compose file or the compose project's `.env`.
    Deployment,
    /// An RDB snapshot of a Redis server (`redis-cli --rdb`).
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artefact {
    pub name: String,
    pub kind: ArtefactKind,
    pub bytes: u64,
    pub sha256: String,
    pub uncompressed_bytes: u64,
    /// For a file of the instance (secrets, deployment files): the name it
    /// is written back as by `restore --files-to`, e.g. `.env.production`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Where it was read from, e.g. `/home/mastodon/live/.env.production`,
    /// or for Redis the server (never a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For a Redis snapshot: which server, and what it held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<crate::set::redis::RedisFacts>,
}

impl Manifest {
    pub fn artefact(&self, kind: ArtefactKind) -> Option<&Artefact> {
        self.artefacts.iter().find(|a| a.kind == kind)
    }

    pub fn total_bytes(&self) -> u64 {
        self.artefacts.iter().map(|a| a.bytes).sum()
    }

    /// The oldest layout that describes this set completely: a format-1
    /// reader would take an encrypted artefact for a compressed one.
    pub fn required_format(&self) -> u32 {
        let only_format_1_kinds = self
            .artefacts
            .iter()
            .all(|a| matches!(a.kind, ArtefactKind::Globals | ArtefactKind::Database));
        if self.encryption.is_none() && only_format_1_kinds {
            1
        } else {
            2
        }
    }
}

/// The outcome of the last `tusk verify` of a set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub verified_at: DateTime<Utc>,
    pub ok: bool,
    pub checksums_only: bool,
    /// Where the scratch restore ran (no password).
    pub server: Option<String>,
    pub restore_seconds: Option<f64>,
    pub peak_database_bytes: Option<i64>,
    pub problems: Vec<Problem>,
}

/// One difference between a set and what it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `checksum`, `size`, `missing`, `row_count`, `schema_migrations`,
    /// `object`, `database_property`.
    pub kind: String,
    /// The artefact, table or object concerned.
    pub subject: String,
    pub expected: String,
    pub got: String,
}
