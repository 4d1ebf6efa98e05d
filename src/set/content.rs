//! Content digests: every table's rows, every sequence's value and the
//! large objects, as the dump holds them, compared with a restored copy.
//!
//! A table's digest is over its rows in pg_dump's COPY text, each row
//! hashed alone (xxh3, 128 bits) and the hashes added modulo 2^128, so the
//! order the rows come in does not matter but every row counts as often as
//! it occurs: a row dropped and another one duplicated changes the sum
//! (an XOR of the hashes would let two copies of a row cancel out). The
//! row count is kept beside it.
//!
//! Backup computes the digests from the archive while it streams to the
//! compressor ([`DigestTap`]), so they cost no read of the database. The
//! other side ([`check`]) runs the same `COPY (columns) TO STDOUT` the
//! archive's table of contents names on the restored copy, under the
//! output settings the dump's session had ([`ContentDigests::settings`]):
//! timestamptz, float and interval text depends on them.
//!
//! xxh3 finds accidental differences (a restore that loaded something
//! else, a changed value, a lost row); it is not meant to resist someone
//! crafting rows to collide. The artefacts' sha256 covers the set itself.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_postgres::Client;
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use super::facts::table_key;
use super::manifest::Problem;
use crate::archive::{ArchiveEvent, ArchiveScanner, TocEntry};
use crate::postgres::BoxReader;

/// The name of the digest scheme, recorded with the digests.
pub const ALGORITHM: &str = "xxh3-128-sum";

/// What the manifest records about the dumped content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentDigests {
    /// [`ALGORITHM`].
    pub algorithm: String,
    /// The output settings the COPY text was written under (`TimeZone`,
    /// `DateStyle`, `IntervalStyle`, `extra_float_digits`, `bytea_output`,
    /// `client_encoding`); the restored side is read under the same.
    pub settings: BTreeMap<String, String>,
    /// Every table whose data the archive holds, keyed like the row counts
    /// (`table` in the public schema, `schema.table` elsewhere).
    pub tables: BTreeMap<String, TableDigest>,
    /// Every sequence's value as the archive sets it.
    pub sequences: BTreeMap<String, SequenceValue>,
    pub large_objects: RowsDigest,
}

/// The digest of one table's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDigest {
    /// The statement that reads the rows back in the dump's column order:
    /// `COPY public.accounts (id, username, ...) TO STDOUT`.
    pub copy: String,
    #[serde(flatten)]
    pub digest: RowsDigest,
}

/// A count and the sum of the items' hashes, modulo 2^128 (hex).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsDigest {
    pub rows: u64,
    #[serde(with = "hex_u128")]
    pub digest: u128,
}

impl RowsDigest {
    pub fn add_row(&mut self, row: &[u8]) {
        self.add_hash(xxh3_128(row));
    }

    fn add_hash(&mut self, hash: u128) {
        self.rows += 1;
        self.digest = self.digest.wrapping_add(hash);
    }

    /// `xxh3:<32 hex digits> over <n> rows`, as problems name it.
    pub fn describe(&self, unit: &str) -> String {
        format!("xxh3:{:032x} over {} {unit}", self.digest, self.rows)
    }
}

