//! The secrets in `.env.production` that a database dump cannot bring back,
//! and the Mastodon version of an instance.
//!
//! Without `SECRET_KEY_BASE` sessions and signed ids break; without
//! `OTP_SECRET` two-factor logins are lost; without the VAPID keys every web
//! push subscription stops; from 4.3 on, without the three
//! `ACTIVE_RECORD_ENCRYPTION_*` keys the encrypted columns (two-factor
//! secrets among them) cannot be read. Mastodon's backup guide ranks this
//! file right after the database.

use super::env_file::EnvFile;

/// Every Mastodon version needs these.
pub const REQUIRED_SECRETS: [&str; 4] = [
    "SECRET_KEY_BASE",
    "OTP_SECRET",
    "VAPID_PRIVATE_KEY",
    "VAPID_PUBLIC_KEY",
];

/// Mastodon 4.3 and later encrypt columns with these.
pub const ACTIVE_RECORD_ENCRYPTION_SECRETS: [&str; 3] = [
    "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY",
    "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT",
    "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY",
];

/// The newest migration of Mastodon 4.3.0-rc.1: a schema at or past it is
/// 4.3 or later (every 4.3.x release ends at `20241007071624`).
pub const FIRST_4_3_SCHEMA: &str = "20240916190140";

/// Whether a schema (its newest migration, digits only) is Mastodon 4.3 or later.
pub fn schema_is_4_3_or_later(newest_migration: &str) -> bool {
    let digits: String = newest_migration
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    // Versions are timestamps of equal length: compare them as numbers.
    match (digits.parse::<u64>(), FIRST_4_3_SCHEMA.parse::<u64>()) {
        (Ok(version), Ok(first)) => version >= first,
        _ => false,
    }
}

/// The secrets missing (or empty) in `env`, in the order above; the 4.3
/// keys only for a 4.3+ schema.
pub fn missing_secrets(env: &EnvFile, four_three_or_later: bool) -> Vec<String> {
    let mut names: Vec<&str> = REQUIRED_SECRETS.to_vec();
    if four_three_or_later {
        names.extend(ACTIVE_RECORD_ENCRYPTION_SECRETS);
    }
    names
        .into_iter()
        .filter(|name| env.get(name).is_none())
        .map(str::to_string)
        .collect()
}

/// The version in an image reference's tag: `ghcr.io/mastodon/mastodon:v4.3.2`
/// gives `4.3.2`; a tag that is not a version (`latest`, a digest) gives none.
pub fn version_from_image(image: &str) -> Option<String> {
    let without_digest = image.split('@').next()?;
    // The tag follows the last colon after the last slash (a registry may have a port).
    let name = without_digest.rsplit('/').next()?;
    let (_, tag) = name.rsplit_once(':')?;
    version_from_text(tag)
}

/// A version as `tootctl version` prints it (`4.3.2`, `4.3.2+glitch`), or
/// a tag (`v4.3.2`, `v4.3.0-rc.1`).
pub fn version_from_text(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text.strip_prefix('v').unwrap_or(text);
    let numeric: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let parts: Vec<&str> = numeric.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    // Keep a pre-release or build suffix as written: it names the release.
    let version = text.split_whitespace().next()?;
    Some(version.to_string())
}

/// What a schema tells of the version when nothing else does: the release
/// series, as far as tusk knows them.
pub fn version_from_schema(newest_migration: &str) -> Option<String> {
    if schema_is_4_3_or_later(newest_migration) {
        Some("4.3 or later".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn env(text: &str) -> EnvFile {
        EnvFile::parse(Path::new(".env.production"), text).unwrap()
    }

    #[test]
    fn missing_secrets_depend_on_the_schema() {
        let full = "SECRET_KEY_BASE=a\nOTP_SECRET=b\nVAPID_PRIVATE_KEY=c\nVAPID_PUBLIC_KEY=d\n";
        assert!(missing_secrets(&env(full), false).is_empty());
        assert_eq!(
            missing_secrets(&env(full), true),
            ACTIVE_RECORD_ENCRYPTION_SECRETS.map(String::from).to_vec()
        );
        let partial = "SECRET_KEY_BASE=a\nOTP_SECRET=\nVAPID_PUBLIC_KEY=d\n\
                       ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY=x\n\
                       ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT=y\n\
                       ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY=z\n";
        assert_eq!(
            missing_secrets(&env(partial), true),
            vec!["OTP_SECRET", "VAPID_PRIVATE_KEY"]
        );
    }

    #[test]
    fn the_4_3_schema_is_recognised() {
        assert!(schema_is_4_3_or_later("20241007071624"));
        assert!(schema_is_4_3_or_later("2024_09_16_190140"));
        assert!(!schema_is_4_3_or_later("20230908132437"));
        assert!(!schema_is_4_3_or_later(""));
        assert_eq!(
            version_from_schema("20241007071624").as_deref(),
            Some("4.3 or later")
        );
        assert_eq!(version_from_schema("20230908132437"), None);
    }

    #[test]
    fn versions_come_from_image_tags_and_tootctl() {
        for (image, version) in [
            ("ghcr.io/mastodon/mastodon:v4.3.2", Some("4.3.2")),
            ("tootsuite/mastodon:v4.2.10", Some("4.2.10")),
            (
                "registry.example:5000/mastodon:v4.3.0-rc.1",
                Some("4.3.0-rc.1"),
            ),
            ("ghcr.io/mastodon/mastodon:latest", None),
            ("ghcr.io/mastodon/mastodon", None),
            ("registry.example:5000/mastodon", None),
            ("ghcr.io/mastodon/mastodon@sha256:abcdef", None),
        ] {
            assert_eq!(version_from_image(image).as_deref(), version, "{image}");
        }
        assert_eq!(version_from_text("4.3.2\n").as_deref(), Some("4.3.2"));
        assert_eq!(
            version_from_text("4.3.2+glitch").as_deref(),
            Some("4.3.2+glitch")
        );
        assert_eq!(version_from_text("Usage: tootctl"), None);
    }
}
