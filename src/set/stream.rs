//! Streaming compression with hashing on the way to disk, and back.
//!
//! A dump is compressed while pg_dump writes it and hashed while the
//! compressed bytes are written, so no uncompressed copy ever touches the
//! disk and the checksum costs no second read.
//!
//! zstd output is a series of independent frames of [`ZSTD_FRAME_BYTES`]
//! input each: any zstd decoder reads it as one stream, and compressing a
//! whole frame at once costs 16 % less CPU than zstd's streaming mode
//! (docs/performance.md), which matters on a 2-core server where the dump
//! itself keeps both cores busy.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use async_compression::Level;
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use async_compression::tokio::write::GzipEncoder;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use tokio::fs::{File, OpenOptions};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    BufWriter, ReadBuf,
};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use crate::postgres::BoxReader;
use crate::set::Compression;

const IO_BUFFER: usize = 1 << 20;
/// Input per zstd frame: large enough that the frame boundaries cost under
/// 1 % of the ratio, small enough to keep memory flat.
pub const ZSTD_FRAME_BYTES: usize = 4 << 20;

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

/// Read-ahead between the producer and the compressor: chunks of this size ...
const READ_AHEAD_CHUNK: usize = 256 * 1024;
/// ... and this many of them (8 MiB at most in flight).
const READ_AHEAD_CHUNKS: usize = 32;

/// Where the stored bytes of one artefact go: a local file ([`FileSink`]),
/// an S3 multipart upload (`storage::s3::MultipartWriter`), or both fed by
/// one dump ([`Tee`]). Shutting the writer down commits what was written
/// (the file is fsynced, the upload completed); dropping it without a
/// shutdown abandons it (a multipart upload is aborted).
pub type ArtefactSink = Box<dyn AsyncWrite + Send + Unpin>;

/// A transformation of the compressed stream before it is hashed and
/// stored: `compress -> layer -> sha256 of the stored bytes -> sink`.
///
/// This is where encryption goes: an age encryptor is a layer that wraps
/// the hashing writer, so the manifest's sha256 and size are those of the
/// stored (encrypted) bytes, which `verify` can check without the key. The
/// layer's writer must write its trailer and shut its inner writer down
/// when it is shut down. The caller names the artefact (e.g. with a `.age`
/// suffix); the pipeline does not care what the layer does.
pub type StoredLayer = Box<dyn FnOnce(ArtefactSink) -> ArtefactSink + Send>;

/// How one artefact is written.
pub struct WriteOptions<'a> {
    pub compression: Compression,
    pub level: i32,
    pub progress: &'a ProgressBar,
    /// Applied between the compressor and the hashing writer.
    pub layer: Option<StoredLayer>,
}

/// Compresses `source` into a new file at `path` (mode 0600), fsynced.
pub async fn write_compressed(
    source: BoxReader,
    path: &Path,
    compression: Compression,
    level: i32,
    progress: &ProgressBar,
) -> Result<Written> {
    let sink = FileSink::create(path).await?;
    write_artefact(
        source,
        Box::new(sink),
        WriteOptions {
            compression,
            level,
            progress,
            layer: None,
        },
    )
    .await
    .with_context(|| format!("could not write {}", path.display()))
}

/// Compresses `source` (a plain reader: a wrapper that looks at the
/// uncompressed stream goes around it) into `sink`, hashing the stored
/// bytes on the way, and commits the sink by shutting it down. On an error
/// the sink is dropped uncommitted.
pub async fn write_artefact(
    source: BoxReader,
    sink: ArtefactSink,
    opts: WriteOptions<'_>,
) -> Result<Written> {
    let (hashing, tally) = HashingWriter::shared(sink);
    let stored: ArtefactSink = Box::new(hashing);
    let mut sink: ArtefactSink = match opts.layer {
        Some(layer) => layer(stored),
        None => stored,
    };
    let mut source = CountingReader::new(read_ahead(source), opts.progress.clone());
    match opts.compression {
        Compression::Zstd => compress_zstd_frames(&mut source, &mut sink, opts.level).await?,
        Compression::Gzip => {
            let mut encoder = GzipEncoder::with_quality(sink, Level::Precise(opts.level));
            drain(&mut source, &mut encoder).await?;
        }
        Compression::None => drain(&mut source, &mut sink).await?,
    }
    let (bytes, sha256) = tally
        .lock()
        .expect("the tally is never poisoned")
        .take()
        .context("the artefact's writer was not shut down")?;
    Ok(Written {
        bytes,
        sha256,
        uncompressed_bytes: source.count,
    })
}

