//! JWT authentication: HS256, RS256, ES256 and EdDSA (Ed25519) bearer tokens.
//!
//! Every configured key verifies exactly one algorithm, and verification is pinned to that algorithm: the token
//! header only *selects* among the configured keys, it never decides how a key is interpreted. A token whose `alg`
//! no configured key has is rejected with [`AuthError::BadSignature`]; `alg: none` and unknown algorithms are
//! [`AuthError::Malformed`].
//!
//! Claims understood: `sub` (required, a valid [`UserId`]), `exp` (required unless
//! [`JwtAuth::require_exp`]`(false)`), `nbf`, `iss`, `aud` (a string or an array of strings) and `device` (optional,
//! a valid [`DeviceId`]).

use std::collections::HashSet;
use std::fmt;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Auth, AuthError, Credentials};
use crate::id::{DeviceId, UserId};
use crate::model::Principal;

/// The shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the hash size).
const MIN_HS256_SECRET: usize = 32;
/// The smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Longer tokens are refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The default clock-skew allowance for `exp` and `nbf`.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Makes sure jsonwebtoken has a crypto provider: the aws-lc-rs one, unless the application installed another.
///
/// jsonwebtoken picks its provider from its crate features and panics at first use when none or both are
/// enabled; installing one explicitly keeps us working if feature unification ever enables both.
fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed, which is fine.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}

/// A verification key for exactly one algorithm.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// HMAC-SHA256 shared secret (at least 32 bytes).
    Hs256(Vec<u8>),
    /// RSASSA-PKCS1-v1_5 with SHA-256: an RSA public key (at least 2048 bits) in PEM (`PUBLIC KEY` or
    /// `RSA PUBLIC KEY`).
    Rs256Pem(Vec<u8>),
    /// ECDSA P-256 with SHA-256: a P-256 public key in PEM (`PUBLIC KEY`).
    Es256Pem(Vec<u8>),
    /// EdDSA: an Ed25519 public key in PEM (`PUBLIC KEY`).
    EdDsaPem(Vec<u8>),
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (secrets in particular).
        let (name, len) = match self {
            Self::Hs256(k) => ("Hs256", k.len()),
            Self::Rs256Pem(k) => ("Rs256Pem", k.len()),
            Self::Es256Pem(k) => ("Es256Pem", k.len()),
            Self::EdDsaPem(k) => ("EdDsaPem", k.len()),
        };
        write!(f, "{name}(<{len} bytes>)")
    }
}

impl JwtKey {
    /// The algorithm this key verifies.
    fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hs256(_) => Algorithm::HS256,
            Self::Rs256Pem(_) => Algorithm::RS256,
            Self::Es256Pem(_) => Algorithm::ES256,
            Self::EdDsaPem(_) => Algorithm::EdDSA,
        }
    }

    /// Parses and checks the key material.
    fn decoding_key(&self) -> Result<DecodingKey, JwtConfigError> {
        let bad = |what: &str, e: jsonwebtoken::errors::Error| JwtConfigError(format!("{what}: {e}"));
        match self {
            Self::Hs256(secret) => {
                check_hs256_secret(secret)?;
                Ok(DecodingKey::from_secret(secret))
            }
            Self::Rs256Pem(pem) => {
                let key =
                    DecodingKey::from_rsa_pem(pem).map_err(|e| bad("RS256 key is not an RSA public key PEM", e))?;
                let der = key.try_get_as_bytes().map_err(|e| bad("RS256 key", e))?;
                let (n, _e) =
                    (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.key_utils.rsa_pub_components_from_public_key)(der)
                        .map_err(|e| bad("RS256 key is not an RSA public key", e))?;
                let bits = rsa_modulus_bits(&n);
                if bits < MIN_RSA_BITS {
                    return Err(JwtConfigError(format!(
                        "RS256 key has a {bits}-bit modulus, at least {MIN_RSA_BITS} bits are required"
                    )));
                }
                Ok(key)
            }
            Self::Es256Pem(pem) => {
                let key = DecodingKey::from_ec_pem(pem).map_err(|e| bad("ES256 key is not an EC public key PEM", e))?;
                let point = key.try_get_as_bytes().map_err(|e| bad("ES256 key", e))?;
                // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
                if point.len() != 65 || point.first() != Some(&0x04) {
                    return Err(JwtConfigError("ES256 key is not an uncompressed P-256 public key".into()));
                }
                Ok(key)
            }
            Self::EdDsaPem(pem) => {
                let key =
                    DecodingKey::from_ed_pem(pem).map_err(|e| bad("EdDSA key is not an Ed25519 public key PEM", e))?;
                let raw = key.try_get_as_bytes().map_err(|e| bad("EdDSA key", e))?;
                if raw.len() != 32 {
                    return Err(JwtConfigError("EdDSA key is not an Ed25519 public key".into()));
                }
                Ok(key)
            }
        }
    }
}