mod hex_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{value:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = String::deserialize(deserializer)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// A sequence's state as `setval` leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceValue {
    /// The sequence as pg_dump names it in `setval('...')`, qualified and
    /// quoted where needed: `public.accounts_id_seq`.
    pub relation: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// The output settings pg_dump fixes on its session (pg_dump.c,
/// setup_connection): dates in ISO, intervals in the postgres style,
/// floats with every digit. TimeZone and bytea_output it leaves as the
/// session has them, so backup records those from its own session (same
/// role, same database); client_encoding comes from the archive.
pub const DUMP_SETTINGS: [(&str, &str); 3] = [
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
];

/// The settings the dump's COPY text depends on that pg_dump does not fix,
/// as `session` has them.
pub async fn session_settings(session: &Client) -> Result<BTreeMap<String, String>> {
    let row = session
        .query_one(
            "SELECT current_setting('TimeZone'), current_setting('bytea_output')",
            &[],
        )
        .await
        .context("could not read the session's TimeZone and bytea_output")?;
    let mut settings: BTreeMap<String, String> = DUMP_SETTINGS
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    settings.insert("TimeZone".into(), row.get(0));
    settings.insert("bytea_output".into(), row.get(1));
    Ok(settings)
}

/// Builds [`ContentDigests`] from a custom-format archive's events.
#[derive(Default)]
pub struct ArchiveDigester {
    digests: ContentDigests,
    /// Data entries by dump id: key, and the row cut at the end of the last
    /// piece.
    tables: HashMap<i64, TableState>,
    /// The last data entry seen, to skip the lookup for its next rows.
    current: Option<(i64, TableState)>,
    large_object: Option<(i64, Xxh3)>,
}

#[derive(Default)]
struct TableState {
    key: String,
    digest: RowsDigest,
    partial: Vec<u8>,
    /// pg_dump ends each table's data with `\.`; nothing after it is a row.
    ended: bool,
}

impl ArchiveDigester {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn visit(&mut self, event: ArchiveEvent<'_>) -> Result<()> {
        match event {
            ArchiveEvent::Toc(entries) => self.read_toc(entries)?,
            ArchiveEvent::Data { dump_id, bytes } => {
                if self.current.as_ref().is_none_or(|(id, _)| *id != dump_id) {
                    self.park_current();
                    // Data of entries that are no tables (none today) is not rows.
                    let Some(state) = self.tables.remove(&dump_id) else {
                        return Ok(());
                    };
                    self.current = Some((dump_id, state));
                }
                if let Some((_, state)) = &mut self.current {
                    state.feed(bytes);
                }
            }
            ArchiveEvent::BlobStart { oid } => {
                self.large_object = Some((oid, Xxh3::new()));
            }
            ArchiveEvent::BlobData(bytes) => {
                if let Some((_, hasher)) = &mut self.large_object {
                    hasher.update(bytes);
                }
            }
            ArchiveEvent::BlobEnd => {
                if let Some((oid, hasher)) = self.large_object.take() {
                    self.digests
                        .large_objects
                        .add_hash(large_object_hash(oid, hasher.digest128()));
                }
            }
        }
        Ok(())
    }

    fn park_current(&mut self) {
        if let Some((id, state)) = self.current.take() {
            self.tables.insert(id, state);
        }
    }

