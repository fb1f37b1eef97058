//! Server certificates: from PEM files, or a short-lived self-signed one for development.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The longest validity browsers accept for a certificate pinned with `serverCertificateHashes`.
pub const MAX_PINNED_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why a certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The PEM data holds no certificate, or is malformed.
    #[error("no certificate in the PEM data: {0}")]
    NoCertificate(String),
    /// The PEM data holds no private key, or is malformed.
    #[error("no private key in the PEM data: {0}")]
    NoKey(String),
    /// The development certificate could not be generated.
    #[error("cannot generate the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate and key were refused by TLS (unsupported key type, key not matching, ...).
    #[error("the certificate or key is unusable: {0}")]
    Tls(#[from] rustls::Error),
}

/// The SHA-256 hash of a DER certificate, as browsers' `serverCertificateHashes` expect it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertHash(pub [u8; 32]);

impl CertHash {
    /// The hash of `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.trim().as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Self(out))
    }

    /// Lower-case hex, 64 characters.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Standard base64 (with padding).
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// A JavaScript array literal of the bytes, e.g. `[12,255,...]`, ready for
    /// `serverCertificateHashes: [{algorithm: "sha-256", value: new Uint8Array(<this>)}]`.
    pub fn js_array(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(u8::to_string).collect();
        format!("[{}]", parts.join(","))
    }
}

impl fmt::Debug for CertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertHash({})", self.hex())
    }
}

impl fmt::Display for CertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// A certificate chain and its private key.
pub struct ServerCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    self_signed: bool,
}

impl Clone for ServerCertificate {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key(), self_signed: self.self_signed }
    }
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("chain_len", &self.chain.len())
            .field("leaf_sha256", &self.leaf_hash())
            .field("self_signed", &self.self_signed)
            .finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// A chain (leaf first) and its key.
    ///
    /// # Errors
    /// [`CertError::NoCertificate`] for an empty chain.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, CertError> {
        if chain.is_empty() {
            return Err(CertError::NoCertificate("empty chain".into()));
        }
        Ok(Self { chain, key, self_signed: false })
    }

    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`CertError::Read`] when a file cannot be read; [`CertError::NoCertificate`] / [`CertError::NoKey`] when
    /// its content is not what is expected.
    pub fn from_pem_files(cert_chain: &Path, key: &Path) -> Result<Self, CertError> {
        let read = |p: &Path| std::fs::read(p).map_err(|source| CertError::Read { path: p.to_owned(), source });
        Self::from_pem(&read(cert_chain)?, &read(key)?)
    }

    /// Parses a PEM certificate chain and a PEM private key.
    ///
    /// # Errors
    /// As [`from_pem_files`](Self::from_pem_files).
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, CertError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::NoCertificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate("no CERTIFICATE section".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| CertError::NoKey(e.to_string()))?;
        Self::new(chain, key)
    }

    /// Generates a self-signed ECDSA P-256 certificate for `localhost`, `127.0.0.1` and `::1`, valid from a
    /// minute ago for `validity` (capped at [`MAX_PINNED_VALIDITY`] minus that minute, as browsers require
    /// for `serverCertificateHashes`). For development and tests only: clients must pin its
    /// [`leaf_hash`](Self::leaf_hash).
    ///
    /// # Errors
    /// [`CertError::Generate`] if key or certificate generation fails.
    pub fn self_signed_dev(validity: Duration) -> Result<Self, CertError> {
        Self::self_signed_for(&["localhost".into(), "127.0.0.1".into(), "::1".into()], validity)
    }

    /// Like [`self_signed_dev`](Self::self_signed_dev) for the given DNS names and IP addresses.
    ///
    /// # Errors
    /// [`CertError::Generate`] if a name is invalid or generation fails.
    pub fn self_signed_for(names: &[String], validity: Duration) -> Result<Self, CertError> {
        let params = dev_params(names, validity)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| CertError::NoKey(format!("generated key: {e}")))?;
        Ok(Self { chain: vec![cert.der().clone()], key: key_der, self_signed: true })
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `new` and the generators guarantee a non-empty chain.
        &self.chain[0]
    }

    /// The SHA-256 hash of the leaf certificate (for `serverCertificateHashes` and [`Trust::CertHashes`]).
    ///
    /// [`Trust::CertHashes`]: crate::client::Trust::CertHashes
    pub fn leaf_hash(&self) -> CertHash {
        CertHash::of(self.leaf())
    }

    /// The leaf certificate in PEM form.
    pub fn leaf_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.leaf());
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    /// Whether this is a generated development certificate.
    pub fn is_self_signed_dev(&self) -> bool {
        self.self_signed
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// Certificate parameters for a development certificate: valid from a minute ago, for at most
/// [`MAX_PINNED_VALIDITY`] in total.
fn dev_params(names: &[String], validity: Duration) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let backdate = Duration::from_secs(60);
    let validity = validity.min(MAX_PINNED_VALIDITY - backdate);
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - backdate;
    params.not_after = now + validity;
    params.distinguished_name.push(rcgen::DnType::CommonName, "herald development certificate");
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_validity_is_capped_at_fourteen_days() {
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let p = dev_params(&names, Duration::from_secs(365 * 24 * 3600)).expect("params");
        assert!(p.not_after - p.not_before <= time::Duration::days(14));
        let p = dev_params(&names, Duration::from_secs(3600)).expect("params");
        assert_eq!(p.not_after - p.not_before, time::Duration::seconds(3660));
        assert!(
            p.subject_alt_names.contains(&rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip"))),
            "IP names become IP SANs: {:?}",
            p.subject_alt_names
        );
    }

    #[test]
    fn dev_certificate_is_short_lived_p256_and_round_trips_through_pem() {
        let cert = ServerCertificate::self_signed_dev(Duration::from_secs(30 * 24 * 3600)).expect("generate");
        assert!(cert.is_self_signed_dev());
        let hash = cert.leaf_hash();
        assert_eq!(hash.hex().len(), 64);
        assert_eq!(CertHash::from_hex(&hash.hex().to_uppercase()), Some(hash));
        assert_eq!(CertHash::from_hex("abc"), None);
        assert_eq!(CertHash::from_hex(&"zz".repeat(32)), None);
        assert_eq!(hash.base64().len(), 44);
        assert!(hash.js_array().starts_with('[') && hash.js_array().matches(',').count() == 31);
        let parsed = cert.leaf_pem();
        let again = ServerCertificate::from_pem(parsed.as_bytes(), b"").expect_err("no key");
        assert!(matches!(again, CertError::NoKey(_)));
        assert_eq!(CertificateDer::from_pem_slice(parsed.as_bytes()).expect("pem").as_ref(), cert.leaf().as_ref());
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(cert.chain().to_vec(), cert.key());
        assert!(config.is_ok(), "rustls accepts the generated certificate and key");
    }

    #[test]
    fn garbage_pem_is_refused() {
        assert!(matches!(ServerCertificate::from_pem(b"nope", b"nope"), Err(CertError::NoCertificate(_))));
        let err = ServerCertificate::from_pem_files(Path::new("/nonexistent/cert.pem"), Path::new("/nonexistent/k"));
        assert!(matches!(err, Err(CertError::Read { .. })));
    }
}
