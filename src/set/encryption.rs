//! age encryption of a set's artefacts.
//!
//! Every artefact of an encrypted set is an ordinary age file (the format of
//! <https://age-encryption.org/v1>): compressed first, then encrypted while it
//! streams, so the standard `age` tool opens it without tusk
//! (`age -d -i key.txt database.dump.zst.age | zstd -d`). Recipients are age
//! X25519 public keys (`age1...`) and SSH public keys (`ssh-ed25519`,
//! `ssh-rsa`), several at once (the admin's and an offline recovery key), or
//! one passphrase. The manifest records the recipients' public keys, never a
//! secret; the checksums cover the encrypted bytes, so a set's integrity is
//! checked without a key.
//!
//! Memory stays bounded: age encrypts in 64 KiB chunks, and both adapters
//! below hold at most a chunk or two.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, ready};

use age::secrecy::SecretString;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::error::TuskError;
use crate::postgres::BoxReader;

/// The suffix of an encrypted artefact's stored name, as the `age` tool
/// names its output: `database.dump.zst.age`.
pub const AGE_SUFFIX: &str = ".age";

/// What the manifest says about a set's encryption. It holds no secret:
/// the recipients are public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// `age`.
    pub algorithm: String,
    /// The public keys the set was encrypted to, as configured.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Encrypted to a passphrase instead of keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passphrase: bool,
}

impl EncryptionInfo {
    /// Who can open the set, for error messages.
    pub fn describe_recipients(&self) -> String {
        if self.passphrase {
            return "a passphrase".into();
        }
        match self.recipients.as_slice() {
            [] => "no recipient recorded".into(),
            keys => keys
                .iter()
                .map(|key| short_key(key))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// A public key without the SSH comment's noise cut short for messages:
/// `ssh-ed25519 AAAAC3Nz...AbCd admin@host`.
fn short_key(key: &str) -> String {
    let mut parts = key.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(kind), Some(body)) if kind.starts_with("ssh-") && body.len() > 24 => {
            let comment: Vec<&str> = parts.collect();
            let mut short = format!("{kind} {}...{}", &body[..12], &body[body.len() - 8..]);
            if !comment.is_empty() {
                short.push(' ');
                short.push_str(&comment.join(" "));
            }
            short
        }
        _ => key.to_string(),
    }
}

type BoxRecipient = Box<dyn age::Recipient + Send + Sync>;
type BoxIdentity = Box<dyn age::Identity + Send + Sync>;

/// Parses one recipient: an age X25519 public key or an SSH public key.
pub fn parse_recipient(text: &str) -> Result<BoxRecipient> {
    let text = text.trim();
    if text.starts_with("age1") {
        #[allow(deprecated)] // X25519 is the key type the age tool (1.x) opens
        let parsed = text.parse::<age::x25519::Recipient>();
        return match parsed {
            Ok(key) => Ok(Box::new(key)),
            Err(err) => Err(TuskError::usage(format!(
                "{text:?} is not an age X25519 public key: {err}; `age-keygen -y KEYFILE` prints one"
            ))),
        };
    }
    if text.starts_with("ssh-") {
        #[allow(deprecated)]
        let parsed = text.parse::<age::ssh::Recipient>();
        return match parsed {
            Ok(key) => Ok(Box::new(key)),
            Err(err) => Err(TuskError::usage(format!(
                "{} is not an SSH public key age can encrypt to ({err:?}); use ssh-ed25519 or \
                 ssh-rsa (2048 bits or more)",
                short_key(text)
            ))),
        };
    }
    Err(TuskError::usage(format!(
        "{:?} is neither an age public key (age1...) nor an SSH public key (ssh-ed25519 ..., \
         ssh-rsa ...)",
        short_key(text)
    )))
}

/// The recipients listed in a file, one a line (`#` comments and blank
/// lines allowed), as `age -R` reads them.
pub fn read_recipients_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        TuskError::usage(format!(
            "could not read the recipients file {}: {err}",
            path.display()
        ))
    })?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        return Err(TuskError::usage(format!(
            "the recipients file {} lists no public key",
            path.display()
        )));
    }
    Ok(keys)
}

/// How new artefacts are encrypted.
#[derive(Clone)]
pub struct Encryption {
    inner: Arc<EncryptTo>,
}

