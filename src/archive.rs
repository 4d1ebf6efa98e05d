//! Data offsets for a custom-format archive that pg_dump wrote to a pipe.
//!
//! pg_dump only records where each table's data starts when it can seek
//! back in its output; tusk streams it into the compressor, so those
//! entries say "position not set". Parallel pg_restore then finds each
//! table by skipping through the archive chunk by chunk from the start,
//! once per table. After staging the archive in a file, tusk walks it once,
//! notes where each data block starts, and writes the positions into the
//! table of contents, exactly as pg_dump does on a seekable file.
//!
//! Layout (pg_backup_archiver.c, pg_backup_custom.c): header, table of
//! contents, then per data entry a block `BLK_DATA dumpId (len bytes)* 0`.
//! Anything unexpected leaves the file as it was: it restores without
//! offsets too, only slower.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;

use crate::postgres::BoxReader;

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
const OFFSET_NOT_SET: u8 = 1;
const OFFSET_SET: u8 = 2;
/// Archive format versions whose table of contents this reader knows
/// (1.12 to 1.16: pg_dump 9.0 to 17; 1.16 added each entry's relkind).
const KNOWN_MINOR: std::ops::RangeInclusive<u8> = 12..=16;

/// Writes the data offsets into the archive at `path`; returns how many
/// entries it set.
pub fn add_data_offsets(path: &Path) -> Result<usize> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))?;
    let mut reader = ArchiveReader::new(BufReader::with_capacity(1 << 20, file.try_clone()?));
    let unset = reader.read_toc()?;
    if unset.is_empty() {
        return Ok(0);
    }
    let starts = reader.data_block_starts()?;
    let mut file = file;
    let mut patched = 0;
    for (dump_id, flag_position) in unset {
        let Some(start) = starts.get(&dump_id) else {
            continue;
        };
        let mut record = vec![OFFSET_SET];
        record.extend_from_slice(&start.to_le_bytes()[..reader.offset_size]);
        file.seek(SeekFrom::Start(flag_position))?;
        file.write_all(&record)?;
        patched += 1;
    }
    // No fsync: the copy only lives for this restore, pg_restore reads it
    // through the page cache, and forcing 1 GB to disk first cost a second.
    Ok(patched)
}

/// One entry of an archive's table of contents.
#[derive(Debug, Clone)]
pub struct TocEntry {
    pub dump_id: i64,
    /// Object name (`statuses`; `statuses fk_rails_...` for constraints).
    pub tag: String,
    /// Kind: `TABLE`, `TABLE DATA`, `INDEX`, `FK CONSTRAINT`...
    pub desc: String,
    /// [`SECTION_DATA`], [`SECTION_POST_DATA`]...
    pub section: i64,
    pub namespace: Option<String>,
    /// The SQL that creates the object (pg_dump's `defn`), as pg_restore
    /// sends it to the server.
    pub definition: Option<String>,
    /// Dump ids this entry depends on.
    pub deps: Vec<i64>,
    /// For `TABLE DATA`: the `COPY ... FROM stdin;` that loads its data,
    /// naming the columns in the order of the data's fields.
    pub copy_statement: Option<String>,
    offset_set: bool,
    offset_position: u64,
}

#[cfg(test)]
impl TocEntry {
    pub fn for_tests(dump_id: i64, desc: &str, tag: &str, section: i64, deps: &[i64]) -> Self {
        TocEntry {
            dump_id,
            tag: tag.into(),
            desc: desc.into(),
            section,
            namespace: None,
            definition: None,
            deps: deps.to_vec(),
            copy_statement: None,
            offset_set: false,
            offset_position: 0,
        }
    }
}

/// pg_backup_archiver.h's teSection.
pub const SECTION_DATA: i64 = 3;
pub const SECTION_POST_DATA: i64 = 4;

/// Reads the table of contents at the start of an archive's (decompressed)
/// stream, reading only as much of it as the table takes.
pub async fn read_toc(mut reader: BoxReader) -> Result<Vec<TocEntry>> {
    /// A Mastodon archive's table takes about a megabyte.
    const LIMIT: usize = 64 << 20;
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        let n = reader.read(&mut chunk).await?;
        head.extend_from_slice(&chunk[..n]);
        if let Some(entries) = toc_entries(&head)? {
            return Ok(entries);
        }
        if n == 0 {
            bail!("the archive ends inside its table of contents");
        }
        if head.len() > LIMIT {
            bail!("the archive's table of contents is larger than {LIMIT} bytes");
        }
    }
}

