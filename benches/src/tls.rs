//! TLS for the typed benchmark's `tls://` runs (`benches/tls.sh`).
//!
//! Both stacks use the same rustls release with the same crypto provider
//! (*ring*), TLS 1.3 only, and one cipher suite forced on both sides,
//! [`SUITE`]: ringwire through its own record layer, tokio through
//! tokio-rustls. The certificates come from a directory (`ca.pem`,
//! `server.pem`, `server.key`, for the name [`SERVER_NAME`]); the script
//! makes them with `openssl`.

use std::path::Path;
use std::sync::Arc;

use ringwire_transports::{TlsCipherSuite, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The one cipher suite both stacks use.
pub const SUITE: &str = "TLS13_AES_128_GCM_SHA256";

/// The name the server's certificate carries and clients check.
pub const SERVER_NAME: &str = "localhost";

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, String> {
    let p = dir.join(file);
    std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
}

/// ringwire's listener settings: the server certificate, [`SUITE`] only.
pub fn ringwire_server(dir: &Path) -> Result<TlsConfig, String> {
    Ok(TlsConfig::new()
        .identity_pem(read(dir, "server.pem")?, read(dir, "server.key")?)
        .cipher_suites(&[TlsCipherSuite::Aes128GcmSha256]))
}

/// ringwire's client settings: the test CA, [`SERVER_NAME`], [`SUITE`] only.
pub fn ringwire_client(dir: &Path) -> Result<TlsConfig, String> {
    Ok(TlsConfig::new()
        .ca_pem(read(dir, "ca.pem")?)
        .server_name(SERVER_NAME)
        .cipher_suites(&[TlsCipherSuite::Aes128GcmSha256]))
}

/// The ring provider with [`SUITE`] only.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(p)
}

/// tokio-rustls's server configuration, equivalent to [`ringwire_server`].
pub fn rustls_server(dir: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_slice_iter(&read(dir, "server.pem")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server.pem: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&read(dir, "server.key")?)
        .map_err(|e| format!("server.key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// tokio-rustls's client configuration, equivalent to [`ringwire_client`].
pub fn rustls_client(dir: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(dir, "ca.pem")?) {
        roots
            .add(cert.map_err(|e| format!("ca.pem: {e}"))?)
            .map_err(|e| format!("ca.pem: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// [`SERVER_NAME`] for tokio-rustls's connector.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}