/// The bit length of a big-endian unsigned integer (leading zero bytes ignored).
fn rsa_modulus_bits(n: &[u8]) -> usize {
    let mut iter = n.iter().skip_while(|b| **b == 0);
    match iter.next() {
        None => 0,
        Some(first) => (8 - first.leading_zeros() as usize) + 8 * iter.count(),
    }
}

fn check_hs256_secret(secret: &[u8]) -> Result<(), JwtConfigError> {
    if secret.len() < MIN_HS256_SECRET {
        return Err(JwtConfigError(format!(
            "HS256 secret is {} bytes long, at least {MIN_HS256_SECRET} are required",
            secret.len()
        )));
    }
    Ok(())
}

/// Invalid JWT configuration (a short secret, an unparsable or unsuitable key), or a token that cannot be minted.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT configuration: {0}")]
pub struct JwtConfigError(pub String);

/// One configured verification key.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Authenticates JWT bearer tokens ([`Credentials::Bearer`]) against one or more keys.
///
/// ```
/// # use herald_core::auth::{JwtAuth, JwtKey};
/// # fn main() -> Result<(), herald_core::auth::JwtConfigError> {
/// let auth = JwtAuth::new(JwtKey::Hs256(b"0123456789abcdef0123456789abcdef".to_vec()))?
///     .issuer("https://id.example.com")
///     .audience("herald")
///     .leeway(std::time::Duration::from_secs(10));
/// # let _ = auth; Ok(()) }
/// ```
///
/// Key selection: when the token header has a `kid` and some key was added under that id
/// ([`JwtAuth::new_named`], [`JwtAuth::with_named_key`]), only the keys with that id are tried; when no key has
/// that id, or the header has no `kid`, the keys without an id (respectively all keys) are tried. In every case
/// only keys whose algorithm equals the header's `alg` are tried, each verifying with its own algorithm.
///
/// Validation: the signature, then `exp` (required by default) and `nbf` with the leeway, then `iss` and `aud`
/// when configured (and then required). A token that carries an `aud` claim is rejected when no audience is
/// configured (RFC 7519 §4.1.3).
#[derive(Clone)]
pub struct JwtAuth {
    keys: Vec<VerifyKey>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    require_exp: bool,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| match &k.kid {
                Some(kid) => format!("{:?}({kid:?})", k.alg),
                None => format!("{:?}", k.alg),
            })
            .collect();
        f.debug_struct("JwtAuth")
            .field("keys", &keys)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("leeway", &self.leeway)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

impl JwtAuth {
    /// A verifier for `key` (with no key id). Fails when the key is unusable (see [`JwtKey`]).
    pub fn new(key: JwtKey) -> Result<Self, JwtConfigError> {
        Self::build(None, &key)
    }

    /// A verifier for `key`, selected by tokens whose header `kid` is `kid`.
    pub fn new_named(kid: impl Into<String>, key: JwtKey) -> Result<Self, JwtConfigError> {
        Self::build(Some(kid.into()), &key)
    }

    fn build(kid: Option<String>, key: &JwtKey) -> Result<Self, JwtConfigError> {
        ensure_crypto_provider();
        let mut auth = Self {
            keys: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            require_exp: true,
        };
        auth.add(kid, key)?;
        Ok(auth)
    }

