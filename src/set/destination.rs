//! Where backup sets are kept: a local directory or a bucket, each with
//! its retention policy (`destinations:` in tusk.yaml).

use std::path::PathBuf;
use std::sync::Arc;

use crate::set::retention::RetentionPolicy;
use crate::storage::Storage;
use crate::storage::multipart::PartSizes;

/// One destination of backup sets.
#[derive(Clone)]
pub struct Destination {
    pub name: String,
    pub retention: RetentionPolicy,
    pub place: Place,
    /// Why it cannot be used (a bucket without credentials), said when it
    /// is used rather than by every command.
    pub unusable: Option<String>,
}

/// A directory or a bucket.
#[derive(Clone)]
pub enum Place {
    Dir(PathBuf),
    Bucket(Bucket),
}

/// Sets under a key prefix in a bucket: `<prefix><id>/<file>`.
#[derive(Clone)]
pub struct Bucket {
    pub storage: Arc<dyn Storage>,
    /// Empty, or ending in `/`.
    pub prefix: String,
    /// How artefacts are cut into parts (`max_parts`).
    pub parts: PartSizes,
}

impl Destination {
    /// The directory, when the destination is one.
    pub fn dir(&self) -> Option<&PathBuf> {
        match &self.place {
            Place::Dir(dir) => Some(dir),
            Place::Bucket(_) => None,
        }
    }

    /// `/var/backups/tusk` or `s3://bucket at endpoint, prefix p/`.
    pub fn describe(&self) -> String {
        match &self.place {
            Place::Dir(dir) => dir.display().to_string(),
            Place::Bucket(bucket) => bucket.describe(),
        }
    }
}

impl Bucket {
    pub fn describe(&self) -> String {
        match self.prefix.is_empty() {
            true => self.storage.describe(),
            false => format!("{}, prefix {}", self.storage.describe(), self.prefix),
        }
    }
}

/// One run at a time per destination: the directory's lock file or the
/// bucket's lock object.
pub enum DestinationLock {
    Dir(super::DirLock),
    Bucket(super::bucket::BucketLock),
}

impl DestinationLock {
    /// Takes the destination's lock for `command` (exit 4 when another run
    /// holds it past `policy.wait`).
    pub async fn acquire(
        destination: &Destination,
        command: &str,
        policy: &super::LockPolicy,
    ) -> anyhow::Result<Self> {
        match &destination.place {
            Place::Dir(dir) => Ok(DestinationLock::Dir(
                super::DirLock::acquire(dir, command, policy).await?,
            )),
            Place::Bucket(bucket) => Ok(DestinationLock::Bucket(
                super::bucket::BucketLock::acquire(bucket, command, policy).await?,
            )),
        }
    }

    /// Lets the next run in (a lock object must be deleted; a directory's
    /// lock goes with its file).
    pub async fn release(self) -> anyhow::Result<()> {
        match self {
            DestinationLock::Dir(lock) => {
                drop(lock);
                Ok(())
            }
            DestinationLock::Bucket(lock) => lock.release().await,
        }
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Destination({} at {})", self.name, self.describe())
    }
}

/// A key prefix as tusk uses it: no leading `/`, and a trailing one unless empty.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    match trimmed.is_empty() {
        true => String::new(),
        false => format!("{trimmed}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_in_one_slash() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("mastodon"), "mastodon/");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
    }
}
