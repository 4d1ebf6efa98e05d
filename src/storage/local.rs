//! A local directory seen as objects: keys are relative paths.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use futures_util::StreamExt;
use md5::{Digest, Md5};

use bytes::Bytes;

use super::{
    DELETE_BATCH, ObjectInfo, ObjectMeta, ObjectReader, PutMode, PutOptions, PutOutcome, Storage,
};

/// A directory as a store: Mastodon's `public/system` when media stay local.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: PathBuf) -> Self {
        LocalStorage { root }
    }

    /// The file for a key; keys that would leave the root are refused.
    fn path_of(&self, key: &str) -> Result<PathBuf> {
        let relative = Path::new(key);
        if key.is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            bail!(
                "refusing key {key:?}: not a plain path below {}",
                self.root.display()
            );
        }
        Ok(self.root.join(relative))
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn put_file(&self, key: &str, path: &Path, _size: u64, _opts: &PutOptions) -> Result<()> {
        let target = self.path_of(key)?;
        let source = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let parent = target.parent().expect("a key has a parent: the root");
            std::fs::create_dir_all(parent)
                .with_context(|| format!("could not create {}", parent.display()))?;
            // Copy beside the target and rename, so no reader sees half a file.
            let partial = target.with_extension("tusk-partial");
            std::fs::copy(&source, &partial).with_context(|| {
                format!(
                    "could not copy {} to {}",
                    source.display(),
                    partial.display()
                )
            })?;
            std::fs::rename(&partial, &target)?;
            Ok(())
        })
        .await?
    }

    fn list(&self, prefix: String, start_after: Option<String>) -> super::Pages<'_> {
        let root = self.root.clone();
        let listed = async move {
            let mut objects = tokio::task::spawn_blocking(move || walk(&root)).await??;
            objects.retain(|o| {
                o.key.starts_with(&prefix)
                    && start_after
                        .as_deref()
                        .is_none_or(|after| o.key.as_str() > after)
            });
            objects.sort_by(|a, b| a.key.cmp(&b.key));
            let pages: Vec<Result<Vec<ObjectInfo>>> = objects
                .chunks(DELETE_BATCH)
                .map(|page| Ok(page.to_vec()))
                .collect();
            Ok::<_, anyhow::Error>(futures_util::stream::iter(pages))
        };
        futures_util::stream::once(listed)
            .map(|walked| match walked {
                Ok(pages) => pages.left_stream(),
                Err(err) => futures_util::stream::once(async { Err(err) }).right_stream(),
            })
            .flatten()
            .boxed()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta {
                size: meta.len(),
                etag: None,
                content_type: Some(super::content_type(key).to_string()),
            })),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("could not read {}", path.display())),
        }
    }

    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        use tokio::io::AsyncSeekExt;
        let path = self.path_of(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("could not read {}", path.display()));
            }
        };
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset)).await?;
        }
        Ok(Some(Box::new(file)))
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        _opts: &PutOptions,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        let target = self.path_of(key)?;
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let parent = target.parent().expect("a key has a parent: the root");
            std::fs::create_dir_all(parent)
                .with_context(|| format!("could not create {}", parent.display()))?;
            if mode == PutMode::CreateOnly {
                // create_new is the file system's conditional write.
                return match std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                {
                    Ok(mut file) => {
                        file.write_all(&body)?;
                        Ok(PutOutcome::Written)
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        Ok(PutOutcome::Exists)
                    }
                    Err(err) => {
                        Err(err).with_context(|| format!("could not create {}", target.display()))
                    }
                };
            }
            let partial = target.with_extension("tusk-partial");
            std::fs::write(&partial, &body)
                .with_context(|| format!("could not write {}", partial.display()))?;
            std::fs::rename(&partial, &target)?;
            Ok(PutOutcome::Written)
        })
        .await?
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<()> {
        let paths = keys
            .iter()
            .map(|key| self.path_of(key))
            .collect::<Result<Vec<_>>>()?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            for path in &paths {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(err)
                            .with_context(|| format!("could not delete {}", path.display()));
                    }
                }
                remove_empty_parents(&root, path);
            }
            Ok(())
        })
        .await?
    }
}

