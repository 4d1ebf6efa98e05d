//! A local directory seen as objects: keys are relative paths.

use std::path::Path;

use anyhow::{Context, Result};
use md5::{Digest, Md5};

use super::ObjectInfo;

/// The MD5 of a file's content, hex.
pub async fn file_md5(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("could not read {}", path.display()))?;
        let mut hasher = Md5::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await?
}

/// Every regular file under `root` as an object (no ETag: computing MD5s
/// for a listing would read every file).
pub fn walk(root: &Path) -> Result<Vec<ObjectInfo>> {
    let mut objects = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && dir == root => break,
            Err(err) => {
                return Err(err).with_context(|| format!("could not read {}", dir.display()));
            }
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let key = key_of(root, &path)?;
                objects.push(ObjectInfo {
                    key,
                    size: entry.metadata()?.len(),
                    etag: None,
                });
            }
        }
    }
    Ok(objects)
}

/// `root/a/b/c.png` -> `a/b/c.png`, always with `/`.
pub fn key_of(root: &Path, path: &Path) -> Result<String> {
    let relative = path
        .strip_prefix(root)
        .with_context(|| format!("{} is outside {}", path.display(), root.display()))?;
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Ok(parts.join("/"))
}
