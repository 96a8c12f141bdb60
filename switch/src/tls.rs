//! TLS for QUIC: the server's certificate, client authentication, and who a client is.
//!
//! Two modes. `self-signed` (the default) generates a certificate at first start, keeps it in the
//! data directory and logs its SHA-256 fingerprint, which clients pin. `files` loads certificate
//! and key from files and requires every client to present a certificate signed by the
//! configured CA (mutual TLS); the certificate's fingerprint says which participant it is.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger::ParticipantId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{self, ConfigError, TlsMode};

pub use crate::wire::ALPN;

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

pub use switch_core::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS configuration: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

impl TlsError {
    /// What went wrong with a file, without its name.
    fn message(&self) -> String {
        match self {
            TlsError::Io { source, .. } => source.to_string(),
            TlsError::Pem { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The generated certificate's file (DER) in `data_dir/tls`; its key is `server-key.der`.
pub const SELF_SIGNED_CERT_FILE: &str = "server-cert.der";

/// The server's certificate chain and key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.chain.first().map(Fingerprint::of)
    }

    /// Loads the generated certificate from `dir`, generating it at first use.
    pub fn self_signed(dir: &Path) -> Result<(ServerIdentity, bool), TlsError> {
        let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
        let key_path = dir.join("server-key.der");
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(io(&cert_path))?;
            let key = std::fs::read(&key_path).map_err(io(&key_path))?;
            let key = PrivateKeyDer::try_from(key).map_err(|message| TlsError::Pem {
                path: key_path.display().to_string(),
                message: message.to_string(),
            })?;
            return Ok((
                ServerIdentity {
                    chain: vec![CertificateDer::from(cert)],
                    key,
                },
                false,
            ));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let generated = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        let cert = generated.cert.der().to_vec();
        let key = generated.signing_key.serialize_der();
        write_private(&key_path, &key)?;
        std::fs::write(&cert_path, &cert).map_err(io(&cert_path))?;
        let key = PrivateKeyDer::try_from(key).map_err(|message| TlsError::Pem {
            path: key_path.display().to_string(),
            message: message.to_string(),
        })?;
        Ok((
            ServerIdentity {
                chain: vec![CertificateDer::from(cert)],
                key,
            },
            true,
        ))
    }

    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerIdentity, TlsError> {
        Ok(ServerIdentity {
            chain: read_certs(cert)?,
            key: read_key(key)?,
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            message: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            message: "no certificate found".to_string(),
        });
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::{self, PemObject};
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        message: match e {
            pem::Error::NoItemsFound => "no private key found".to_string(),
            e => e.to_string(),
        },
    })
}

/// How the server decides who a connection is.
#[derive(Clone, Debug, Default)]
pub struct Identities {
    by_fingerprint: HashMap<Fingerprint, Identity>,
    anonymous: Option<Identity>,
}

impl Identities {
    pub fn new(config: &config::Config) -> Self {
        let by_fingerprint = config
            .identities
            .iter()
            .filter_map(|i| {
                Some((
                    Fingerprint(config::parse_fingerprint(&i.fingerprint_sha256)?),
                    Identity {
                        participant: ParticipantId(i.participant),
                        admin: i.admin,
                    },
                ))
            })
            .collect();
        let anonymous = match config.tls.mode {
            TlsMode::SelfSigned => config.tls.anonymous_participant.map(|p| Identity {
                participant: ParticipantId(p),
                admin: config.tls.anonymous_is_admin,
            }),
            TlsMode::Files => None,
        };
        Identities {
            by_fingerprint,
            anonymous,
        }
    }

