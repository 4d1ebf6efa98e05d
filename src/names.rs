//! Names for the things tusk creates for a while and removes again:
//! staging and scratch databases, helper containers, temporary files.

/// PostgreSQL's limit on identifier length, in bytes.
pub const MAX_IDENTIFIER: usize = 63;

/// The purpose in a restore's staging database name, `<target>_tusk_restore_<random>`.
pub const STAGING_PURPOSE: &str = "tusk_restore";
/// The purpose in the name a replaced database gets until it is dropped,
/// `<target>_tusk_old_<random>`.
pub const ASIDE_PURPOSE: &str = "tusk_old";
/// The prefix of verify's scratch databases, `tusk_verify_<random>`.
pub const VERIFY_PREFIX: &str = "tusk_verify_";

/// `<base>_<purpose>_<random>`, cut to PostgreSQL's identifier limit.
pub fn staging_name(base: &str, purpose: &str) -> String {
    let suffix = format!("_{purpose}_{}", random_hex());
    let mut keep = MAX_IDENTIFIER.saturating_sub(suffix.len());
    while !base.is_char_boundary(keep.min(base.len())) {
        keep -= 1;
    }
    format!("{}{suffix}", &base[..keep.min(base.len())])
}

/// A name for verify's scratch database.
pub fn verify_scratch_name() -> String {
    format!("{VERIFY_PREFIX}{}", random_hex())
}

/// Eight random hex digits for names of scratch databases and files.
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:08x}", hasher.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_fit_postgres_identifiers() {
        let long = "m".repeat(80);
        let name = staging_name(&long, "tusk_restore");
        assert_eq!(name.len(), MAX_IDENTIFIER);
        assert!(name.contains("_tusk_restore_"));
        assert!(staging_name("mastodon", "tusk_restore").starts_with("mastodon_tusk_restore_"));
    }
}
