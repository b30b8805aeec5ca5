//! rustls configurations from a [`TlsConfig`] and the endpoint's options,
//! and rustls's errors sorted into [`TlsFailure`]s.
//!
//! Certificates, keys and trust roots are read when a listener starts (its
//! configuration is built once and shared by its connections) and on each
//! `connect`. The system's trust store is loaded once per process.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig, Side};

use crate::config::{TlsCipherSuite, TlsConfig};
use crate::endpoint::{Endpoint, Host};
use crate::error::{Error, TlsFailure};

fn settings_error(detail: impl Into<Arc<str>>) -> Error {
    Error::tls(TlsFailure::Settings, detail)
}

/// The ring provider, restricted to `suites` (in that order) when any are
/// named.
fn provider(suites: &[TlsCipherSuite]) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        use rustls::crypto::ring::cipher_suite as cs;
        p.cipher_suites = suites
            .iter()
            .map(|s| match s {
                TlsCipherSuite::Aes128GcmSha256 => cs::TLS13_AES_128_GCM_SHA256,
                TlsCipherSuite::Aes256GcmSha384 => cs::TLS13_AES_256_GCM_SHA384,
                TlsCipherSuite::Chacha20Poly1305Sha256 => cs::TLS13_CHACHA20_POLY1305_SHA256,
            })
            .collect();
    }
    Arc::new(p)
}

/// PEM bytes from a file option or from the configuration.
enum Pem<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

fn pem<'a>(file: Option<&'a Path>, bytes: Option<&'a Arc<[u8]>>) -> Option<Pem<'a>> {
    file.map(Pem::File).or(bytes.map(|b| Pem::Bytes(b)))
}

impl Pem<'_> {
    fn what(&self, kind: &str) -> String {
        match self {
            Pem::File(p) => format!("{kind} file {}", p.display()),
            Pem::Bytes(_) => format!("{kind} PEM given in TlsConfig"),
        }
    }

    fn certs(&self, kind: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
        let certs: Result<Vec<_>, _> = match self {
            Pem::File(p) => CertificateDer::pem_file_iter(p)
                .map_err(|e| settings_error(format!("{}: {e}", self.what(kind))))?
                .collect(),
            Pem::Bytes(b) => CertificateDer::pem_slice_iter(b).collect(),
        };
        let certs = certs.map_err(|e| settings_error(format!("{}: {e}", self.what(kind))))?;
        if certs.is_empty() {
            return Err(settings_error(format!(
                "{}: no certificate in it",
                self.what(kind)
            )));
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, Error> {
        match self {
            Pem::File(p) => PrivateKeyDer::from_pem_file(p),
            Pem::Bytes(b) => PrivateKeyDer::from_pem_slice(b),
        }
        .map_err(|e| settings_error(format!("{}: {e}", self.what("private key"))))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, Error> {
        let mut roots = RootCertStore::empty();
        for cert in self.certs("CA")? {
            roots
                .add(cert)
                .map_err(|e| settings_error(format!("{}: {e}", self.what("CA"))))?;
        }
        Ok(Arc::new(roots))
    }
}

/// This side's certificate chain and key, if configured (both or neither).
fn identity(
    endpoint: &Endpoint,
    tls: &TlsConfig,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, Error> {
    let opts = endpoint.options();
    let cert = pem(opts.cert(), tls.cert_chain_pem.as_ref());
    let key = pem(opts.key(), tls.key_pem.as_ref());
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.certs("certificate")?, k.key()?))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(settings_error(
            "a certificate without its private key (key=, or TlsConfig::identity_pem)",
        )),
        (None, Some(_)) => Err(settings_error(
            "a private key without its certificate (cert=, or TlsConfig::identity_pem)",
        )),
    }
}

/// The listener's configuration: its certificate, and client certificates
/// required when trust roots are given.
pub(crate) fn server_config(
    endpoint: &Endpoint,
    tls: &TlsConfig,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider(&tls.suites);
    let Some((chain, key)) = identity(endpoint, tls)? else {
        return Err(settings_error(
            "a tls:// listener needs a certificate and its key (cert= and key=, or \
             TlsConfig::identity_pem)",
        ));
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| settings_error(e.to_string()))?;
    let builder = match pem(endpoint.options().ca(), tls.ca_pem.as_ref()) {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots()?, provider)
                .build()
                .map_err(|e| settings_error(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| settings_error(format!("certificate and key: {e}")))?;
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// A client's configuration: trust roots (given, or the system's) and its
/// certificate for mutual TLS if it has one.
pub(crate) fn client_config(
    endpoint: &Endpoint,
    tls: &TlsConfig,
) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider(&tls.suites);
    let roots = match pem(endpoint.options().ca(), tls.ca_pem.as_ref()) {
        Some(ca) => ca.roots()?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| settings_error(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity(endpoint, tls)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| settings_error(format!("client certificate and key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.enable_secret_extraction = true;
    // Each connect builds its own configuration: a ticket cache would only
    // ever hold tickets nobody uses.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The system's trust store, loaded once.
fn system_roots() -> Result<Arc<RootCertStore>, Error> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "it is empty".to_string(), |e| e.to_string());
                return Err(format!(
                    "no trust roots: give ca= (or TlsConfig::ca_pem); the system's store gave none \
                     ({why})"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(settings_error)
}

/// The name the client sends and checks: `servername=`, the configured one,
/// or the endpoint's host.
pub(crate) fn server_name(
    endpoint: &Endpoint,
    tls: &TlsConfig,
) -> Result<ServerName<'static>, Error> {
    if let Some(name) = endpoint
        .options()
        .servername()
        .or(tls.server_name.as_deref())
    {
        return ServerName::try_from(name.to_string())
            .map_err(|e| settings_error(format!("server name {name:?}: {e}")));
    }
    match endpoint.host() {
        Some(Host::Ip(ip)) => Ok(ServerName::IpAddress((*ip).into())),
        Some(Host::Name(name)) => ServerName::try_from(name.clone())
            .map_err(|e| settings_error(format!("server name {name:?}: {e}"))),
        None => Err(settings_error("a tls:// endpoint needs a host")),
    }
}

/// Sorts a handshake failure reported by rustls on `side`.
pub(crate) fn handshake_error(e: &rustls::Error, side: Side) -> Error {
    let peer = match side {
        Side::Client => "server",
        Side::Server => "client",
    };
    let (kind, detail) = match e {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => (
            TlsFailure::WrongName,
            format!("the {peer}'s certificate does not name the server name asked for: {e}"),
        ),
        rustls::Error::InvalidCertificate(_) => (
            TlsFailure::UntrustedCertificate,
            format!("the {peer}'s certificate is not trusted: {e}"),
        ),
        rustls::Error::NoCertificatesPresented => (
            TlsFailure::NoClientCertificate,
            "the client presented no certificate".to_string(),
        ),
        rustls::Error::AlertReceived(alert) => (
            TlsFailure::PeerAlert,
            format!("the {peer} ended the handshake with the alert {alert:?}"),
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
            TlsFailure::Handshake,
            format!("the {peer} does not speak TLS 1.3 as expected: {e}"),
        ),
        other => (TlsFailure::Handshake, other.to_string()),
    };
    Error::tls(kind, detail)
}
