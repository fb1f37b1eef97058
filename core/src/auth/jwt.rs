//! JWT authentication (stub, being implemented).

use async_trait::async_trait;

use super::{Auth, AuthError, Credentials};
use crate::model::Principal;

/// A verification key for one algorithm.
#[derive(Debug, Clone)]
pub enum JwtKey {
    /// HMAC-SHA256 shared secret.
    Hs256(Vec<u8>),
}

/// Invalid JWT configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT configuration: {0}")]
pub struct JwtConfigError(pub String);

/// Authenticates JWTs.
#[derive(Debug)]
pub struct JwtAuth {
    _key: JwtKey,
}

impl JwtAuth {
    /// A verifier for `key`.
    pub fn new(key: JwtKey) -> Result<Self, JwtConfigError> {
        Ok(Self { _key: key })
    }
}

#[async_trait]
impl Auth for JwtAuth {
    async fn authenticate(&self, _credentials: &Credentials) -> Result<Principal, AuthError> {
        Err(AuthError::Unknown)
    }
}
