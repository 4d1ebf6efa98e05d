//! `restore --files-to DIR`: the instance's files of a set (`.env.production`,
//! the compose file and its `.env`) written back, mode 0600.
//!
//! Nothing is overwritten without `force`, and the check comes before the
//! first write: a refused restore leaves the directory as it was.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::TuskError;
use crate::set::BackupSet;
use crate::set::manifest::{Artefact, ArtefactKind};

/// One file written back.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredFile {
    pub path: PathBuf,
    /// The artefact it came from.
    pub artefact: String,
    pub bytes: u64,
    /// It replaced a file that was there (`force`).
    pub replaced: bool,
}

/// The set's files, each with the name it is written back as.
pub fn instance_files(set: &BackupSet) -> Vec<(&Artefact, &str)> {
    set.manifest
        .artefacts
        .iter()
        .filter(|a| matches!(a.kind, ArtefactKind::Secrets | ArtefactKind::Deployment))
        .filter_map(|a| Some((a, a.file.as_deref()?)))
        .collect()
}

/// Writes the set's files into `dir` (created mode 0700 when missing).
pub async fn write_files(set: &BackupSet, dir: &Path, force: bool) -> Result<Vec<RestoredFile>> {
    let files = instance_files(set);
    if files.is_empty() {
        return Err(TuskError::usage(format!(
            "backup set {} holds no files to write back: it was written without \
             .env.production (not encrypted, or by an older tusk) and not in Docker mode",
            set.manifest.id
        )));
    }
    for (_, name) in &files {
        // The names come from the manifest: never a path out of `dir`.
        if name.is_empty() || name.contains('/') || *name == "." || *name == ".." {
            return Err(TuskError::usage(format!(
                "backup set {} names a file {name:?} that is not a plain file name; \
                 nothing was written",
                set.manifest.id
            )));
        }
    }
    let existing: Vec<String> = files
        .iter()
        .map(|(_, name)| dir.join(name))
        .filter(|path| path.symlink_metadata().is_ok())
        .map(|path| path.display().to_string())
        .collect();
    if !existing.is_empty() && !force {
        return Err(TuskError::usage(format!(
            "{} already exist{}; nothing was written. Pass --force to replace {}",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" },
            if existing.len() == 1 { "it" } else { "them" },
        )));
    }
    create_private_dir(dir)?;

    let mut restored = Vec::new();
    for (artefact, name) in files {
        let target = dir.join(name);
        let replaced = target.symlink_metadata().is_ok();
        let bytes = write_one(set, artefact, &target).await?;
        tracing::info!("wrote {} ({bytes} bytes, mode 0600)", target.display());
        restored.push(RestoredFile {
            path: target,
            artefact: artefact.name.clone(),
            bytes,
            replaced,
        });
    }
    Ok(restored)
}

/// Streams one artefact into a private temporary file beside `target`,
/// fsyncs it and renames it into place: a reader never sees half a file.
async fn write_one(set: &BackupSet, artefact: &Artefact, target: &Path) -> Result<u64> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = target.with_file_name(format!(".{name}.tusk-{}", crate::names::random_hex()));
    let mut reader = set.open_artefact(artefact).await?;
    let outcome = async {
        let mut file = crate::set::stream::create_private(&temp).await?;
        let bytes = tokio::io::copy(&mut reader, &mut file)
            .await
            .with_context(|| {
                format!("could not write {} from {}", temp.display(), artefact.name)
            })?;
        file.flush().await?;
        file.sync_all().await?;
        tokio::fs::rename(&temp, target)
            .await
            .with_context(|| format!("could not rename {} into place", temp.display()))?;
        Ok::<_, anyhow::Error>(bytes)
    }
    .await;
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    outcome
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create directory {}", dir.display()))
}