/// Removes the now-empty folders above a deleted file, as Paperclip does,
/// stopping at the first one that still holds something. It never climbs to
/// or above `root`, nor touches a path outside it.
pub fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(current) = dir {
        if current == root || !current.starts_with(root) || std::fs::remove_dir(current).is_err() {
            break;
        }
        dir = current.parent();
    }
}

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

/// Directories read at once by [`walk`]: a cold media tree is thousands of
/// small directories, and the disk answers several reads at a time.
const WALKERS: usize = 16;

/// Every regular file under `root` as an object (no ETag: computing MD5s
/// for a listing would read every file), in no particular order.
pub fn walk(root: &Path) -> Result<Vec<ObjectInfo>> {
    use std::sync::{Condvar, Mutex};
    struct Queue {
        dirs: Vec<PathBuf>,
        busy: usize,
        failed: Option<anyhow::Error>,
    }
    let queue = Mutex::new(Queue {
        dirs: vec![root.to_path_buf()],
        busy: 0,
        failed: None,
    });
    let wakeup = Condvar::new();
    let found = Mutex::new(Vec::new());

    let read_dir =
        |dir: &Path, subdirs: &mut Vec<PathBuf>, files: &mut Vec<ObjectInfo>| -> Result<()> {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && dir == root => {
                    return Ok(());
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("could not read {}", dir.display()));
                }
            };
            for entry in entries {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    subdirs.push(entry.path());
                } else if kind.is_file() {
                    let path = entry.path();
                    let meta = entry.metadata()?;
                    files.push(ObjectInfo {
                        key: key_of(root, &path)?,
                        size: meta.len(),
                        etag: None,
                        modified: meta.modified().ok(),
                    });
                }
            }
            Ok(())
        };

    std::thread::scope(|scope| {
        for _ in 0..WALKERS {
            scope.spawn(|| {
                let mut files = Vec::new();
                loop {
                    let dir = {
                        let mut q = queue.lock().expect("walk queue");
                        loop {
                            if q.failed.is_some() {
                                break None;
                            }
                            if let Some(dir) = q.dirs.pop() {
                                q.busy += 1;
                                break Some(dir);
                            }
                            if q.busy == 0 {
                                break None;
                            }
                            q = wakeup.wait(q).expect("walk queue");
                        }
                    };
                    let Some(dir) = dir else {
                        wakeup.notify_all();
                        break;
                    };
                    let mut subdirs = Vec::new();
                    let result = read_dir(&dir, &mut subdirs, &mut files);
                    let mut q = queue.lock().expect("walk queue");
                    q.busy -= 1;
                    match result {
                        Ok(()) => q.dirs.extend(subdirs),
                        Err(err) => {
                            q.failed.get_or_insert(err);
                        }
                    }
                    drop(q);
                    wakeup.notify_all();
                }
                found.lock().expect("walk results").extend(files);
            });
        }
    });
    let queue = queue.into_inner().expect("walk queue");
    if let Some(err) = queue.failed {
        return Err(err);
    }
    Ok(found.into_inner().expect("walk results"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_finds_every_file_in_a_deep_tree_once() {
        let root = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        for i in 0..300 {
            let key = format!(
                "media_attachments/files/{:03}/{:03}/original/f{i}.png",
                i % 7,
                i
            );
            let path = root.path().join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; i]).unwrap();
            expected.push((key, i as u64));
        }
        std::fs::create_dir_all(root.path().join("empty/dir")).unwrap();
        let mut found: Vec<(String, u64)> = walk(root.path())
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        found.sort();
        expected.sort();
        assert_eq!(found, expected);
        assert!(walk(&root.path().join("missing")).unwrap().is_empty());
    }
}