    fn read_toc(&mut self, entries: &[TocEntry]) -> Result<()> {
        self.digests.algorithm = ALGORITHM.into();
        for (name, value) in DUMP_SETTINGS {
            self.digests.settings.insert(name.into(), value.into());
        }
        for entry in entries {
            let key = table_key(entry.namespace.as_deref().unwrap_or(""), &entry.tag);
            match entry.desc.as_str() {
                "TABLE DATA" => {
                    let Some(copy) = entry.copy_statement.as_deref().and_then(copy_to_stdout)
                    else {
                        continue;
                    };
                    self.digests.tables.insert(
                        key.clone(),
                        TableDigest {
                            copy,
                            digest: RowsDigest::default(),
                        },
                    );
                    self.tables.insert(
                        entry.dump_id,
                        TableState {
                            key,
                            ..TableState::default()
                        },
                    );
                }
                "SEQUENCE SET" => {
                    if let Some(value) = entry.definition.as_deref().and_then(parse_setval) {
                        self.digests.sequences.insert(key, value);
                    }
                }
                "ENCODING" => {
                    if let Some(encoding) = entry.definition.as_deref().and_then(parse_encoding) {
                        self.digests
                            .settings
                            .insert("client_encoding".into(), encoding);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The digests, with `settings` (from [`session_settings`]) added to
    /// those the archive states.
    pub fn finish(mut self, settings: &BTreeMap<String, String>) -> Result<ContentDigests> {
        self.park_current();
        if self.digests.algorithm.is_empty() {
            bail!("the archive's table of contents was never read");
        }
        for state in self.tables.into_values() {
            if !state.partial.is_empty() && !state.ended {
                bail!("the data of {} ends inside a row", state.key);
            }
            if let Some(table) = self.digests.tables.get_mut(&state.key) {
                table.digest = state.digest;
            }
        }
        for (name, value) in settings {
            self.digests
                .settings
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
        Ok(self.digests)
    }
}

impl TableState {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.ended {
            match memchr::memchr(b'\n', bytes) {
                Some(end) => {
                    if self.partial.is_empty() {
                        self.row(end, bytes);
                    } else {
                        let mut row = std::mem::take(&mut self.partial);
                        row.extend_from_slice(&bytes[..end]);
                        let length = row.len();
                        self.row(length, &row);
                    }
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.partial.extend_from_slice(bytes);
                    return;
                }
            }
        }
    }

    fn row(&mut self, length: usize, bytes: &[u8]) {
        let row = &bytes[..length];
        // A backslash in a value is written `\\`, so a row that is only `\.`
        // is the end-of-data marker.
        if row == b"\\." {
            self.ended = true;
        } else {
            self.digest.add_row(row);
        }
    }
}

/// A large object's hash covers its oid too: pg_restore gives it back the
/// same oid, and two objects swapping contents are a difference.
fn large_object_hash(oid: i64, content: u128) -> u128 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&oid.to_le_bytes());
    bytes[8..].copy_from_slice(&content.to_le_bytes());
    xxh3_128(&bytes)
}

/// `COPY public.t (a, b) FROM stdin;` (a TABLE DATA entry's copy statement)
/// as `COPY public.t (a, b) TO STDOUT`.
fn copy_to_stdout(statement: &str) -> Option<String> {
    let statement = statement.trim_end();
    let head = statement.strip_suffix("FROM stdin;")?;
    if !head.starts_with("COPY ") {
        return None;
    }
    Some(format!("{}TO STDOUT", head))
}

/// `SELECT pg_catalog.setval('public.s', 42, true);`
fn parse_setval(definition: &str) -> Option<SequenceValue> {
    let start = definition.find("setval('")? + "setval('".len();
    // The name is a string literal: a quote inside it is doubled.
    let mut relation = String::new();
    let mut chars = definition[start..].char_indices().peekable();
    let mut after = None;
    while let Some((at, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, next)| *next == '\'') {
                chars.next();
                relation.push('\'');
                continue;
            }
            after = Some(start + at + 1);
            break;
        }
        relation.push(c);
    }
    let rest = definition[after?..].trim_start().strip_prefix(',')?;
    let mut fields = rest.split(',');
    let last_value = fields.next()?.trim().parse().ok()?;
    let is_called = fields
        .next()?
        .trim()
        .trim_end_matches(';')
        .trim_end_matches(')')
        .trim();
    Some(SequenceValue {
        relation,
        last_value,
        is_called: is_called == "true",
    })
}

/// `SET client_encoding = 'UTF8';`
fn parse_encoding(definition: &str) -> Option<String> {
    let start = definition.find('\'')? + 1;
    let end = start + definition[start..].find('\'')?;
    Some(definition[start..end].to_string())
}

/// Passes an archive through unchanged while an [`ArchiveDigester`] reads
/// it: backup wraps pg_dump's output in it on the way to the compressor.
/// A failure to read the archive never fails the stream; it is kept for
/// [`DigestTap::outcome`] and the backup goes on without digests.
pub struct DigestTap {
    inner: BoxReader,
    state: Arc<Mutex<TapState>>,
}

/// What a [`DigestTap`] found; shared with the caller that reads it after
/// the stream ends.
#[derive(Clone)]
pub struct TapHandle(Arc<Mutex<TapState>>);

struct TapState {
    scanner: ArchiveScanner,
    digester: ArchiveDigester,
    failed: Option<String>,
}

impl DigestTap {
    pub fn new(inner: BoxReader) -> (Self, TapHandle) {
        let state = Arc::new(Mutex::new(TapState {
            scanner: ArchiveScanner::new(),
            digester: ArchiveDigester::new(),
            failed: None,
        }));
        (
            DigestTap {
                inner,
                state: state.clone(),
            },
            TapHandle(state),
        )
    }
}

impl TapHandle {
    /// The digests, once the stream has been read to its end.
    pub fn outcome(&self, settings: &BTreeMap<String, String>) -> Result<ContentDigests> {
        let mut state = self.0.lock().expect("the digest tap panicked");
        if let Some(failed) = state.failed.take() {
            bail!("{failed}");
        }
        let TapState {
            scanner, digester, ..
        } = &mut *state;
        scanner.finish(&mut |event| digester.visit(event))?;
        std::mem::take(digester).finish(settings)
    }
}

impl TapState {
    fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let TapState {
            scanner, digester, ..
        } = self;
        if let Err(err) = scanner.feed(bytes, &mut |event| digester.visit(event)) {
            self.failed = Some(format!("{err:#}"));
        }
    }
}

impl AsyncRead for DigestTap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                self.state
                    .lock()
                    .expect("the digest tap panicked")
                    .feed(read);
            }
        }
        poll
    }
}

