//! TLS for QUIC: the server's certificate, client authentication, and who a client is.
//!
//! Two modes. `self-signed` (the default) generates a certificate at first start, keeps it in the
//! data directory and logs its SHA-256 fingerprint, which clients pin. `files` loads certificate
//! and key from files and requires every client to present a certificate signed by the
//! configured CA (mutual TLS); the certificate's fingerprint says which participant it is.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ledger::ParticipantId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{self, TlsMode};

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

/// Who a connection acts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub participant: ParticipantId,
    pub admin: bool,
}

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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

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
        let cert_path = dir.join("server-cert.der");
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
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
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

/// The rustls server configuration for `config`.
pub fn server_crypto(
    config: &config::Config,
    identity: ServerIdentity,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match (config.tls.mode, &config.tls.client_ca_file) {
        (TlsMode::Files, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut crypto = builder.with_single_cert(identity.chain, identity.key)?;
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