/// The table of contents at the start of an archive, given its first
/// bytes; `None` when they do not hold all of it yet.
pub fn toc_entries(head: &[u8]) -> Result<Option<Vec<TocEntry>>> {
    let mut reader = ArchiveReader::new(std::io::Cursor::new(head));
    match reader.read_entries() {
        Ok(entries) => Ok(Some(entries)),
        Err(err) if is_eof(&err) => Ok(None),
        Err(err) => Err(err),
    }
}

struct ArchiveReader<R> {
    inner: R,
    position: u64,
    int_size: usize,
    offset_size: usize,
    minor: u8,
    data_compressed: bool,
}

impl<R: BufRead + Seek> ArchiveReader<R> {
    fn new(inner: R) -> Self {
        ArchiveReader {
            inner,
            position: 0,
            int_size: 4,
            offset_size: 8,
            minor: 0,
            data_compressed: false,
        }
    }

    fn byte(&mut self) -> Result<u8> {
        let mut one = [0u8];
        self.inner.read_exact(&mut one)?;
        self.position += 1;
        Ok(one[0])
    }

    fn bytes(&mut self, count: usize) -> Result<Vec<u8>> {
        let mut buffer = vec![0u8; count];
        self.inner.read_exact(&mut buffer)?;
        self.position += count as u64;
        Ok(buffer)
    }

    fn skip(&mut self, count: u64) -> Result<()> {
        self.inner.seek_relative(count as i64)?;
        self.position += count;
        Ok(())
    }

    /// pg_dump's WriteInt: a sign byte, then `int_size` little-endian bytes.
    fn int(&mut self) -> Result<i64> {
        let negative = self.byte()? != 0;
        let mut value: i64 = 0;
        for shift in 0..self.int_size {
            value |= i64::from(self.byte()?) << (8 * shift);
        }
        Ok(if negative { -value } else { value })
    }

    /// pg_dump's WriteStr, read; `None` for NULL.
    fn str(&mut self) -> Result<Option<String>> {
        let length = self.int()?;
        if length < 0 {
            return Ok(None);
        }
        let bytes = self.bytes(length as usize)?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// pg_dump's WriteStr: a length (-1 for NULL), then the bytes.
    fn skip_str(&mut self) -> Result<bool> {
        let length = self.int()?;
        if length < 0 {
            return Ok(false);
        }
        self.skip(length as u64)?;
        Ok(true)
    }

    /// Reads the header and table of contents; returns, for each entry
    /// whose data position is not set, its dump id and the file position
    /// of its offset record.
    fn read_toc(&mut self) -> Result<Vec<(i64, u64)>> {
        Ok(self
            .read_entries()?
            .into_iter()
            .filter(|entry| !entry.offset_set)
            .map(|entry| (entry.dump_id, entry.offset_position))
            .collect())
    }

    /// Reads the header and every table-of-contents entry.
    fn read_entries(&mut self) -> Result<Vec<TocEntry>> {
        if self.bytes(5)? != b"PGDMP" {
            bail!("not a custom-format archive");
        }
        let (major, minor, _revision) = (self.byte()?, self.byte()?, self.byte()?);
        if major != 1 || !KNOWN_MINOR.contains(&minor) {
            bail!("archive version 1.{minor} is not one tusk can read");
        }
        self.minor = minor;
        self.int_size = usize::from(self.byte()?);
        self.offset_size = usize::from(self.byte()?);
        if self.byte()? != 1 || !(1..=8).contains(&self.offset_size) {
            bail!("not a custom-format archive");
        }
        // pg_dump -Z0 writes its data blocks as they are: algorithm 0
        // (1.15 on) or level 0 (before).
        self.data_compressed = if self.minor >= 15 {
            self.byte()? != 0
        } else {
            self.int()? != 0
        };
        for _ in 0..7 {
            self.int()?; // creation time
        }
        for _ in 0..3 {
            self.skip_str()?; // database, server version, pg_dump version
        }
        let count = self.int()?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let dump_id = self.int()?;
            self.int()?; // has a data dumper
            self.skip_str()?; // tableoid
            self.skip_str()?; // oid
            let tag = self.str()?.unwrap_or_default();
            let desc = self.str()?.unwrap_or_default();
            let section = self.int()?;
            let definition = self.str()?;
            self.skip_str()?; // dropStmt
            let copy_statement = self.str()?;
            let namespace = self.str()?;
            self.skip_str()?; // tablespace
            if self.minor >= 14 {
                self.skip_str()?; // tableam
            }
            if self.minor >= 16 {
                self.int()?; // relkind
            }
            self.skip_str()?; // owner
            self.skip_str()?; // "true" for WITH OIDS
            let mut deps = Vec::new();
            while let Some(dep) = self.str()? {
                if let Ok(id) = dep.parse() {
                    deps.push(id);
                }
            }
            let offset_position = self.position;
            let flag = self.byte()?;
            self.skip(self.offset_size as u64)?;
            entries.push(TocEntry {
                dump_id,
                tag,
                desc,
                section,
                namespace,
                definition,
                deps,
                copy_statement,
                offset_set: flag != OFFSET_NOT_SET,
                offset_position,
            });
        }
        Ok(entries)
    }