/// The digests of an archive (decompressed, e.g. `BackupSet::open_artefact`):
/// for sets written before backups recorded them. `settings` stands in for
/// the dump session's (unknown).
pub async fn from_archive(
    mut reader: BoxReader,
    settings: &BTreeMap<String, String>,
) -> Result<ContentDigests> {
    let mut scanner = ArchiveScanner::new();
    let mut digester = ArchiveDigester::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = reader
            .read(&mut buffer)
            .await
            .context("could not read the archive")?;
        if read == 0 {
            break;
        }
        scanner.feed(&buffer[..read], &mut |event| digester.visit(event))?;
    }
    scanner.finish(&mut |event| digester.visit(event))?;
    digester.finish(settings)
}

/// The digests of the same tables, sequences and large objects as
/// `expected`, read from the database `sessions` are connected to (one
/// or more sessions, which share the tables between them), under
/// `expected`'s output settings. Each table is read in a transaction of
/// its own with those settings local to it, so the sessions keep theirs.
/// A table that cannot be read (missing, a column gone) is a [`Problem`],
/// not an error.
pub async fn read(
    sessions: &[Client],
    expected: &ContentDigests,
    early: &EarlyDigests,
) -> Result<(ContentDigests, Vec<Problem>)> {
    if sessions.is_empty() {
        bail!("content comparison needs a database session");
    }
    let mut got = ContentDigests {
        algorithm: ALGORITHM.into(),
        settings: expected.settings.clone(),
        ..ContentDigests::default()
    };
    let mut problems = Vec::new();
    for (key, digest) in early {
        if let Some(table) = expected.tables.get(key) {
            got.tables.insert(
                key.clone(),
                TableDigest {
                    copy: table.copy.clone(),
                    digest: *digest,
                },
            );
        }
    }
    // Largest first, each to the session that is free first.
    let mut order: Vec<(&String, &TableDigest)> = expected
        .tables
        .iter()
        .filter(|(key, _)| !early.contains_key(*key))
        .collect();
    order.sort_by_key(|(_, table)| std::cmp::Reverse(table.digest.rows));
    let queue = Mutex::new(order.into_iter());
    let next = || queue.lock().expect("queue").next();
    let workers = sessions.iter().map(|session| async {
        let mut done = Vec::new();
        while let Some((key, table)) = next() {
            let read = digest_table(session, &expected.settings, &table.copy).await;
            done.push((key.clone(), table.copy.clone(), read));
        }
        done
    });
    for (key, copy, read) in futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
    {
        match read {
            Ok(digest) => {
                got.tables.insert(key, TableDigest { copy, digest });
            }
            Err(err) => problems.push(Problem {
                kind: "content".into(),
                subject: key,
                expected: "the table's rows can be read".into(),
                got: format!("{err:#}"),
            }),
        }
    }
    let session = &sessions[0];
    for (key, sequence) in &expected.sequences {
        match read_sequence(session, &sequence.relation).await {
            Ok(value) => {
                got.sequences.insert(key.clone(), value);
            }
            Err(err) => problems.push(Problem {
                kind: "sequence".into(),
                subject: key.clone(),
                expected: describe_sequence(sequence),
                got: format!("{err:#}"),
            }),
        }
    }
    got.large_objects = digest_large_objects(session).await?;
    Ok((got, problems))
}

/// Every difference between the content a set recorded and what was read
/// back: per table (digest or row count), per sequence, and the large
/// objects as a whole.
pub fn compare(expected: &ContentDigests, got: &ContentDigests) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, table) in &expected.tables {
        if let Some(got_table) = got.tables.get(key)
            && got_table.digest != table.digest
        {
            problems.push(Problem {
                kind: "content".into(),
                subject: key.clone(),
                expected: table.digest.describe("rows"),
                got: got_table.digest.describe("rows"),
            });
        }
    }
    for (key, sequence) in &expected.sequences {
        if let Some(got_sequence) = got.sequences.get(key)
            && (got_sequence.last_value, got_sequence.is_called)
                != (sequence.last_value, sequence.is_called)
        {
            problems.push(Problem {
                kind: "sequence".into(),
                subject: key.clone(),
                expected: describe_sequence(sequence),
                got: describe_sequence(got_sequence),
            });
        }
    }
    if got.large_objects != expected.large_objects {
        problems.push(Problem {
            kind: "large_objects".into(),
            subject: "pg_largeobject".into(),
            expected: expected.large_objects.describe("objects"),
            got: got.large_objects.describe("objects"),
        });
    }
    problems
}