/// A new local file (mode 0600) as an artefact's sink: written through a
/// buffer, its dirty pages written back as it grows, fsynced on shutdown.
pub struct FileSink {
    writer: BufWriter<File>,
    /// A second descriptor of the file, for the fsync on a blocking thread.
    sync_handle: Option<std::fs::File>,
    syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    fd: RawFd,
    written: u64,
}

impl FileSink {
    pub async fn create(path: &Path) -> Result<Self> {
        let file = create_private(path).await?;
        let std_file = file.into_std().await;
        let sync_handle = std_file
            .try_clone()
            .with_context(|| format!("could not open {} twice", path.display()))?;
        let fd = std_file.as_raw_fd();
        Ok(FileSink {
            writer: BufWriter::with_capacity(IO_BUFFER, File::from_std(std_file)),
            sync_handle: Some(sync_handle),
            syncing: None,
            fd,
            written: 0,
        })
    }
}

impl AsyncWrite for FileSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.writer).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = poll {
            let before = this.written;
            this.written += written as u64;
            if before / WRITEBACK_EVERY != this.written / WRITEBACK_EVERY {
                start_writeback(this.fd);
            }
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.syncing.is_none() {
            std::task::ready!(Pin::new(&mut this.writer).poll_shutdown(cx))?;
            let Some(file) = this.sync_handle.take() else {
                return Poll::Ready(Ok(()));
            };
            this.syncing = Some(tokio::task::spawn_blocking(move || file.sync_all()));
        }
        let syncing = this.syncing.as_mut().expect("set above");
        let synced = std::task::ready!(Pin::new(syncing).poll(cx));
        this.syncing = None;
        Poll::Ready(synced.map_err(std::io::Error::other).and_then(|r| r))
    }
}

/// One stream written to two sinks (the dump feeds a local file and an
/// upload at once). A write is taken whole and handed to both before the
/// next one; shutdown commits the first, then the second.
pub struct Tee {
    first: ArtefactSink,
    second: ArtefactSink,
    pending: Vec<u8>,
    first_done: usize,
    second_done: usize,
    first_shut: bool,
}

impl Tee {
    pub fn new(first: ArtefactSink, second: ArtefactSink) -> Self {
        Tee {
            first,
            second,
            pending: Vec::new(),
            first_done: 0,
            second_done: 0,
            first_shut: false,
        }
    }

    fn poll_pending(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        for (sink, done) in [
            (&mut self.first, &mut self.first_done),
            (&mut self.second, &mut self.second_done),
        ] {
            while *done < self.pending.len() {
                let written =
                    std::task::ready!(Pin::new(&mut *sink).poll_write(cx, &self.pending[*done..]))?;
                if written == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                *done += written;
            }
        }
        self.pending.clear();
        self.first_done = 0;
        self.second_done = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::task::ready!(Pin::new(&mut self.first).poll_flush(cx))?;
        Pin::new(&mut self.second).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        if !self.first_shut {
            std::task::ready!(Pin::new(&mut self.first).poll_shutdown(cx))?;
            self.first_shut = true;
        }
        Pin::new(&mut self.second).poll_shutdown(cx)
    }
}

