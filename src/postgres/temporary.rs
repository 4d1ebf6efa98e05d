//! Databases tusk creates for a while: a restore's staging database, the
//! replaced database set aside during the swap, verify's scratch database.
//!
//! Their names follow fixed patterns, and their creator marks each as in use
//! with a session-level advisory lock (see [`temporary_database_lock`]), so
//! a later run can drop the ones a killed run left (`janitor`) and never
//! one a live run uses.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::quote_ident;
use crate::names::{ASIDE_PURPOSE, STAGING_PURPOSE, VERIFY_PREFIX};

/// Whether `name` is exactly a name tusk gives a database it creates for a
/// while: a staging, a set-aside or a verify scratch database.
pub fn is_temporary_database(name: &str) -> bool {
    let is_random = |tail: &str| {
        tail.len() == 8 && tail.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match name.strip_prefix(VERIFY_PREFIX) {
        Some(tail) => is_random(tail),
        None => [STAGING_PURPOSE, ASIDE_PURPOSE].iter().any(|purpose| {
            name.rsplit_once(&format!("_{purpose}_"))
                .is_some_and(|(_, tail)| is_random(tail))
        }),
    }
}

/// The session-level advisory lock that marks a temporary database as in
/// use. Its creator holds it on its maintenance-database session from before
/// the database exists until it is dropped or renamed, so when a later run
/// can take it, the creator is gone (advisory locks belong to one database,
/// hence always the maintenance database's session).
pub fn temporary_database_lock(name: &str) -> i64 {
    let digest = Sha256::digest(format!("tusk temporary database {name}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

/// Takes the lock of a temporary database on `admin`, held until that
/// session ends.
pub async fn hold_temporary_database(admin: &Client, name: &str) -> Result<()> {
    admin
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&temporary_database_lock(name)],
        )
        .await
        .with_context(|| format!("could not take the advisory lock for database {name}"))?;
    Ok(())
}

/// `DROP DATABASE ... WITH (FORCE)`, after clearing the template flag a
/// restored database may carry (a template cannot be dropped).
pub async fn force_drop(admin: &Client, name: &str) -> Result<()> {
    let template = admin
        .query_opt(
            "SELECT datistemplate FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await?
        .is_some_and(|row| row.get(0));
    if template {
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} IS_TEMPLATE false",
                quote_ident(name)
            ))
            .await?;
    }
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_tusk_names_count_as_temporary_databases() {
        for made in [
            "mastodon_tusk_restore_0a1b2c3d",
            "_tusk_restore_0a1b2c3d",
            "mastodon_tusk_old_deadbeef",
            "tusk_verify_12345678",
        ] {
            assert!(is_temporary_database(made), "{made}");
        }
        for other in [
            "mastodon",
            "tusk_verify_",
            "tusk_verify_1234567",
            "tusk_verify_123456789",
            "tusk_verify_ABCDEF12",
            "tusk_verify_a_deadbeef",
            "x_tusk_verify_deadbeef",
            "mastodon_tusk_restore_keepme00",
            "mastodon_tusk_restore_deadbeef_copy",
            "mastodon_tusk_old_",
        ] {
            assert!(!is_temporary_database(other), "{other}");
        }
        assert_ne!(
            temporary_database_lock("a_tusk_restore_00000000"),
            temporary_database_lock("a_tusk_restore_00000001")
        );
    }
}
