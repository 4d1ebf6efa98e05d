//! TLS for tusk's own SQL sessions, with libpq's `sslmode` and `sslrootcert`
//! meanings, on rustls.
//!
//! tokio-postgres only knows whether to ask for TLS (disable, prefer,
//! require); how much of the server's certificate is checked lives here, in
//! the rustls verifier each connection gets. The client tools get the same
//! choice as `PGSSLMODE`/`PGSSLROOTCERT` (see [`super::DbTarget::libpq_env`]),
//! so a session and a pg_dump of one run always agree.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::error::TuskError;

/// libpq's `sslmode`: whether TLS is used and how much of the server's
/// certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS only when the server refuses a plain connection.
    Allow,
    /// TLS when the server offers it, else plain (Mastodon's default).
    Prefer,
    /// TLS or fail; the certificate is checked only when a root certificate
    /// is available (then as `verify-ca`).
    Require,
    /// TLS with the certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// `verify-ca` and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The names settings and flags accept, with what each means.
    pub const CHOICES: [(&'static str, &'static str); 6] = [
        ("disable", "never TLS"),
        (
            "allow",
            "plain first; TLS only when the server refuses a plain connection",
        ),
        (
            "prefer",
            "TLS when the server offers it, else plain (the default)",
        ),
        (
            "require",
            "TLS or fail; the certificate is checked only when a root certificate is available",
        ),
        (
            "verify-ca",
            "TLS, the certificate must chain to a CA in sslrootcert",
        ),
        (
            "verify-full",
            "TLS, the certificate must chain to a CA in sslrootcert and name the host",
        ),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn checks_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl FromStr for SslMode {
    type Err = anyhow::Error;

    fn from_str(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                let names: Vec<&str> = SslMode::CHOICES.iter().map(|(name, _)| *name).collect();
                return Err(TuskError::usage(format!(
                    "sslmode {other:?} is not one of {}",
                    names.join(", ")
                )));
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// libpq's `sslrootcert`: the CA certificates a server's certificate must
/// chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trusted CAs (libpq 16+).
    System,
}

impl RootCert {
    pub fn parse(value: &str) -> Self {
        if value == "system" {
            RootCert::System
        } else {
            RootCert::File(PathBuf::from(value))
        }
    }

    /// The value for `PGSSLROOTCERT`.
    pub fn libpq_value(&self) -> String {
        match self {
            RootCert::File(path) => path.display().to_string(),
            RootCert::System => "system".into(),
        }
    }

    /// libpq's default when `sslrootcert` is not given: `~/.postgresql/root.crt`,
    /// used only when it exists.
    pub fn libpq_default() -> Option<PathBuf> {
        let home = std::env::var_os("HOME").filter(|home| !home.is_empty())?;
        Some(Path::new(&home).join(".postgresql/root.crt"))
    }
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::File(path) => write!(f, "{}", path.display()),
            RootCert::System => f.write_str("the system's trusted CAs"),
        }
    }
}

/// The TLS choices of one connection, each possibly unset so that a URL's
/// own parameters can be laid over the configured defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: Option<SslMode>,
    pub root_cert: Option<RootCert>,
}

impl TlsOptions {
    /// These choices, with `defaults` where they are unset.
    pub fn or(&self, defaults: &TlsOptions) -> TlsOptions {
        TlsOptions {
            mode: self.mode.or(defaults.mode),
            root_cert: self
                .root_cert
                .clone()
                .or_else(|| defaults.root_cert.clone()),
        }
    }

    /// The mode in force: as given, else `verify-full` with
    /// `sslrootcert=system` (as libpq 16 does), else `prefer`.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (Some(mode), _) => mode,
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        }
    }

    /// The root certificate in force: as given, else libpq's default file
    /// when it exists.
    pub fn effective_root_cert(&self) -> Option<RootCert> {
        self.root_cert.clone().or_else(|| {
            RootCert::libpq_default()
                .filter(|path| path.is_file())
                .map(RootCert::File)
        })
    }

    /// Refuses the combinations libpq refuses, before any connection.
    pub fn validate(&self) -> Result<()> {
        let mode = self.effective_mode();
        if self.root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(TuskError::usage(format!(
                "sslrootcert=system trusts every public CA, so it needs sslmode=verify-full \
                 (sslmode is {mode}): set sslmode=verify-full, or give the server's CA \
                 certificate as sslrootcert"
            )));
        }
        Ok(())
    }
}