enum EncryptTo {
    Recipients {
        written: Vec<String>,
        keys: Vec<BoxRecipient>,
    },
    Passphrase(SecretString),
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encryption({})", self.info().describe_recipients())
    }
}

impl Encryption {
    /// Encryption to public keys, each checked now.
    pub fn to_recipients(written: Vec<String>) -> Result<Self> {
        if written.is_empty() {
            bail!("encryption needs at least one recipient");
        }
        let keys = written
            .iter()
            .map(|key| parse_recipient(key))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encryption {
            inner: Arc::new(EncryptTo::Recipients { written, keys }),
        })
    }

    /// Encryption to a passphrase (age's scrypt recipient).
    pub fn to_passphrase(passphrase: SecretString) -> Self {
        Encryption {
            inner: Arc::new(EncryptTo::Passphrase(passphrase)),
        }
    }

    /// For the manifest.
    pub fn info(&self) -> EncryptionInfo {
        match &*self.inner {
            EncryptTo::Recipients { written, .. } => EncryptionInfo {
                algorithm: "age".into(),
                recipients: written.iter().map(|k| k.trim().to_string()).collect(),
                passphrase: false,
            },
            EncryptTo::Passphrase(_) => EncryptionInfo {
                algorithm: "age".into(),
                recipients: Vec::new(),
                passphrase: true,
            },
        }
    }

    fn encryptor(&self) -> std::io::Result<age::Encryptor> {
        match &*self.inner {
            EncryptTo::Recipients { keys, .. } => {
                age::Encryptor::with_recipients(keys.iter().map(|k| k.as_ref() as _))
                    .map_err(std::io::Error::other)
            }
            EncryptTo::Passphrase(passphrase) => {
                Ok(age::Encryptor::with_user_passphrase(passphrase.clone()))
            }
        }
    }

    /// A new file key and header for one age file. For a passphrase this
    /// runs scrypt (about a second of CPU), off the runtime's threads.
    pub async fn prepare(&self) -> std::io::Result<PreparedFile> {
        let encryptor = match &*self.inner {
            EncryptTo::Passphrase(_) => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.encryptor())
                    .await
                    .map_err(std::io::Error::other)??
            }
            EncryptTo::Recipients { .. } => self.encryptor()?,
        };
        Ok(PreparedFile { encryptor })
    }

    /// Wraps `inner` so that what is written to it arrives as one age file
    /// ([`Self::prepare`] and [`PreparedFile::wrap`] in one).
    pub async fn writer<W: AsyncWrite + Unpin>(
        &self,
        inner: W,
    ) -> std::io::Result<EncryptingWriter<W>> {
        Ok(self.prepare().await?.wrap(inner))
    }
}

/// The header of one age file, ready to wrap a writer.
pub struct PreparedFile {
    encryptor: age::Encryptor,
}

impl PreparedFile {
    /// Wraps `inner`: what is written to the result arrives in `inner` as
    /// one age file, whose last chunk `shutdown` writes.
    pub fn wrap<W: AsyncWrite + Unpin>(self, inner: W) -> EncryptingWriter<W> {
        let pending = Pending::default();
        // The header goes into `pending` (memory, which cannot fail) and is
        // written out before the first chunk.
        let stream = self.encryptor.wrap_output(pending.clone());
        let (stream, failed) = match stream {
            Ok(stream) => (Some(stream), None),
            Err(err) => (None, Some(err)),
        };
        EncryptingWriter {
            inner,
            stream,
            failed,
            pending,
            flushed: 0,
        }
    }
}

/// Bytes age produced that the inner writer has not taken yet.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<Vec<u8>>>);

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Input per `poll_write`: one age chunk, so at most about two encrypted
/// chunks wait in memory.
const PLAINTEXT_PER_WRITE: usize = 64 * 1024;

/// An `AsyncWrite` that encrypts into an inner writer ([`Encryption::writer`]).
pub struct EncryptingWriter<W> {
    inner: W,
    stream: Option<age::stream::StreamWriter<Pending>>,
    /// Why the header could not be made, reported on first use.
    failed: Option<std::io::Error>,
    pending: Pending,
    /// How much of `pending` the inner writer took already.
    flushed: usize,
}

