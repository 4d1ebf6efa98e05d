//! Mastodon's media folder (`public/system`) and its place in object
//! storage: keys, headers and ACLs exactly as Paperclip would have written
//! them, so Mastodon finds every file after `S3_ENABLED=true`.

pub mod push;
pub mod usage;
pub mod verify;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::storage::{PutOptions, content_type};

/// Paperclip's header on every upload: media never changes under its name.
pub const CACHE_CONTROL: &str = "public, max-age=315576000, immutable";

/// The object key for a path below the media root, under `S3_KEY_PREFIX`.
pub fn key_for(key_prefix: Option<&str>, relative: &str) -> String {
    match key_prefix {
        Some(prefix) => format!("{prefix}/{relative}"),
        None => relative.to_string(),
    }
}

/// The listing prefix that holds every media key.
pub fn list_prefix(key_prefix: Option<&str>) -> String {
    key_prefix.map(|p| format!("{p}/")).unwrap_or_default()
}

/// A local media tree and how its files map to keys and headers.
#[derive(Debug, Clone)]
pub struct MediaLayout {
    pub root: PathBuf,
    /// `S3_KEY_PREFIX` (Mastodon 4.3+), without slashes at the ends.
    pub key_prefix: Option<String>,
    /// `S3_PERMISSION`: the canned ACL for public media; `None` when ACLs are
    /// off (an empty `S3_PERMISSION`, as B2 and R2 need).
    pub permission: Option<String>,
}

/// One file of the local tree.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Path relative to the media root, `/`-separated.
    pub relative: String,
    pub path: PathBuf,
    pub size: u64,
    /// Permission bits: suspended accounts' media are 0600.
    pub mode: u32,
}

impl MediaLayout {
    /// The object key for a path relative to the media root.
    pub fn key_for(&self, relative: &str) -> String {
        key_for(self.key_prefix.as_deref(), relative)
    }

    /// The listing prefix that holds every media key.
    pub fn list_prefix(&self) -> String {
        list_prefix(self.key_prefix.as_deref())
    }

    /// The path relative to the media root for a key, if it is a media key.
    pub fn relative_for<'k>(&self, key: &'k str) -> Option<&'k str> {
        match &self.key_prefix {
            Some(prefix) => key.strip_prefix(prefix.as_str())?.strip_prefix('/'),
            None => Some(key),
        }
    }

    /// Headers for one file, as Mastodon sets them: its content type,
    /// Paperclip's Cache-Control, and the ACL — `private` for user archives
    /// and for suspended accounts' files (mode 0600), else `S3_PERMISSION`.
    pub fn put_options(&self, file: &LocalFile) -> PutOptions {
        let private = file.relative.starts_with("backups/") || file.mode & 0o077 == 0;
        PutOptions {
            content_type: content_type(&file.relative).to_string(),
            cache_control: Some(CACHE_CONTROL.to_string()),
            acl: self.permission.as_ref().map(|public| {
                if private {
                    "private".to_string()
                } else {
                    public.clone()
                }
            }),
        }
    }

    /// Every regular file under the root.
    pub async fn walk(&self) -> Result<Vec<LocalFile>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || walk_tree(&root)).await?
    }
}

fn walk_tree(root: &Path) -> Result<Vec<LocalFile>> {
    use std::os::unix::fs::PermissionsExt;
    if !root.is_dir() {
        return Err(crate::error::TuskError::usage(format!(
            "media root {} is not a directory; set mastodon.media_root or --media-root",
            root.display()
        )));
    }
    let mut files = Vec::new();
    for object in crate::storage::local::walk(root)? {
        let path = root.join(&object.key);
        let mode = std::fs::metadata(&path)?.permissions().mode();
        files.push(LocalFile {
            relative: object.key,
            path,
            size: object.size,
            mode,
        });
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(relative: &str, mode: u32) -> LocalFile {
        LocalFile {
            relative: relative.into(),
            path: PathBuf::from(relative),
            size: 1,
            mode,
        }
    }

    #[test]
    fn keys_follow_s3_key_prefix() {
        let layout = MediaLayout {
            root: "/srv/public/system".into(),
            key_prefix: Some("social".into()),
            permission: Some("public-read".into()),
        };
        let key = layout.key_for("accounts/avatars/000/000/001/original/a.png");
        assert_eq!(key, "social/accounts/avatars/000/000/001/original/a.png");
        assert_eq!(
            layout.relative_for(&key),
            Some("accounts/avatars/000/000/001/original/a.png")
        );
        assert_eq!(layout.relative_for("other/x"), None);
        assert_eq!(layout.list_prefix(), "social/");
    }

    #[test]
    fn acls_follow_mastodon() {
        let public = MediaLayout {
            root: "/".into(),
            key_prefix: None,
            permission: Some("public-read".into()),
        };
        let media = file("media_attachments/files/000/000/001/original/a.jpg", 0o644);
        let suspended = file("media_attachments/files/000/000/002/original/b.jpg", 0o600);
        let archive = file("backups/dumps/000/000/001/original/archive.zip", 0o644);
        assert_eq!(
            public.put_options(&media).acl.as_deref(),
            Some("public-read")
        );
        assert_eq!(
            public.put_options(&suspended).acl.as_deref(),
            Some("private")
        );
        assert_eq!(public.put_options(&archive).acl.as_deref(), Some("private"));
        assert_eq!(public.put_options(&media).content_type, "image/jpeg");
        assert_eq!(
            public.put_options(&media).cache_control.as_deref(),
            Some(CACHE_CONTROL)
        );

        let no_acls = MediaLayout {
            permission: None,
            ..public
        };
        assert_eq!(no_acls.put_options(&suspended).acl, None);
    }
}