/// The connector for `options` with every check libpq would make in its
/// place. Fails when the mode needs a root certificate that is missing or
/// unreadable.
pub(crate) fn connector(options: &TlsOptions) -> Result<RustlsConnector> {
    let mode = options.effective_mode();
    let root_cert = options.effective_root_cert();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = match &root_cert {
        Some(root) if mode != SslMode::Disable => Some(load_roots(root)?),
        _ if mode.checks_chain() => {
            let default = RootCert::libpq_default()
                .map(|path| format!(" and {} does not exist", path.display()))
                .unwrap_or_default();
            anyhow::bail!(
                "sslmode={mode} checks the server's certificate, but no root certificate is \
                 given{default}: set sslrootcert (in the URL, --pg-sslrootcert or \
                 postgres.sslrootcert) to the PEM file of the CA that signed the server's \
                 certificate, or sslrootcert=system for a public CA"
            );
        }
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(AnyCertificate {
            provider: provider.clone(),
        }),
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .context("could not set up the TLS certificate check")?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { webpki })
            }
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("could not set up TLS")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 sends; servers before 17 ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(RustlsConnector {
        config: Arc::new(config),
    })
}

fn load_roots(root: &RootCert) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|err| {
                    anyhow::anyhow!(
                        "could not read sslrootcert {}: {err}; give the PEM file of the CA \
                         that signed the server's certificate",
                        path.display()
                    )
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                anyhow::bail!(
                    "sslrootcert {} holds no usable CA certificate; give the PEM file of the CA \
                     that signed the server's certificate",
                    path.display()
                );
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                anyhow::bail!(
                    "sslrootcert=system, but no trusted CA certificate was found on this system \
                     (install ca-certificates, or give the CA's PEM file as sslrootcert)"
                );
            }
        }
    }
    Ok(Arc::new(store))
}

/// `require` without a root certificate: encryption, no identity check.
/// The handshake's signatures are still verified, so the session is bound to
/// the key in the certificate the server sent.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must end at a trusted root, whatever host name
/// the certificate carries. webpki checks the chain before the name, so a
/// name mismatch means the chain was good.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Says in a user's terms why a TLS connection failed and what to change,
/// when the failure is TLS's; `None` for any other failure.
pub(crate) fn explain_failure(
    err: &tokio_postgres::Error,
    host: &str,
    options: &TlsOptions,
) -> Option<String> {
    let mode = options.effective_mode();
    let Some(tls_error) = find_rustls_error(err) else {
        // tokio-postgres' own words when the server answers the TLS request with "no".
        let refused = std::iter::successors(Some(err as &dyn std::error::Error), |e| e.source())
            .any(|e| e.to_string().contains("server does not support TLS"));
        return refused.then(|| {
            format!(
                "the server does not accept TLS connections and sslmode={mode} requires TLS: \
                 turn on ssl in the server's postgresql.conf, or use sslmode=prefer"
            )
        });
    };
    let roots = options
        .effective_root_cert()
        .map_or_else(|| "the root certificate".into(), |root| root.to_string());
    let explanation = match tls_error {
        rustls::Error::InvalidCertificate(cert_error) => match cert_error {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!(
                    "the server's certificate is not signed by a CA in sslrootcert ({roots}): \
                     set sslrootcert to the certificate of the CA that signed the server's \
                     (your provider's CA bundle)"
                )
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "the server's certificate is for {}, not {host}: connect by that name, or use \
                 sslmode=verify-ca to check only the CA",
                if presented.is_empty() {
                    "no host name".to_string()
                } else {
                    presented
                        .iter()
                        .map(|name| presented_name(name))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            CertificateError::NotValidForName => format!(
                "the server's certificate is not for {host}: connect by the name in the \
                 certificate, or use sslmode=verify-ca to check only the CA"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired: renew it on the server".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet: check the clocks of this machine \
                 and the server"
                    .into()
            }
            other => format!("the server's certificate was refused ({other:?}) by sslmode={mode}"),
        },
        other => format!("the TLS handshake failed ({other}) with sslmode={mode}"),
    };
    Some(explanation)
}

/// A name as rustls presents it (`DnsName("db.example")`,
/// `IpAddress(10.0.0.5)`), as a user writes it.
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            name.strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(name)
}