    /// Walks the data blocks after the table of contents; returns where
    /// each dump id's block starts.
    fn data_block_starts(&mut self) -> Result<HashMap<i64, u64>> {
        let mut starts = HashMap::new();
        loop {
            let start = self.position;
            let kind = match self.byte() {
                Ok(kind) => kind,
                Err(err) if is_eof(&err) => return Ok(starts),
                Err(err) => return Err(err),
            };
            let dump_id = self.int()?;
            starts.insert(dump_id, start);
            match kind {
                BLK_DATA => self.skip_chunks()?,
                BLK_BLOBS => loop {
                    if self.int()? == 0 {
                        break; // no more large objects
                    }
                    self.skip_chunks()?;
                },
                other => bail!("unknown data block type {other} at byte {start}"),
            }
        }
    }

    fn skip_chunks(&mut self) -> Result<()> {
        loop {
            let length = self.int()?;
            if length == 0 {
                return Ok(());
            }
            if length < 0 {
                bail!("negative chunk length at byte {}", self.position);
            }
            self.skip(length as u64)?;
        }
    }
}

/// What a streaming walk through an archive finds, in archive order.
#[derive(Debug)]
pub enum ArchiveEvent<'a> {
    /// The table of contents, once, before any data.
    Toc(&'a [TocEntry]),
    /// The next bytes of entry `dump_id`'s data block (for `TABLE DATA`,
    /// COPY text as pg_dump received it); a row may span two events.
    Data { dump_id: i64, bytes: &'a [u8] },
    /// A large object of a `BLOBS` block starts ...
    BlobStart { oid: i64 },
    /// ... its next bytes ...
    BlobData(&'a [u8]),
    /// ... and it ends.
    BlobEnd,
}

/// Walks an uncompressed custom-format archive as it streams past, without
/// seeking or keeping it: the bytes go in with [`ArchiveScanner::feed`] in
/// pieces of any size, the events come out through a callback. This is
/// how backup reads the dump on its way to the compressor.
pub struct ArchiveScanner {
    state: ScanState,
    /// The archive's start, until the table of contents is complete.
    head: Vec<u8>,
    /// `head`'s length at the last attempt to read the table.
    head_tried: usize,
    int_size: usize,
    /// The bytes of an integer split between two pieces.
    pending: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum ScanState {
    Head,
    BlockKind,
    BlockId { kind: u8 },
    ChunkLength { dump_id: i64, blob: bool },
    Chunk { dump_id: i64, blob: bool, left: u64 },
    BlobOid,
}

impl Default for ArchiveScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveScanner {
    pub fn new() -> Self {
        ArchiveScanner {
            state: ScanState::Head,
            head: Vec::new(),
            head_tried: 0,
            int_size: 4,
            pending: Vec::new(),
        }
    }

    /// Takes the archive's next bytes.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        visit: &mut dyn FnMut(ArchiveEvent<'_>) -> Result<()>,
    ) -> Result<()> {
        if let ScanState::Head = self.state {
            self.head.extend_from_slice(bytes);
            // Reading the table again for every small piece would cost
            // quadratic time on a megabyte-sized table: try again only
            // once the head has grown by a quarter.
            if self.head.len() < self.head_tried + (self.head_tried / 4).max(64 << 10)
                && !bytes.is_empty()
            {
                return Ok(());
            }
            self.head_tried = self.head.len();
            let mut reader = ArchiveReader::new(std::io::Cursor::new(&self.head[..]));
            let entries = match reader.read_entries() {
                Ok(entries) => entries,
                Err(err) if is_eof(&err) => return Ok(()),
                Err(err) => return Err(err),
            };
            if reader.data_compressed {
                bail!("the archive's data blocks are compressed (tusk dumps with --compress=0)");
            }
            self.int_size = reader.int_size;
            let consumed = reader.position as usize;
            visit(ArchiveEvent::Toc(&entries))?;
            self.state = ScanState::BlockKind;
            let head = std::mem::take(&mut self.head);
            return self.scan(&head[consumed..], visit);
        }
        self.scan(bytes, visit)
    }

    /// Fails unless the archive ended where one may end: after a block.
    pub fn finish(&mut self, visit: &mut dyn FnMut(ArchiveEvent<'_>) -> Result<()>) -> Result<()> {
        if let ScanState::Head = self.state {
            // The last piece may not have been tried yet.
            self.head_tried = 0;
            self.feed(&[], visit)?;
        }
        match self.state {
            ScanState::BlockKind if self.pending.is_empty() => Ok(()),
            ScanState::Head => bail!("the archive ends inside its table of contents"),
            _ => bail!("the archive ends inside a data block"),
        }
    }

    fn scan(
        &mut self,
        mut bytes: &[u8],
        visit: &mut dyn FnMut(ArchiveEvent<'_>) -> Result<()>,
    ) -> Result<()> {
        while !bytes.is_empty() {
            self.state = match self.state {
                ScanState::Head => unreachable!("the head is read before scanning"),
                ScanState::BlockKind => {
                    let kind = bytes[0];
                    bytes = &bytes[1..];
                    if kind != BLK_DATA && kind != BLK_BLOBS {
                        bail!("unknown data block type {kind}");
                    }
                    ScanState::BlockId { kind }
                }
                ScanState::BlockId { kind } => {
                    let Some(dump_id) = self.int(&mut bytes) else {
                        break;
                    };
                    if kind == BLK_DATA {
                        ScanState::ChunkLength {
                            dump_id,
                            blob: false,
                        }
                    } else {
                        ScanState::BlobOid
                    }
                }
                ScanState::BlobOid => {
                    let Some(oid) = self.int(&mut bytes) else {
                        break;
                    };
                    if oid == 0 {
                        ScanState::BlockKind
                    } else {
                        visit(ArchiveEvent::BlobStart { oid })?;
                        ScanState::ChunkLength {
                            dump_id: 0,
                            blob: true,
                        }
                    }
                }
                ScanState::ChunkLength { dump_id, blob } => {
                    let Some(length) = self.int(&mut bytes) else {
                        break;
                    };
                    match length {
                        0 if blob => {
                            visit(ArchiveEvent::BlobEnd)?;
                            ScanState::BlobOid
                        }
                        0 => ScanState::BlockKind,
                        length if length < 0 => bail!("negative chunk length {length}"),
                        length => ScanState::Chunk {
                            dump_id,
                            blob,
                            left: length as u64,
                        },
                    }
                }
                ScanState::Chunk {
                    dump_id,
                    blob,
                    left,
                } => {
                    let take = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let (chunk, rest) = bytes.split_at(take);
                    bytes = rest;
                    if blob {
                        visit(ArchiveEvent::BlobData(chunk))?;
                    } else {
                        visit(ArchiveEvent::Data {
                            dump_id,
                            bytes: chunk,
                        })?;
                    }
                    let left = left - take as u64;
                    if left == 0 {
                        ScanState::ChunkLength { dump_id, blob }
                    } else {
                        ScanState::Chunk {
                            dump_id,
                            blob,
                            left,
                        }
                    }
                }
            };
        }
        Ok(())
    }

    /// pg_dump's WriteInt from `bytes`, which may hold only part of it
    /// (then `None`, with the part kept for the next piece).
    fn int(&mut self, bytes: &mut &[u8]) -> Option<i64> {
        let size = 1 + self.int_size;
        let encoded: &[u8] = if self.pending.is_empty() && bytes.len() >= size {
            let (encoded, rest) = bytes.split_at(size);
            *bytes = rest;
            encoded
        } else {
            let take = (size - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            *bytes = &bytes[take..];
            if self.pending.len() < size {
                return None;
            }
            &self.pending
        };
        let mut value: i64 = 0;
        for (shift, byte) in encoded[1..].iter().enumerate() {
            value |= i64::from(*byte) << (8 * shift);
        }
        let value = if encoded[0] != 0 { -value } else { value };
        self.pending.clear();
        Some(value)
    }
}

fn is_eof(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Archives of fixtures/archives/small.sql written by pg_dump 15 and 17
    /// into a pipe, so without data offsets (see fixtures/archives/README.md).
    const ARCHIVES: [&str; 2] = ["pg15-piped.dump", "pg17-piped.dump"];

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/archives")
            .join(name)
    }

    fn entries_of(path: &Path) -> Vec<TocEntry> {
        let bytes = std::fs::read(path).unwrap();
        toc_entries(&bytes)
            .unwrap()
            .expect("the whole table of contents")
    }

    #[test]
    fn reads_the_table_of_contents_of_pg15_and_pg17_archives() {
        for name in ARCHIVES {
            let entries = entries_of(&fixture(name));
            let find = |desc: &str, tag: &str| {
                entries
                    .iter()
                    .find(|e| e.desc == desc && e.tag == tag)
                    .unwrap_or_else(|| panic!("{name}: no {desc} {tag}"))
            };
            let mut data: Vec<&str> = entries
                .iter()
                .filter(|e| e.desc == "TABLE DATA")
                .map(|e| e.tag.as_str())
                .collect();
            data.sort();
            assert_eq!(data, ["accounts", "empty_things", "statuses"], "{name}");
            let statuses = find("TABLE", "statuses");
            assert_eq!(statuses.namespace.as_deref(), Some("public"), "{name}");
            let index = find("INDEX", "index_statuses_on_account_id");
            assert_eq!(index.section, SECTION_POST_DATA, "{name}");
            assert!(index.deps.contains(&statuses.dump_id), "{name}");
            let data = find("TABLE DATA", "statuses");
            assert_eq!(data.section, SECTION_DATA, "{name}");
            assert!(!data.offset_set, "{name}: written to a pipe");
            assert!(
                entries
                    .iter()
                    .any(|e| e.desc == "FK CONSTRAINT" && e.tag.starts_with("statuses ")),
                "{name}"
            );
        }
    }

    #[test]
    fn data_offsets_point_at_each_entrys_data_block() {
        for name in ARCHIVES {
            let copy = tempfile::NamedTempFile::new().unwrap();
            std::fs::copy(fixture(name), copy.path()).unwrap();
            assert_eq!(add_data_offsets(copy.path()).unwrap(), 3, "{name}");

            let bytes = std::fs::read(copy.path()).unwrap();
            let (int_size, offset_size) = (usize::from(bytes[8]), usize::from(bytes[9]));
            for entry in entries_of(copy.path())
                .iter()
                .filter(|e| e.desc == "TABLE DATA")
            {
                assert!(entry.offset_set, "{name}: {}", entry.tag);
                let at = entry.offset_position as usize + 1;
                let mut offset = [0u8; 8];
                offset[..offset_size].copy_from_slice(&bytes[at..at + offset_size]);
                let block = u64::from_le_bytes(offset) as usize;
                assert_eq!(bytes[block], BLK_DATA, "{name}: {}", entry.tag);
                let mut reader = ArchiveReader::new(std::io::Cursor::new(&bytes[block + 1..]));
                reader.int_size = int_size;
                assert_eq!(
                    reader.int().unwrap(),
                    entry.dump_id,
                    "{name}: {}",
                    entry.tag
                );
            }
            // A second run finds nothing left to set.
            assert_eq!(add_data_offsets(copy.path()).unwrap(), 0, "{name}");
        }
    }
}