    fn add(&mut self, kid: Option<String>, key: &JwtKey) -> Result<(), JwtConfigError> {
        self.keys.push(VerifyKey { kid, alg: key.algorithm(), key: key.decoding_key()? });
        Ok(())
    }

    /// Adds another key (with no key id).
    pub fn with_key(mut self, key: JwtKey) -> Result<Self, JwtConfigError> {
        self.add(None, &key)?;
        Ok(self)
    }

    /// Adds another key, selected by tokens whose header `kid` is `kid`.
    pub fn with_named_key(mut self, kid: impl Into<String>, key: JwtKey) -> Result<Self, JwtConfigError> {
        self.add(Some(kid.into()), &key)?;
        Ok(self)
    }

    /// Requires the `iss` claim to equal `issuer`. Call again to accept several issuers.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Requires the `aud` claim (a string or an array) to contain `audience`. Call again to accept several.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// The clock-skew allowance for `exp` and `nbf`, in whole seconds (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Whether tokens without `exp` are refused (default `true`). Without `exp` the principal never expires.
    pub fn require_exp(mut self, require: bool) -> Self {
        self.require_exp = require;
        self
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        let mut required = HashSet::new();
        if self.require_exp {
            required.insert("exp".to_owned());
        }
        if !self.issuers.is_empty() {
            v.set_issuer(&self.issuers);
            required.insert("iss".to_owned());
        }
        if !self.audiences.is_empty() {
            v.set_audience(&self.audiences);
            required.insert("aud".to_owned());
        }
        v.required_spec_claims = required;
        v
    }

    /// Verifies `token` and returns its principal.
    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed(format!("token is longer than {MAX_TOKEN_LEN} bytes")));
        }
        if token.split('.').count() != 3 {
            return Err(AuthError::Malformed("expected three dot-separated parts".into()));
        }
        // Structure only (no trust): base64url and JSON of the header and the payload. An `alg` that is not a
        // known algorithm (including `none`) fails here.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(token)
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        let header = unverified.header;
        if header.crit.is_some() {
            return Err(AuthError::Malformed("unsupported critical header parameters".into()));
        }

        let named: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => {
                let named: Vec<&VerifyKey> = self.keys.iter().filter(|k| k.kid.as_ref() == Some(kid)).collect();
                if named.is_empty() { self.keys.iter().filter(|k| k.kid.is_none()).collect() } else { named }
            }
            None => self.keys.iter().collect(),
        };
        let mut result = Err(AuthError::BadSignature);
        for key in named.into_iter().filter(|k| k.alg == header.alg) {
            // Pinned: the validation allows only this key's algorithm.
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &self.validation(key.alg)) {
                Ok(data) => return principal_from_claims(&data.claims, self.leeway),
                Err(e) if is_signature_failure(e.kind()) => {
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        tracing::warn!(alg = ?key.alg, kid = ?key.kid, error = %e, "JWT key could not verify");
                    }
                    result = Err(AuthError::BadSignature);
                }
                Err(e) => return Err(map_error(&e)),
            }
        }
        result
    }
}

/// Errors meaning "this key did not verify this token": another key may still.
fn is_signature_failure(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Provider(_)
    )
}

fn map_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) => AuthError::InvalidClaim(format!("{c} is missing")),
        ErrorKind::InvalidClaimFormat(c) => AuthError::InvalidClaim(format!("{c} has the wrong type")),
        ErrorKind::InvalidIssuer => AuthError::InvalidClaim("iss is not accepted".into()),
        ErrorKind::InvalidAudience => AuthError::InvalidClaim("aud is not accepted".into()),
        ErrorKind::InvalidSubject => AuthError::InvalidClaim("sub is not accepted".into()),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::Malformed(e.to_string()),
        _ => AuthError::BadSignature,
    }
}