/// The rustls error under a tokio-postgres one. `io::Error` does not expose
/// its payload through `source()`, so each level is also unwrapped by hand.
fn find_rustls_error(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = error
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// Whether a connection failed in the TLS handshake (prefer then retries
/// without TLS, as libpq does).
pub(crate) fn is_handshake_failure(err: &tokio_postgres::Error) -> bool {
    find_rustls_error(err).is_some()
}

/// tokio-postgres' [`MakeTlsConnect`] over tokio-rustls with one
/// [`ClientConfig`].
#[derive(Clone)]
pub struct RustlsConnector {
    config: Arc<ClientConfig>,
}

impl<S> MakeTlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        // tokio-postgres asks even for a Unix socket (domain ""), where TLS
        // is never started; a bad name only matters once a handshake begins.
        Ok(RustlsConnect {
            server_name: ServerName::try_from(domain.to_string()).ok(),
            domain: domain.to_string(),
            config: self.config.clone(),
        })
    }
}

pub struct RustlsConnect {
    server_name: Option<ServerName<'static>>,
    domain: String,
    config: Arc<ClientConfig>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.server_name.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{:?} is not a host name TLS can check", self.domain),
                )
            })?;
            let connector = tokio_rustls::TlsConnector::from(self.config);
            connector.connect(name, stream).await.map(RustlsStream)
        })
    }
}

/// A TLS session to the server.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `tls-server-end-point` (RFC 5929) for SCRAM-SHA-256-PLUS, as libpq
    /// computes it: a hash of the server's certificate with the hash of its
    /// signature algorithm (SHA-256 for MD5 and SHA-1).
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        let Some(cert) = session.peer_certificates().and_then(|certs| certs.first()) else {
            return ChannelBinding::none();
        };
        match signature_hash(cert.as_ref()) {
            Some(SignatureHash::Sha256) => {
                ChannelBinding::tls_server_end_point(Sha256::digest(cert).to_vec())
            }
            Some(SignatureHash::Sha384) => {
                ChannelBinding::tls_server_end_point(Sha384::digest(cert).to_vec())
            }
            Some(SignatureHash::Sha512) => {
                ChannelBinding::tls_server_end_point(Sha512::digest(cert).to_vec())
            }
            None => ChannelBinding::none(),
        }
    }
}

impl<S> AsyncRead for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SignatureHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a DER certificate's signature algorithm, for channel binding;
/// `None` for algorithms without one (Ed25519) or with it in parameters (PSS).
fn signature_hash(cert: &[u8]) -> Option<SignatureHash> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm
    // SEQUENCE { algorithm OID, ... }, signature BIT STRING }
    let (certificate, _) = der_element(cert, 0x30)?;
    let (_tbs, rest) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    if oid == ECDSA_SHA1 {
        return Some(SignatureHash::Sha256);
    }
    let (prefix, last) = oid.split_at(oid.len().checked_sub(1)?);
    match (prefix, last[0]) {
        // md5, sha1, sha256 WithRSAEncryption
        (RSA, 0x04 | 0x05 | 0x0b) => Some(SignatureHash::Sha256),
        (RSA, 0x0c) => Some(SignatureHash::Sha384),
        (RSA, 0x0d) => Some(SignatureHash::Sha512),
        (ECDSA_SHA2, 0x02) => Some(SignatureHash::Sha256),
        (ECDSA_SHA2, 0x03) => Some(SignatureHash::Sha384),
        (ECDSA_SHA2, 0x04) => Some(SignatureHash::Sha512),
        _ => None,
    }
}