    /// The identity of a connection from the certificates it presented (verified by rustls).
    pub fn identify(&self, peer: Option<&[CertificateDer<'static>]>) -> Option<Identity> {
        match peer.and_then(|chain| chain.first()) {
            Some(cert) => self.by_fingerprint.get(&Fingerprint::of(cert)).copied(),
            None => self.anonymous,
        }
    }

    pub fn anonymous(&self) -> Option<Identity> {
        self.anonymous
    }
}

/// What the server's TLS runs with: its certificate chain and key and, under mutual TLS, how
/// client certificates are verified.
pub struct ServerTls {
    pub identity: ServerIdentity,
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl ServerTls {
    /// The server identity alone, with client certificates optional and unverified.
    pub fn without_client_auth(identity: ServerIdentity) -> Self {
        ServerTls {
            identity,
            client_verifier: None,
        }
    }

    /// For `tls.mode = "files"`: reads the server's certificate chain and key and the client
    /// CAs, and checks that each parses and that the key is the certificate's. `switch serve`
    /// runs with what this returns and `switch config check` runs it too, so that both refuse
    /// the same files the same way: naming the key (`tls.cert_file`, ...) and the file.
    pub fn from_files(tls: &config::Tls, origin: &str) -> Result<ServerTls, ConfigError> {
        let file = |key: &'static str, path: &Option<PathBuf>| {
            path.clone().ok_or_else(|| ConfigError::Invalid {
                origin: origin.to_string(),
                key,
                message: "is required when tls.mode = \"files\"".to_string(),
            })
        };
        let (cert_path, key_path) = (
            file("tls.cert_file", &tls.cert_file)?,
            file("tls.key_file", &tls.key_file)?,
        );
        let invalid = |key: &'static str, path: &Path, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message: format!("{}: {message}", path.display()),
        };
        let chain = read_certs(&cert_path)
            .map_err(|e| invalid("tls.cert_file", &cert_path, e.message()))?;
        let leaf = chain.first().ok_or_else(|| {
            invalid(
                "tls.cert_file",
                &cert_path,
                "no certificate found".to_string(),
            )
        })?;
        rustls::server::ParsedCertificate::try_from(leaf).map_err(|e| {
            invalid(
                "tls.cert_file",
                &cert_path,
                format!("not a usable X.509 certificate: {e}"),
            )
        })?;
        let key =
            read_key(&key_path).map_err(|e| invalid("tls.key_file", &key_path, e.message()))?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| invalid("tls.key_file", &key_path, format!("unusable key: {e}")))?;
        match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
            // Unknown: the key type cannot tell its public key; rustls accepts it too.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(invalid(
                    "tls.key_file",
                    &key_path,
                    format!(
                        "is not the key of the certificate in tls.cert_file ({})",
                        cert_path.display()
                    ),
                ));
            }
            Err(e) => return Err(invalid("tls.cert_file", &cert_path, e.to_string())),
        }
        let client_verifier = match &tls.client_ca_file {
            Some(ca_path) => {
                let ca = |message: String| invalid("tls.client_ca_file", ca_path, message);
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca_path).map_err(|e| ca(e.message()))? {
                    roots
                        .add(cert)
                        .map_err(|e| ca(format!("not a usable CA certificate: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| ca(e.to_string()))?;
                Some(verifier)
            }
            None => None,
        };
        Ok(ServerTls {
            identity: ServerIdentity { chain, key },
            client_verifier,
        })
    }

    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.identity.fingerprint()
    }
}

/// The rustls server configuration: TLS 1.3, the protocol's ALPN, and client certificates
/// verified as `tls` says.
pub fn server_crypto(tls: ServerTls) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match tls.client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(Arc::new(LoggingRefusals(verifier))),
        None => builder.with_no_client_auth(),
    };
    let mut crypto = builder.with_single_cert(tls.identity.chain, tls.identity.key)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    Ok(crypto)
}

/// How a client trusts the server.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The server's certificate has this SHA-256 fingerprint (for `self-signed` servers).
    Fingerprint(Fingerprint),
    /// The server's certificate chains to one of these roots.
    Roots(Vec<CertificateDer<'static>>),
}

/// The rustls client configuration: trust as given, and a client certificate if given.
pub fn client_crypto(
    trust: &Trust,
    client: Option<ServerIdentity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder =
        match trust {
            Trust::Fingerprint(fingerprint) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServer {
                    fingerprint: *fingerprint,
                    provider,
                })),
            Trust::Roots(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    roots.add(cert.clone())?;
                }
                builder.with_root_certificates(roots)
            }
        };
    let mut crypto = match client {
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
        None => builder.with_no_client_auth(),
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    Ok(crypto)
}

pub fn quinn_client_config(crypto: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// A server certificate other than the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("the switch's certificate has fingerprint {presented}, not the pinned {pinned}")]
struct NotPinned {
    presented: Fingerprint,
    pinned: Fingerprint,
}

/// Trusts exactly one certificate, by fingerprint, and still checks the handshake signatures.
#[derive(Debug)]
struct PinnedServer {
    fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if presented == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            // Both fingerprints, so that whoever pinned the wrong one sees the right one.
            Err(rustls::Error::Other(rustls::OtherError(Arc::new(
                NotPinned {
                    presented,
                    pinned: self.fingerprint,
                },
            ))))
        }
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

/// The configured CA's client verifier, and a certificate it refuses logged with its
/// fingerprint (rate-limited): only the verifier sees a certificate that does not chain to the
/// CA, since the handshake fails before the connection exists.
#[derive(Debug)]
struct LoggingRefusals(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for LoggingRefusals {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                crate::server::telemetry::certificate_refused(
                    &Fingerprint::of(end_entity),
                    None,
                    &e.to_string(),
                );
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}