/// The comparison verify, migrate and rehearse make: reads the content
/// `expected` describes from the database `sessions` are connected to and
/// returns every difference, each naming its table (or sequence) with the
/// expected and the found digest. An error means the database could not
/// be asked at all; differences are problems.
/// Tables digested earlier, while a restore still ran (`early`), are not
/// read again.
pub async fn check(
    sessions: &[Client],
    expected: &ContentDigests,
    early: &EarlyDigests,
) -> Result<Vec<Problem>> {
    let (got, mut problems) = read(sessions, expected, early).await?;
    problems.extend(compare(expected, &got));
    Ok(problems)
}

fn describe_sequence(sequence: &SequenceValue) -> String {
    format!(
        "last_value {}{}",
        sequence.last_value,
        if sequence.is_called {
            ""
        } else {
            " (not called)"
        }
    )
}

/// Sets each of `settings` for the current transaction only.
async fn set_local(session: &Client, settings: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in settings {
        session
            .execute("SELECT set_config($1, $2, true)", &[name, value])
            .await
            .with_context(|| format!("could not set {name} to {value}"))?;
    }
    Ok(())
}

/// Table digests read from a restored database while its restore still
/// ran, by table key: each as soon as pg_restore had loaded the table's
/// rows (they do not change after that).
pub type EarlyDigests = BTreeMap<String, RowsDigest>;

/// Digests one table's rows as `COPY ... TO STDOUT` gives them under
/// `settings`, in a read-only transaction of its own.
pub async fn digest_table(
    session: &Client,
    settings: &BTreeMap<String, String>,
    copy: &str,
) -> Result<RowsDigest> {
    session.batch_execute("BEGIN READ ONLY").await?;
    let read = async {
        set_local(session, settings).await?;
        let stream = session.copy_out(copy).await?;
        futures_util::pin_mut!(stream);
        let mut state = TableState::default();
        while let Some(bytes) = stream.next().await {
            state.feed(&bytes?);
        }
        if !state.partial.is_empty() {
            bail!("COPY ended inside a row");
        }
        Ok(state.digest)
    }
    .await;
    let end = if read.is_ok() { "COMMIT" } else { "ROLLBACK" };
    session.batch_execute(end).await?;
    read
}

async fn read_sequence(session: &Client, relation: &str) -> Result<SequenceValue> {
    // `relation` is pg_dump's own rendering of a regclass; the cast checks it.
    let row = session
        .query_one("SELECT $1::text::regclass::text", &[&relation])
        .await?;
    let checked: String = row.get(0);
    let row = session
        .query_one(&format!("SELECT last_value, is_called FROM {checked}"), &[])
        .await?;
    Ok(SequenceValue {
        relation: relation.to_string(),
        last_value: row.get(0),
        is_called: row.get(1),
    })
}