impl<W: AsyncWrite + Unpin> EncryptingWriter<W> {
    /// The inner writer, once shut down.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Writes out what age produced so far.
    fn poll_pending(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut pending = self
                .pending
                .0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            if self.flushed == pending.len() {
                pending.clear();
                self.flushed = 0;
                return Poll::Ready(Ok(()));
            }
            let written =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &pending[self.flushed..]))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.flushed += written;
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for EncryptingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(err) = this.failed.take() {
            return Poll::Ready(Err(err));
        }
        ready!(this.poll_pending(cx))?;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Err(std::io::Error::other(
                "write after the age file was finished",
            )));
        };
        let take = buf.len().min(PLAINTEXT_PER_WRITE);
        Poll::Ready(stream.write(&buf[..take]))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(err) = this.failed.take() {
            return Poll::Ready(Err(err));
        }
        ready!(this.poll_pending(cx))?;
        if let Some(stream) = this.stream.take() {
            // The last chunk, marked as last: without it age reports a truncated file.
            stream.finish()?;
            ready!(this.poll_pending(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Keys that open encrypted sets: age identity files (`AGE-SECRET-KEY-1...`
/// lines, as `age-keygen` writes them), unencrypted SSH private keys, and a
/// passphrase.
#[derive(Default)]
pub struct Identities {
    /// Where each came from, for messages.
    sources: Vec<String>,
    keys: Vec<BoxIdentity>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({})", self.sources.join(", "))
    }
}

impl Identities {
    /// Reads identity files; a file that holds no usable key is an error
    /// naming it.
    pub fn from_files(files: &[PathBuf]) -> Result<Self> {
        let mut identities = Identities::default();
        for file in files {
            identities.add_file(file)?;
        }
        Ok(identities)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            TuskError::usage(format!(
                "could not read the identity file {}: {err}",
                path.display()
            ))
        })?;
        let name = path.display().to_string();
        if text.trim_start().starts_with("-----BEGIN") {
            let key = age::ssh::Identity::from_buffer(text.as_bytes(), Some(name.clone()))
                .map_err(|err| {
                    TuskError::usage(format!("{name} is not an SSH private key age reads: {err}"))
                })?;
            match key {
                age::ssh::Identity::Unencrypted(_) => {}
                age::ssh::Identity::Encrypted(_) => {
                    return Err(TuskError::usage(format!(
                        "the SSH key {name} is protected by a passphrase, which tusk cannot ask \
                         for; use an unprotected copy kept as safe as the key itself, or an age \
                         identity"
                    )));
                }
                age::ssh::Identity::Unsupported(_) => {
                    return Err(TuskError::usage(format!(
                        "the SSH key {name} is of a type age does not support: use ssh-ed25519 \
                         or ssh-rsa"
                    )));
                }
            }
            self.keys.push(Box::new(key));
        } else {
            let file = age::IdentityFile::from_buffer(text.as_bytes()).map_err(|err| {
                TuskError::usage(format!(
                    "{name} is not an age identity file (AGE-SECRET-KEY-1... lines) or an SSH \
                     private key: {err}"
                ))
            })?;
            let keys = file
                .into_identities()
                .map_err(|err| TuskError::usage(format!("{name}: {err}")))?;
            if keys.is_empty() {
                return Err(TuskError::usage(format!("{name} holds no age identity")));
            }
            self.keys.extend(keys);
        }
        self.sources.push(name);
        Ok(())
    }

    /// Adds a passphrase, for sets encrypted to one.
    pub fn add_passphrase(&mut self, passphrase: SecretString) {
        self.keys
            .push(Box::new(age::scrypt::Identity::new(passphrase)));
        self.sources.push("the passphrase".into());
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Where the keys came from: `--identity` files and "the passphrase".
    pub fn describe(&self) -> String {
        self.sources.join(", ")
    }

    /// Decrypts `source`, an artefact of a set encrypted as `info` says.
    /// A key that does not fit is an error naming the set's recipients.
    pub async fn open(
        &self,
        source: BoxReader,
        artefact: &str,
        info: &EncryptionInfo,
    ) -> Result<BoxReader> {
        if self.keys.is_empty() {
            return Err(no_identity_error(artefact, info));
        }
        let decryptor = age::Decryptor::new_async(source.compat())
            .await
            .map_err(|err| decrypt_error(err, artefact, info, self))?;
        let open = || {
            decryptor
                .decrypt_async(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
                .map_err(|err| decrypt_error(err, artefact, info, self))
        };
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        let reader = if info.passphrase && multi_thread {
            // scrypt: about a second of CPU, not on a thread other tasks need.
            tokio::task::block_in_place(open)?
        } else {
            open()?
        };
        Ok(Box::new(reader.compat()))
    }
}

/// A set encrypted to keys no one gave.
pub fn no_identity_error(artefact: &str, info: &EncryptionInfo) -> anyhow::Error {
    let how = if info.passphrase {
        "give the passphrase on a terminal or in the file TUSK_PASSPHRASE_FILE names"
    } else {
        "pass --identity FILE (or set encryption.identity_files) with the private key of one of \
         them"
    };
    anyhow::anyhow!(
        "{artefact} is encrypted with age to {}; {how}",
        info.describe_recipients()
    )
}

fn decrypt_error(
    err: age::DecryptError,
    artefact: &str,
    info: &EncryptionInfo,
    identities: &Identities,
) -> anyhow::Error {
    match err {
        age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed
            if !info.passphrase =>
        {
            anyhow::anyhow!(
                "none of the identities given ({}) opens {artefact}: it is encrypted with age to \
                 {}; pass --identity with the private key of one of them",
                identities.describe(),
                info.describe_recipients()
            )
        }
        age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => {
            anyhow::anyhow!("the passphrase does not open {artefact}")
        }
        other => anyhow::anyhow!("{artefact} is not a readable age file: {other}"),
    }
}

/// A passphrase read from a file (`TUSK_PASSPHRASE_FILE`): its first line.
pub fn read_passphrase_file(path: &Path) -> Result<SecretString> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the passphrase file {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(TuskError::usage(format!(
            "the passphrase file {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SSH_ED25519_PRIVATE: &str = include_str!("../../fixtures/encryption/id_ed25519");
    const SSH_ED25519_PUBLIC_LINE: &str = include_str!("../../fixtures/encryption/id_ed25519.pub");
    const SSH_ED25519_PUBLIC: &str = SSH_ED25519_PUBLIC_LINE.trim_ascii_end();

    fn data() -> Vec<u8> {
        // Over three age chunks, not a multiple of 64 KiB.
        (0..200_001u32).map(|i| (i % 251) as u8).collect()
    }

    async fn encrypt(encryption: &Encryption, plain: &[u8]) -> Vec<u8> {
        let mut writer = encryption.writer(Vec::new()).await.unwrap();
        // Odd write sizes: the adapter must not depend on them.
        for piece in plain.chunks(10_007) {
            writer.write_all(piece).await.unwrap();
        }
        writer.shutdown().await.unwrap();
        writer.into_inner()
    }

    async fn decrypt(
        identities: &Identities,
        info: &EncryptionInfo,
        cipher: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut reader = identities
            .open(Box::new(std::io::Cursor::new(cipher)), "test.age", info)
            .await?;
        let mut back = Vec::new();
        reader.read_to_end(&mut back).await?;
        Ok(back)
    }

    #[allow(deprecated)]
    fn x25519_key() -> (String, String) {
        let identity = age::x25519::Identity::generate();
        (
            identity.to_string().expose_secret().to_string(),
            identity.to_public().to_string(),
        )
    }

    fn key_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn round_trips_to_several_recipients_and_the_age_crate_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = x25519_key();
        let (other_secret, other_public) = x25519_key();
        let encryption =
            Encryption::to_recipients(vec![public, SSH_ED25519_PUBLIC.into(), other_public])
                .unwrap();
        let info = encryption.info();
        assert_eq!(info.recipients.len(), 3);
        let cipher = encrypt(&encryption, &data()).await;
        assert!(cipher.starts_with(b"age-encryption.org/v1\n"));

        // The age crate's own synchronous reader agrees.
        #[allow(deprecated)]
        let identity: age::x25519::Identity = secret.parse().unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut age::Decryptor::new(&cipher[..])
                .unwrap()
                .decrypt(std::iter::once(&identity as &dyn age::Identity))
                .unwrap(),
            &mut plain,
        )
        .unwrap();
        assert_eq!(plain, data());

        for (name, text) in [
            ("x25519.txt", format!("# created: now\n{secret}\n")),
            ("other.txt", other_secret.clone()),
            ("id_ed25519", SSH_ED25519_PRIVATE.to_string()),
        ] {
            let identities = Identities::from_files(&[key_file(dir.path(), name, &text)]).unwrap();
            assert_eq!(
                decrypt(&identities, &info, cipher.clone()).await.unwrap(),
                data(),
                "{name}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_wrong_identity_names_the_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = x25519_key();
        let (wrong, _) = x25519_key();
        let encryption = Encryption::to_recipients(vec![public.clone()]).unwrap();
        let cipher = encrypt(&encryption, b"secret").await;
        let wrong_file = key_file(dir.path(), "wrong.txt", &wrong);
        let identities = Identities::from_files(&[wrong_file]).unwrap();
        let err = decrypt(&identities, &encryption.info(), cipher.clone())
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains(&public), "{message}");
        assert!(message.contains("wrong.txt"), "{message}");

        let err = decrypt(&Identities::default(), &encryption.info(), cipher)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("--identity"), "{err:#}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flipped_byte_is_an_error_not_wrong_data() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = x25519_key();
        let encryption = Encryption::to_recipients(vec![public]).unwrap();
        let mut cipher = encrypt(&encryption, &data()).await;
        let middle = cipher.len() / 2;
        cipher[middle] ^= 1;
        let identities = Identities::from_files(&[key_file(dir.path(), "k", &secret)]).unwrap();
        assert!(
            decrypt(&identities, &encryption.info(), cipher)
                .await
                .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_passphrase_round_trips() {
        let encryption = Encryption::to_passphrase(SecretString::from("correct horse".to_string()));
        let info = encryption.info();
        assert!(info.passphrase && info.recipients.is_empty());
        let cipher = encrypt(&encryption, b"hello").await;
        let mut identities = Identities::default();
        identities.add_passphrase(SecretString::from("correct horse".to_string()));
        assert_eq!(
            decrypt(&identities, &info, cipher.clone()).await.unwrap(),
            b"hello"
        );
        let mut wrong = Identities::default();
        wrong.add_passphrase(SecretString::from("wrong".to_string()));
        assert!(decrypt(&wrong, &info, cipher).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_empty_input_is_still_a_valid_age_file() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = x25519_key();
        let encryption = Encryption::to_recipients(vec![public]).unwrap();
        let cipher = encrypt(&encryption, b"").await;
        let identities = Identities::from_files(&[key_file(dir.path(), "k", &secret)]).unwrap();
        assert!(
            decrypt(&identities, &encryption.info(), cipher)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn recipients_are_checked_and_named_in_errors() {
        let (_, public) = x25519_key();
        assert!(parse_recipient(&public).is_ok());
        assert!(parse_recipient(SSH_ED25519_PUBLIC).is_ok());
        for bad in [
            "age1nope",
            "ssh-dss AAAAB3NzaC1kc3M",
            "AGE-SECRET-KEY-1XYZ",
            "",
        ] {
            let err = parse_recipient(bad).err().unwrap();
            assert_eq!(crate::error::exit_status_for(&err), 2, "{bad}: {err:#}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = key_file(
            dir.path(),
            "recipients.txt",
            &format!("# admin\n{public}\n\n{SSH_ED25519_PUBLIC}\n"),
        );
        assert_eq!(
            read_recipients_file(&file).unwrap(),
            vec![public, SSH_ED25519_PUBLIC.to_string()]
        );
        let empty = key_file(dir.path(), "empty.txt", "# nobody\n");
        assert!(read_recipients_file(&empty).is_err());
    }

    #[test]
    fn identity_files_that_hold_no_key_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let public = key_file(dir.path(), "pub.txt", SSH_ED25519_PUBLIC);
        let err = Identities::from_files(&[public]).unwrap_err();
        assert_eq!(crate::error::exit_status_for(&err), 2, "{err:#}");
        let missing = dir.path().join("missing");
        assert!(Identities::from_files(&[missing]).is_err());
    }

    #[test]
    fn the_manifest_shows_public_keys_only() {
        let (secret, public) = x25519_key();
        let encryption = Encryption::to_recipients(vec![format!("  {public} ")]).unwrap();
        let json = serde_json::to_string(&encryption.info()).unwrap();
        assert!(json.contains(&public) && !json.contains(&secret), "{json}");
        assert!(!json.contains("passphrase"), "{json}");
    }
}