/// Compresses `source` into `sink` as independent zstd frames, each on a
/// blocking thread (a frame takes ~10 ms of CPU), and flushes `sink`.
async fn compress_zstd_frames<R, W>(source: &mut R, sink: &mut W, level: i32) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    let mut input = Vec::with_capacity(ZSTD_FRAME_BYTES);
    let mut output = Vec::with_capacity(zstd::zstd_safe::compress_bound(ZSTD_FRAME_BYTES));
    let mut frames = 0u64;
    loop {
        input.clear();
        while input.len() < ZSTD_FRAME_BYTES {
            let available = source.fill_buf().await?;
            if available.is_empty() {
                break;
            }
            let take = available.len().min(ZSTD_FRAME_BYTES - input.len());
            input.extend_from_slice(&available[..take]);
            source.consume(take);
        }
        // An empty source still gets one (empty) frame: a valid zstd file.
        if input.is_empty() && frames > 0 {
            break;
        }
        let last = input.len() < ZSTD_FRAME_BYTES;
        let compressed = tokio::task::spawn_blocking(move || {
            output.clear();
            let result = compressor.compress_to_buffer(&input, &mut output);
            (compressor, input, output, result)
        })
        .await
        .map_err(std::io::Error::other)?;
        let result;
        (compressor, input, output, result) = compressed;
        result?;
        sink.write_all(&output).await?;
        frames += 1;
        if last {
            break;
        }
    }
    sink.shutdown().await
}

/// Copies everything from `source` into `sink` and finishes it (an
/// encoder writes its trailer on shutdown).
async fn drain<R, W>(source: &mut R, sink: &mut W) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::io::copy_buf(source, sink).await?;
    sink.shutdown().await
}

/// Reads `source` in a task of its own, so the producer (pg_dump) keeps
/// writing while the caller compresses; a full pipe would stall it.
fn read_ahead(
    mut source: BoxReader,
) -> StreamReader<impl Stream<Item = std::io::Result<Bytes>>, Bytes> {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD_CHUNKS);
    tokio::spawn(async move {
        loop {
            let mut chunk = BytesMut::with_capacity(READ_AHEAD_CHUNK);
            let read = loop {
                match source.read_buf(&mut chunk).await {
                    Ok(0) => break Ok(()),
                    Ok(_) if chunk.len() < READ_AHEAD_CHUNK / 2 => continue,
                    Ok(_) => break Ok(()),
                    Err(err) => break Err(err),
                }
            };
            let done = chunk.is_empty() || read.is_err();
            if !chunk.is_empty() && tx.send(Ok(chunk.freeze())).await.is_err() {
                return;
            }
            if let Err(err) = read {
                let _ = tx.send(Err(err)).await;
                return;
            }
            if done {
                return;
            }
        }
    });
    StreamReader::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Opens a local artefact file for reading, decompressed.
pub async fn open_decompressed(path: &Path, compression: Compression) -> Result<BoxReader> {
    let file = File::open(path)
        .await
        .with_context(|| format!("could not open {}", path.display()))?;
    Ok(decompress(Box::new(file), compression))
}

/// The decompressed stream of stored bytes read from `stored` (a file, an
/// object's body, or a decryptor around either).
pub fn decompress(stored: BoxReader, compression: Compression) -> BoxReader {
    let buffered = BufReader::with_capacity(IO_BUFFER, stored);
    match compression {
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
    }
}

/// Size and sha256 of a stream, read once.
pub async fn hash_reader(reader: BoxReader) -> std::io::Result<(u64, String)> {
    let mut reader = BufReader::with_capacity(IO_BUFFER, reader);
    let mut sink = HashingWriter::new(tokio::io::sink());
    tokio::io::copy_buf(&mut reader, &mut sink).await?;
    let (_, bytes, sha256) = sink.finish();
    Ok((bytes, sha256))
}

/// Size and sha256 of a file, read once.
pub async fn hash_file(path: &Path) -> Result<(u64, String)> {
    Ok(hash_reader(Box::new(File::open(path).await?)).await?)
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

/// Start writing back dirty pages every this many bytes, so the final
/// fsync has little left to do and does not add to the run's wall time.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Bytes and hex sha256 of what a [`HashingWriter`] passed on, once it was
/// shut down.
pub type Tally = std::sync::Arc<std::sync::Mutex<Option<(u64, String)>>>;

/// Passes writes through, hashing and counting what the inner writer accepted.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    /// Filled in when the writer is shut down successfully.
    tally: Option<Tally>,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            tally: None,
        }
    }

    /// A hashing writer that reports into the returned [`Tally`] when it is
    /// shut down: for when another writer (a layer) owns it by then.
    pub fn shared(inner: W) -> (Self, Tally) {
        let tally = Tally::default();
        let mut writer = Self::new(inner);
        writer.tally = Some(tally.clone());
        (writer, tally)
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
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
        if let Some(tally) = this.tally.take() {
            let digest = hex::encode(this.hasher.clone().finalize());
            *tally.lock().expect("the tally is never poisoned") = Some((this.bytes, digest));
        }
        Poll::Ready(Ok(()))
    }
}