/// Builds the principal from verified claims.
/// Builds the principal. Its `expires_at` is `exp` plus the leeway: the token is accepted until then, so the
/// session must not be closed before.
fn principal_from_claims(claims: &Map<String, Value>, leeway: Duration) -> Result<Principal, AuthError> {
    let user = match claims.get("sub") {
        Some(Value::String(s)) => UserId::new(s).map_err(|e| AuthError::InvalidClaim(format!("sub: {e}")))?,
        Some(_) => return Err(AuthError::InvalidClaim("sub must be a string".into())),
        None => return Err(AuthError::InvalidClaim("sub is missing".into())),
    };
    let device = match claims.get("device") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(DeviceId::new(s).map_err(|e| AuthError::InvalidClaim(format!("device: {e}")))?),
        Some(_) => return Err(AuthError::InvalidClaim("device must be a string".into())),
    };
    let expires_at = match claims.get("exp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let secs = match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => i,
                (None, Some(f)) if f.is_finite() && f >= 0.0 => f.round() as i64,
                (None, _) => i64::MAX,
            };
            let leeway_ms = i64::try_from(leeway.as_millis()).unwrap_or(i64::MAX);
            Some(secs.saturating_mul(1000).saturating_add(leeway_ms))
        }
        Some(_) => return Err(AuthError::InvalidClaim("exp has the wrong type".into())),
    };
    Ok(Principal { user, device, expires_at })
}

#[async_trait]
impl Auth for JwtAuth {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        match credentials {
            Credentials::Bearer(token) => self.verify(token),
        }
    }
}

/// Claims for [`mint_hs256`]: times are seconds since the Unix epoch; `None` fields are left out of the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The user id.
    pub sub: String,
    /// Expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Signs `claims` as an HS256 JWT (for development and tests). The claims are not checked (a token with an invalid