/// Every large object's oid and content, hashed as the archive's are.
async fn digest_large_objects(session: &Client) -> Result<RowsDigest> {
    const PIECE: i32 = 1 << 20;
    let mut digest = RowsDigest::default();
    let oids = session
        .query(
            "SELECT oid::int8 FROM pg_largeobject_metadata ORDER BY oid",
            &[],
        )
        .await
        .context("could not list the large objects")?;
    for row in oids {
        let oid: i64 = row.get(0);
        let mut hasher = Xxh3::new();
        let mut offset: i64 = 0;
        loop {
            let piece: Vec<u8> = session
                .query_one(
                    "SELECT lo_get($1::int8::oid, $2, $3)",
                    &[&oid, &offset, &PIECE],
                )
                .await
                .with_context(|| format!("could not read large object {oid}"))?
                .get(0);
            hasher.update(&piece);
            offset += piece.len() as i64;
            if piece.len() < PIECE as usize {
                break;
            }
        }
        digest.add_hash(large_object_hash(oid, hasher.digest128()));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn digest_of(rows: &[&str]) -> RowsDigest {
        let mut digest = RowsDigest::default();
        for row in rows {
            digest.add_row(row.as_bytes());
        }
        digest
    }

    #[test]
    fn the_digest_ignores_order_but_counts_duplicates() {
        let a = digest_of(&["1\ta", "2\tb", "3\tc"]);
        assert_eq!(a, digest_of(&["3\tc", "1\ta", "2\tb"]));
        // A row dropped and another duplicated: same count, other digest.
        let replaced = digest_of(&["1\ta", "1\ta", "3\tc"]);
        assert_eq!(replaced.rows, a.rows);
        assert_ne!(replaced, a);
        // Two extra copies of a row would cancel out in an XOR; not here.
        let plus_two = digest_of(&["1\ta", "2\tb", "3\tc", "2\tb", "2\tb"]);
        let xor = |rows: &[&str]| rows.iter().fold(0u128, |x, r| x ^ xxh3_128(r.as_bytes()));
        assert_eq!(
            xor(&["1\ta", "2\tb", "3\tc", "2\tb", "2\tb"]),
            xor(&["1\ta", "2\tb", "3\tc"])
        );
        assert_ne!(plus_two.digest, a.digest);
        // One changed value.
        assert_ne!(digest_of(&["1\ta", "2\tB", "3\tc"]), a);
    }

    #[test]
    fn digests_round_trip_through_json() {
        let mut digests = ContentDigests {
            algorithm: ALGORITHM.into(),
            ..ContentDigests::default()
        };
        digests.tables.insert(
            "accounts".into(),
            TableDigest {
                copy: "COPY public.accounts (id) TO STDOUT".into(),
                digest: digest_of(&["1"]),
            },
        );
        let json = serde_json::to_string(&digests).unwrap();
        assert!(json.contains("\"rows\":1"), "{json}");
        assert_eq!(
            serde_json::from_str::<ContentDigests>(&json).unwrap(),
            digests
        );
    }

    #[test]
    fn reads_copy_setval_and_encoding_statements() {
        assert_eq!(
            copy_to_stdout("COPY public.accounts (id, username) FROM stdin;\n").as_deref(),
            Some("COPY public.accounts (id, username) TO STDOUT")
        );
        assert_eq!(copy_to_stdout("INSERT INTO x"), None);
        assert_eq!(
            parse_setval("SELECT pg_catalog.setval('public.\"it''s_seq\"', 42, false);\n"),
            Some(SequenceValue {
                relation: "public.\"it's_seq\"".into(),
                last_value: 42,
                is_called: false,
            })
        );
        assert_eq!(
            parse_encoding("SET client_encoding = 'UTF8';\n").as_deref(),
            Some("UTF8")
        );
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/archives")
                .join(name),
        )
        .unwrap()
    }

    fn digest_archive(bytes: &[u8], piece: usize) -> ContentDigests {
        let mut scanner = ArchiveScanner::new();
        let mut digester = ArchiveDigester::new();
        for chunk in bytes.chunks(piece) {
            scanner
                .feed(chunk, &mut |event| digester.visit(event))
                .unwrap();
        }
        scanner.finish(&mut |event| digester.visit(event)).unwrap();
        digester.finish(&BTreeMap::new()).unwrap()
    }

    #[test]
    fn digests_the_fixture_archives_rows_as_copy_writes_them() {
        // fixtures/archives/small.sql: accounts (id, username) = (n, 'user' || n).
        let accounts: Vec<String> = (1..=20).map(|n| format!("{n}\tuser{n}")).collect();
        let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
        for name in ["pg15-piped.dump", "pg17-piped.dump"] {
            let bytes = fixture(name);
            let digests = digest_archive(&bytes, bytes.len());
            let table = &digests.tables["accounts"];
            assert_eq!(table.copy, "COPY public.accounts (id, username) TO STDOUT");
            assert_eq!(table.digest, digest_of(&accounts), "{name}");
            assert_eq!(digests.tables["statuses"].digest.rows, 200, "{name}");
            assert_eq!(digests.tables["empty_things"].digest, RowsDigest::default());
            assert_eq!(
                digests.sequences["accounts_id_seq"],
                SequenceValue {
                    relation: "public.accounts_id_seq".into(),
                    last_value: 20,
                    is_called: true,
                },
                "{name}"
            );
            assert_eq!(digests.settings["client_encoding"], "UTF8");
            assert_eq!(digests.settings["DateStyle"], "ISO");
            assert_eq!(digests.large_objects, RowsDigest::default());
            // The same archive in pieces of any size gives the same digests.
            for piece in [1, 7, 4096] {
                assert_eq!(digest_archive(&bytes, piece), digests, "{name} in {piece}s");
            }
        }
    }

    #[test]
    fn a_truncated_archive_is_an_error() {
        let bytes = fixture("pg17-piped.dump");
        let mut scanner = ArchiveScanner::new();
        let mut digester = ArchiveDigester::new();
        let cut = &bytes[..bytes.len() - 20];
        scanner
            .feed(cut, &mut |event| digester.visit(event))
            .unwrap();
        assert!(scanner.finish(&mut |event| digester.visit(event)).is_err());
    }
}