/// One DER element with tag `tag` at the start of `input`: its contents and
/// what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |acc, &byte| (acc << 8) | usize::from(byte));
        (length, rest)
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_read_as_written() {
        assert_eq!(presented_name("DnsName(\"db.example\")"), "db.example");
        assert_eq!(presented_name("IpAddress(10.0.0.5)"), "10.0.0.5");
        assert_eq!(presented_name("URI(x)"), "URI(x)");
    }

    #[test]
    fn parses_every_libpq_mode_and_names_them_on_error() {
        for (name, _) in SslMode::CHOICES {
            assert_eq!(name.parse::<SslMode>().unwrap().as_str(), name);
        }
        let err = "verify_full".parse::<SslMode>().unwrap_err().to_string();
        assert!(
            err.contains("verify_full") && err.contains("verify-full"),
            "{err}"
        );
    }

    #[test]
    fn defaults_follow_libpq() {
        let none = TlsOptions::default();
        assert_eq!(none.effective_mode(), SslMode::Prefer);
        let system = TlsOptions {
            mode: None,
            root_cert: Some(RootCert::parse("system")),
        };
        assert_eq!(system.effective_mode(), SslMode::VerifyFull);
        assert!(system.validate().is_ok());
        let weak_system = TlsOptions {
            mode: Some(SslMode::Require),
            root_cert: Some(RootCert::System),
        };
        assert!(weak_system.validate().is_err());
    }

    #[test]
    fn given_choices_win_over_defaults() {
        let given = TlsOptions {
            mode: Some(SslMode::Require),
            root_cert: None,
        };
        let defaults = TlsOptions {
            mode: Some(SslMode::VerifyFull),
            root_cert: Some(RootCert::parse("/ca.crt")),
        };
        let merged = given.or(&defaults);
        assert_eq!(merged.mode, Some(SslMode::Require));
        assert_eq!(merged.root_cert, Some(RootCert::File("/ca.crt".into())));
    }

    #[test]
    fn verify_modes_without_a_root_certificate_say_what_to_set() {
        let options = TlsOptions {
            mode: Some(SslMode::VerifyFull),
            root_cert: Some(RootCert::File("/nonexistent/ca.crt".into())),
        };
        let err = connector(&options).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/ca.crt"), "{err}");
    }

    /// A certificate's outer structure down to its signature algorithm.
    fn fake_cert(oid: &[u8]) -> Vec<u8> {
        let tbs = [0x30, 0x03, 0x02, 0x01, 0x01];
        let mut algorithm = vec![0x30, (oid.len() + 2) as u8, 0x06, oid.len() as u8];
        algorithm.extend_from_slice(oid);
        let mut body = tbs.to_vec();
        body.extend_from_slice(&algorithm);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, 0x81, body.len() as u8];
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        let rsa = |last| [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last];
        assert_eq!(
            signature_hash(&fake_cert(&rsa(0x0b))),
            Some(SignatureHash::Sha256)
        );
        assert_eq!(
            signature_hash(&fake_cert(&rsa(0x05))),
            Some(SignatureHash::Sha256)
        );
        assert_eq!(
            signature_hash(&fake_cert(&rsa(0x0c))),
            Some(SignatureHash::Sha384)
        );
        assert_eq!(
            signature_hash(&fake_cert(&[
                0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04
            ])),
            Some(SignatureHash::Sha512)
        );
        // Ed25519 (1.3.101.112) has no hash to bind with.
        assert_eq!(signature_hash(&fake_cert(&[0x2b, 0x65, 0x70])), None);
        assert_eq!(signature_hash(&[0x30, 0x05, 0x01]), None);
    }
}