/// `sub` can be minted); the secret must be at least 32 bytes.
pub fn mint_hs256(secret: &[u8], claims: &TokenClaims) -> Result<String, JwtConfigError> {
    check_hs256_secret(secret)?;
    ensure_crypto_provider();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .map_err(|e| JwtConfigError(format!("cannot sign the token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"an-hs256-test-secret-of-32-bytes+";
    const OTHER_SECRET: &[u8] = b"another-hs256-secret-of-32-bytes!";
    const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/keys/rsa_public.pem");
    const RSA2_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rsa2_private.pem");
    const RSA1024_PUBLIC: &[u8] = include_bytes!("../../tests/keys/rsa1024_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ec_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ec_public.pem");
    const EC384_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ec384_public.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ed_private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ed_public.pem");

    fn now() -> i64 {
        crate::model::now_millis() / 1000
    }

    fn claims(sub: &str) -> TokenClaims {
        TokenClaims { sub: sub.into(), exp: Some(now() + 3600), ..TokenClaims::default() }
    }

    fn hs_auth() -> JwtAuth {
        JwtAuth::new(JwtKey::Hs256(SECRET.to_vec())).expect("HS256 key")
    }

    fn mint(claims: &TokenClaims) -> String {
        mint_hs256(SECRET, claims).expect("mint")
    }

    /// Signs `claims` (any JSON) with `alg`, `key` and an optional `kid`.
    fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &impl Serialize) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).expect("sign")
    }

    fn rsa_signer() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("RSA private key")
    }

    fn ec_signer() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_PRIVATE).expect("EC private key")
    }

    fn ed_signer() -> EncodingKey {
        EncodingKey::from_ed_pem(ED_PRIVATE).expect("Ed25519 private key")
    }

    /// base64url without padding, for hand-crafted tokens.
    fn b64url(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    async fn check(auth: &JwtAuth, token: &str) -> Result<Principal, AuthError> {
        auth.authenticate(&Credentials::Bearer(token.to_owned())).await
    }

    #[test]
    fn b64url_matches_known_vectors() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"foob"), "Zm9vYg");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[tokio::test]
    async fn hs256_token_is_accepted_with_user_device_and_expiry() {
        let exp = now() + 600;
        let token = mint(&TokenClaims { exp: Some(exp), device: Some("phone-1".into()), ..claims("alice") });
        let p = check(&hs_auth(), &token).await.expect("valid token");
        assert_eq!(p.user.as_str(), "alice");
        assert_eq!(p.device.as_ref().map(DeviceId::as_str), Some("phone-1"));
        assert_eq!(p.expires_at, Some(exp * 1000 + 30_000), "exp plus the default leeway");

        let p = check(&hs_auth(), &mint(&claims("bob"))).await.expect("valid token");
        assert_eq!(p.user.as_str(), "bob");
        assert_eq!(p.device, None);
    }

    #[tokio::test]
    async fn rs256_token_is_accepted() {
        let auth = JwtAuth::new(JwtKey::Rs256Pem(RSA_PUBLIC.to_vec())).expect("RS256 key");
        let c = TokenClaims { device: Some("d1".into()), ..claims("carol") };
        let p = check(&auth, &sign(Algorithm::RS256, &rsa_signer(), None, &c)).await.expect("valid token");
        assert_eq!((p.user.as_str(), p.device.as_ref().map(DeviceId::as_str)), ("carol", Some("d1")));
        assert_eq!(p.expires_at, c.exp.map(|e| e * 1000 + 30_000));
    }

    #[tokio::test]
    async fn es256_token_is_accepted() {
        let auth = JwtAuth::new(JwtKey::Es256Pem(EC_PUBLIC.to_vec())).expect("ES256 key");
        let c = claims("dave");
        let p = check(&auth, &sign(Algorithm::ES256, &ec_signer(), None, &c)).await.expect("valid token");
        assert_eq!(p.user.as_str(), "dave");
        assert_eq!(p.expires_at, c.exp.map(|e| e * 1000 + 30_000));
    }

    #[tokio::test]
    async fn eddsa_token_is_accepted() {
        let auth = JwtAuth::new(JwtKey::EdDsaPem(ED_PUBLIC.to_vec())).expect("EdDSA key");
        let c = claims("erin");
        let p = check(&auth, &sign(Algorithm::EdDSA, &ed_signer(), None, &c)).await.expect("valid token");
        assert_eq!(p.user.as_str(), "erin");
        assert_eq!(p.expires_at, c.exp.map(|e| e * 1000 + 30_000));
    }

    #[tokio::test]
    async fn expiry_respects_the_leeway() {
        let auth = hs_auth();
        let past = |secs| mint(&TokenClaims { exp: Some(now() - secs), ..claims("alice") });
        assert_eq!(check(&auth, &past(120)).await, Err(AuthError::Expired));
        // Within the default 30 s leeway.
        assert!(check(&auth, &past(10)).await.is_ok());
        let strict = hs_auth().leeway(Duration::ZERO);
        assert_eq!(check(&strict, &past(10)).await, Err(AuthError::Expired));
        let lenient = hs_auth().leeway(Duration::from_secs(300));
        assert!(check(&lenient, &past(120)).await.is_ok());
    }

    #[tokio::test]
    async fn nbf_in_the_future_is_not_yet_valid() {
        let auth = hs_auth();
        let token = mint(&TokenClaims { nbf: Some(now() + 120), ..claims("alice") });
        assert_eq!(check(&auth, &token).await, Err(AuthError::NotYetValid));
        // Within the leeway, or in the past: fine.
        let token = mint(&TokenClaims { nbf: Some(now() + 5), ..claims("alice") });
        assert!(check(&auth, &token).await.is_ok());
        let token = mint(&TokenClaims { nbf: Some(now() - 60), ..claims("alice") });
        assert!(check(&auth, &token).await.is_ok());
    }

    #[tokio::test]
    async fn issuer_is_checked_and_required_when_configured() {
        let auth = hs_auth().issuer("https://id.example.com");
        let with_iss = |iss: &str| mint(&TokenClaims { iss: Some(iss.into()), ..claims("alice") });
        assert!(check(&auth, &with_iss("https://id.example.com")).await.is_ok());
        assert!(matches!(check(&auth, &with_iss("https://evil.example.com")).await, Err(AuthError::InvalidClaim(_))));
        assert!(matches!(check(&auth, &mint(&claims("alice"))).await, Err(AuthError::InvalidClaim(_))));
        let two = hs_auth().issuer("a").issuer("b");
        assert!(check(&two, &with_iss("b")).await.is_ok());
    }

    #[tokio::test]
    async fn audience_is_checked_as_string_or_array() {
        let auth = hs_auth().audience("herald");
        let with_aud = |aud: &str| mint(&TokenClaims { aud: Some(aud.into()), ..claims("alice") });
        assert!(check(&auth, &with_aud("herald")).await.is_ok());
        assert!(matches!(check(&auth, &with_aud("other")).await, Err(AuthError::InvalidClaim(_))));
        assert!(matches!(check(&auth, &mint(&claims("alice"))).await, Err(AuthError::InvalidClaim(_))));

        let exp = now() + 600;
        let array = |aud: Value| {
            let c = serde_json::json!({ "sub": "alice", "exp": exp, "aud": aud });
            sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), None, &c)
        };
        assert!(check(&auth, &array(serde_json::json!(["x", "herald"]))).await.is_ok());
        assert!(matches!(check(&auth, &array(serde_json::json!(["x", "y"]))).await, Err(AuthError::InvalidClaim(_))));

        // A token addressed to some audience is refused by a verifier that has none configured.
        assert!(matches!(check(&hs_auth(), &with_aud("herald")).await, Err(AuthError::InvalidClaim(_))));
    }

    #[tokio::test]
    async fn tampered_payload_fails_the_signature() {
        let auth = hs_auth();
        let token = mint(&claims("alice"));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let forged = serde_json::to_vec(&claims("mallory")).expect("json");
        let tampered = format!("{}.{}.{}", parts[0], b64url(&forged), parts[2]);
        assert_eq!(check(&auth, &tampered).await, Err(AuthError::BadSignature));

        // Same for an asymmetric key.
        let auth = JwtAuth::new(JwtKey::Rs256Pem(RSA_PUBLIC.to_vec())).expect("RS256 key");
        let token = sign(Algorithm::RS256, &rsa_signer(), None, &claims("alice"));
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64url(&forged), parts[2]);
        assert_eq!(check(&auth, &tampered).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn wrong_key_fails_the_signature() {
        let token = mint_hs256(OTHER_SECRET, &claims("alice")).expect("mint");
        assert_eq!(check(&hs_auth(), &token).await, Err(AuthError::BadSignature));

        let auth = JwtAuth::new(JwtKey::Rs256Pem(RSA_PUBLIC.to_vec())).expect("RS256 key");
        let other = EncodingKey::from_rsa_pem(RSA2_PRIVATE).expect("RSA key");
        let token = sign(Algorithm::RS256, &other, None, &claims("alice"));
        assert_eq!(check(&auth, &token).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn alg_none_is_rejected() {
        let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64url(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 600).as_bytes());
        let unsigned = format!("{header}.{payload}.");
        for auth in [hs_auth(), JwtAuth::new(JwtKey::Rs256Pem(RSA_PUBLIC.to_vec())).expect("RS256 key")] {
            assert!(matches!(check(&auth, &unsigned).await, Err(AuthError::Malformed(_))));
        }
        // Case variants are unknown algorithms too.
        let header = b64url(br#"{"alg":"None","typ":"JWT"}"#);
        assert!(matches!(check(&hs_auth(), &format!("{header}.{payload}.")).await, Err(AuthError::Malformed(_))));
    }

    #[tokio::test]
    async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
        // Algorithm confusion: the attacker knows the RSA public key and uses its PEM as an HMAC secret.
        let forged = mint_hs256(RSA_PUBLIC, &claims("alice")).expect("mint");
        let auth = JwtAuth::new(JwtKey::Rs256Pem(RSA_PUBLIC.to_vec())).expect("RS256 key");
        assert_eq!(check(&auth, &forged).await, Err(AuthError::BadSignature));
        // Also when the verifier has an HS256 key as well (with another secret).
        let both = JwtAuth::new(JwtKey::Rs256Pem(RSA_PUBLIC.to_vec()))
            .and_then(|a| a.with_key(JwtKey::Hs256(SECRET.to_vec())))
            .expect("keys");
        assert_eq!(check(&both, &forged).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn algorithm_without_a_key_is_rejected() {
        let rs = sign(Algorithm::RS256, &rsa_signer(), None, &claims("alice"));
        assert_eq!(check(&hs_auth(), &rs).await, Err(AuthError::BadSignature));
        let ed = sign(Algorithm::EdDSA, &ed_signer(), None, &claims("alice"));
        let es_only = JwtAuth::new(JwtKey::Es256Pem(EC_PUBLIC.to_vec())).expect("ES256 key");
        assert_eq!(check(&es_only, &ed).await, Err(AuthError::BadSignature));
        // HS384 with the right secret: still not an algorithm this verifier accepts.
        let hs384 = sign(Algorithm::HS384, &EncodingKey::from_secret(SECRET), None, &claims("alice"));
        assert_eq!(check(&hs_auth(), &hs384).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn several_keys_are_selected_by_kid_then_by_alg() {
        let auth = JwtAuth::new_named("a", JwtKey::Hs256(SECRET.to_vec()))
            .and_then(|a| a.with_named_key("b", JwtKey::Hs256(OTHER_SECRET.to_vec())))
            .and_then(|a| a.with_key(JwtKey::EdDsaPem(ED_PUBLIC.to_vec())))
            .expect("keys");
        let other = EncodingKey::from_secret(OTHER_SECRET);
        let c = claims("alice");
        assert!(check(&auth, &sign(Algorithm::HS256, &other, Some("b"), &c)).await.is_ok());
        // The kid names a key that does not match the signature.
        assert_eq!(check(&auth, &sign(Algorithm::HS256, &other, Some("a"), &c)).await, Err(AuthError::BadSignature));
        // No kid: every HS256 key is tried.
        assert!(check(&auth, &sign(Algorithm::HS256, &other, None, &c)).await.is_ok());
        assert!(check(&auth, &sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), None, &c)).await.is_ok());
        // Unknown kid: only the unnamed keys are tried.
        assert_eq!(check(&auth, &sign(Algorithm::HS256, &other, Some("zz"), &c)).await, Err(AuthError::BadSignature));
        assert!(check(&auth, &sign(Algorithm::EdDSA, &ed_signer(), Some("zz"), &c)).await.is_ok());
        // A named key of another algorithm is never used for this alg.
        assert_eq!(
            check(&auth, &sign(Algorithm::EdDSA, &ed_signer(), Some("a"), &c)).await,
            Err(AuthError::BadSignature)
        );
    }

    #[tokio::test]
    async fn sub_must_be_a_valid_user_id() {
        let auth = hs_auth();
        let exp = now() + 600;
        let raw = |c: Value| sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), None, &c);
        assert!(matches!(check(&auth, &raw(serde_json::json!({ "exp": exp }))).await, Err(AuthError::InvalidClaim(_))));
        assert!(matches!(check(&auth, &mint(&claims("a b"))).await, Err(AuthError::InvalidClaim(_))));
        assert!(matches!(check(&auth, &mint(&claims(""))).await, Err(AuthError::InvalidClaim(_))));
        let numeric = raw(serde_json::json!({ "sub": 42, "exp": exp }));
        assert!(matches!(check(&auth, &numeric).await, Err(AuthError::InvalidClaim(_))));
    }

    #[tokio::test]
    async fn device_must_be_a_valid_device_id() {
        let token = mint(&TokenClaims { device: Some("bad device".into()), ..claims("alice") });
        assert!(matches!(check(&hs_auth(), &token).await, Err(AuthError::InvalidClaim(_))));
    }

    #[tokio::test]
    async fn exp_is_required_unless_disabled() {
        let token = mint(&TokenClaims { exp: None, ..claims("alice") });
        assert!(matches!(check(&hs_auth(), &token).await, Err(AuthError::InvalidClaim(_))));
        let p = check(&hs_auth().require_exp(false), &token).await.expect("exp optional");
        assert_eq!(p.expires_at, None);
        // An exp that is present is still enforced.
        let expired = mint(&TokenClaims { exp: Some(now() - 3600), ..claims("alice") });
        assert_eq!(check(&hs_auth().require_exp(false), &expired).await, Err(AuthError::Expired));
        // A non-numeric exp is a bad claim.
        let c = serde_json::json!({ "sub": "alice", "exp": "tomorrow" });
        let token = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), None, &c);
        assert!(matches!(check(&hs_auth(), &token).await, Err(AuthError::InvalidClaim(_))));
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let auth = hs_auth();
        let valid = mint(&claims("alice"));
        let parts: Vec<&str> = valid.split('.').collect();
        let cases = [
            "garbage".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("{valid}.extra"),
            "!!!.???.***".to_owned(),
            // Header not JSON.
            format!("{}.{}.{}", b64url(b"not json"), parts[1], parts[2]),
            // Payload not JSON, or not an object.
            format!("{}.{}.{}", parts[0], b64url(b"not json"), parts[2]),
            format!("{}.{}.{}", parts[0], b64url(b"[1,2]"), parts[2]),
            // Unknown algorithm.
            format!("{}.{}.{}", b64url(br#"{"alg":"XS256"}"#), parts[1], parts[2]),
            // Signature not base64url.
            format!("{}.{}.%%%", parts[0], parts[1]),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ];
        for token in &cases {
            assert!(matches!(check(&auth, token).await, Err(AuthError::Malformed(_))), "{token:?}");
        }
        assert_eq!(check(&auth, "").await, Err(AuthError::Missing));
    }

    #[test]
    fn unusable_keys_are_config_errors() {
        assert!(JwtAuth::new(JwtKey::Hs256(vec![7; 31])).is_err());
        assert!(JwtAuth::new(JwtKey::Hs256(vec![7; 32])).is_ok());
        assert!(mint_hs256(b"short", &claims("alice")).is_err());
        assert!(hs_auth().with_key(JwtKey::Hs256(Vec::new())).is_err());
        assert!(JwtAuth::new(JwtKey::Rs256Pem(b"not a pem".to_vec())).is_err());
        // Private keys are not public keys.
        assert!(JwtAuth::new(JwtKey::Rs256Pem(RSA_PRIVATE.to_vec())).is_err());
        assert!(JwtAuth::new(JwtKey::Es256Pem(EC_PRIVATE.to_vec())).is_err());
        assert!(JwtAuth::new(JwtKey::EdDsaPem(ED_PRIVATE.to_vec())).is_err());
        // Keys of the wrong type or size.
        assert!(JwtAuth::new(JwtKey::Rs256Pem(RSA1024_PUBLIC.to_vec())).is_err());
        assert!(JwtAuth::new(JwtKey::Rs256Pem(EC_PUBLIC.to_vec())).is_err());
        assert!(JwtAuth::new(JwtKey::Es256Pem(EC384_PUBLIC.to_vec())).is_err());
        assert!(JwtAuth::new(JwtKey::Es256Pem(RSA_PUBLIC.to_vec())).is_err());
        assert!(JwtAuth::new(JwtKey::EdDsaPem(EC_PUBLIC.to_vec())).is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let key = JwtKey::Hs256(SECRET.to_vec());
        let shown = format!("{key:?} {:?}", hs_auth());
        assert!(!shown.contains("hs256-test-secret"), "{shown}");
        assert!(!shown.contains("97, 110"), "{shown}"); // "an" as bytes
        assert!(shown.contains("HS256"), "{shown}");
    }

    #[test]
    fn token_claims_serialize_without_none_fields() {
        let json = serde_json::to_string(&TokenClaims { sub: "a".into(), ..TokenClaims::default() }).expect("json");
        assert_eq!(json, r#"{"sub":"a"}"#);
    }

    #[test]
    fn modulus_bits() {
        assert_eq!(rsa_modulus_bits(&[]), 0);
        assert_eq!(rsa_modulus_bits(&[0, 0x01]), 1);
        assert_eq!(rsa_modulus_bits(&[0x80, 0]), 16);
        assert_eq!(rsa_modulus_bits(&[0, 0x7f, 0xff]), 15);
    }
}