/// Asks the kernel to start writing the file's dirty pages without waiting.
fn start_writeback(fd: RawFd) {
    // SAFETY: sync_file_range only schedules I/O on a descriptor we own;
    // offset 0 and length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Counts bytes read and moves a progress bar along.
pub struct CountingReader<R> {
    inner: R,
    progress: ProgressBar,
    pub count: u64,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R, progress: ProgressBar) -> Self {
        CountingReader {
            inner,
            progress,
            count: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = (buf.filled().len() - before) as u64;
            this.count += read;
            this.progress.inc(read);
        }
        poll
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for CountingReader<R> {
    fn poll_fill_buf(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.count += amount as u64;
        this.progress.inc(amount as u64);
        Pin::new(&mut this.inner).consume(amount);
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
            let written = write_compressed(
                Box::new(std::io::Cursor::new(data.clone())),
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
    async fn zstd_output_is_independent_frames_that_decode_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        for (len, frames) in [(0, 1), (1000, 1), (2 * ZSTD_FRAME_BYTES + 5, 3)] {
            let data: Vec<u8> = (0..len).map(|i| ((i % 251) ^ (i / 7919)) as u8).collect();
            let path = dir.path().join(format!("{len}.zst"));
            write_compressed(
                Box::new(std::io::Cursor::new(data.clone())),
                &path,
                Compression::Zstd,
                1,
                &ProgressBar::hidden(),
            )
            .await
            .unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let mut rest = &bytes[..];
            let mut found = 0;
            while !rest.is_empty() {
                let size = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
                let content = zstd::zstd_safe::get_frame_content_size(rest).unwrap();
                assert!(content.is_some_and(|n| n <= ZSTD_FRAME_BYTES as u64));
                rest = &rest[size..];
                found += 1;
            }
            assert_eq!(found, frames, "{len} bytes");
            assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), data);
            let mut back = Vec::new();
            open_decompressed(&path, Compression::Zstd)
                .await
                .unwrap()
                .read_to_end(&mut back)
                .await
                .unwrap();
            assert_eq!(back, data, "{len} bytes");
        }
    }

    /// A stand-in for encryption: flips every byte on the way down.
    struct Flip(ArtefactSink, Vec<u8>);

    impl AsyncWrite for Flip {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = &mut *self;
            this.1 = buf.iter().map(|b| !b).collect();
            let flipped = this.1.clone();
            Pin::new(&mut this.0).poll_write(cx, &flipped)
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn one_stream_feeds_two_sinks_and_a_layer_sits_before_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let sink: ArtefactSink = Box::new(Tee::new(
            Box::new(FileSink::create(&a).await.unwrap()),
            Box::new(FileSink::create(&b).await.unwrap()),
        ));
        let written = write_artefact(
            Box::new(std::io::Cursor::new(data.clone())),
            sink,
            WriteOptions {
                compression: Compression::Zstd,
                level: 1,
                progress: &ProgressBar::hidden(),
                layer: Some(Box::new(|inner| Box::new(Flip(inner, Vec::new())))),
            },
        )
        .await
        .unwrap();
        let stored = std::fs::read(&a).unwrap();
        assert_eq!(stored, std::fs::read(&b).unwrap());
        // The manifest's hash is of the stored (layered) bytes.
        assert_eq!(
            hash_file(&a).await.unwrap(),
            (written.bytes, written.sha256)
        );
        let unflipped: Vec<u8> = stored.iter().map(|b| !b).collect();
        assert_eq!(zstd::decode_all(&unflipped[..]).unwrap(), data);
    }

    #[tokio::test]
    async fn never_overwrites_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"keep").unwrap();
        let result = write_compressed(
            Box::new(std::io::Cursor::new(b"new".to_vec())),
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
