//! Streaming compression with hashing on the way to disk, and back.
//!
//! A dump is compressed while pg_dump writes it and hashed while the
//! compressed bytes are written, so no uncompressed copy ever touches the
//! disk and the checksum costs no second read.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use async_compression::Level;
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use async_compression::tokio::write::{GzipEncoder, ZstdEncoder};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadBuf};

use crate::config::Compression;
use crate::postgres::BoxReader;

const IO_BUFFER: usize = 1 << 20;

/// What was written for one artefact.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes on disk.
    pub bytes: u64,
    /// sha256 of the bytes on disk, hex.
    pub sha256: String,
    /// Bytes before compression.
    pub uncompressed_bytes: u64,
}

/// Compresses `source` into a new file at `path` (mode 0600), fsynced.
pub async fn write_compressed(
    source: &mut (dyn AsyncRead + Send + Unpin),
    path: &Path,
    compression: Compression,
    level: i32,
    progress: &ProgressBar,
) -> Result<Written> {
    let file = create_private(path).await?;
    let sink = HashingWriter::new(BufWriter::with_capacity(IO_BUFFER, file));
    let mut source = CountingReader::new(source, progress.clone());
    let write_error = || format!("could not write {}", path.display());

    let sink = match compression {
        Compression::Zstd => {
            let mut encoder = ZstdEncoder::with_quality(sink, Level::Precise(level));
            tokio::io::copy(&mut source, &mut encoder)
                .await
                .with_context(write_error)?;
            encoder.shutdown().await.with_context(write_error)?;
            encoder.into_inner()
        }
        Compression::Gzip => {
            let mut encoder = GzipEncoder::with_quality(sink, Level::Precise(level));
            tokio::io::copy(&mut source, &mut encoder)
                .await
                .with_context(write_error)?;
            encoder.shutdown().await.with_context(write_error)?;
            encoder.into_inner()
        }
        Compression::None => {
            let mut sink = sink;
            tokio::io::copy(&mut source, &mut sink)
                .await
                .with_context(write_error)?;
            sink.shutdown().await.with_context(write_error)?;
            sink
        }
    };
    let (buffered, bytes, sha256) = sink.finish();
    buffered
        .into_inner()
        .sync_all()
        .await
        .with_context(write_error)?;
    Ok(Written {
        bytes,
        sha256,
        uncompressed_bytes: source.count,
    })
}

/// Opens an artefact for reading, decompressed.
pub async fn open_decompressed(path: &Path, compression: Compression) -> Result<BoxReader> {
    let file = File::open(path)
        .await
        .with_context(|| format!("could not open {}", path.display()))?;
    let buffered = BufReader::with_capacity(IO_BUFFER, file);
    Ok(match compression {
        Compression::Zstd => {
            let mut decoder = ZstdDecoder::new(buffered);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
        Compression::Gzip => {
            let mut decoder = GzipDecoder::new(buffered);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
        Compression::None => Box::new(buffered),
    })
}

/// Size and sha256 of a file, read once.
pub async fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = BufReader::with_capacity(IO_BUFFER, File::open(path).await?);
    let mut sink = HashingWriter::new(tokio::io::sink());
    tokio::io::copy_buf(&mut file, &mut sink).await?;
    let (_, bytes, sha256) = sink.finish();
    Ok((bytes, sha256))
}

/// Creates a file only its owner can read: artefacts hold password hashes and user data.
pub async fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .with_context(|| format!("could not create {}", path.display()))
}

/// Passes writes through, hashing and counting what the inner writer accepted.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the byte count and the hex digest.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = poll {
            this.hasher.update(&buf[..written]);
            this.bytes += written as u64;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts bytes read and moves a progress bar along.
pub struct CountingReader<'a> {
    inner: &'a mut (dyn AsyncRead + Send + Unpin),
    progress: ProgressBar,
    pub count: u64,
}

impl<'a> CountingReader<'a> {
    pub fn new(inner: &'a mut (dyn AsyncRead + Send + Unpin), progress: ProgressBar) -> Self {
        CountingReader {
            inner,
            progress,
            count: 0,
        }
    }
}

impl AsyncRead for CountingReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = (buf.filled().len() - before) as u64;
            this.count += read;
            this.progress.inc(read);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn round_trips_every_compression() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let path = dir.path().join(compression.name());
            let mut source: &[u8] = &data;
            let written = write_compressed(
                &mut source,
                &path,
                compression,
                compression.default_level(),
                &ProgressBar::hidden(),
            )
            .await
            .unwrap();
            assert_eq!(written.uncompressed_bytes, data.len() as u64);
            assert_eq!(
                hash_file(&path).await.unwrap(),
                (written.bytes, written.sha256)
            );
            let mut back = Vec::new();
            open_decompressed(&path, compression)
                .await
                .unwrap()
                .read_to_end(&mut back)
                .await
                .unwrap();
            assert_eq!(back, data, "{compression:?}");
        }
    }

    #[tokio::test]
    async fn never_overwrites_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"keep").unwrap();
        let mut source: &[u8] = b"new";
        let result = write_compressed(
            &mut source,
            &path,
            Compression::None,
            0,
            &ProgressBar::hidden(),
        )
        .await;
        assert!(result.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
