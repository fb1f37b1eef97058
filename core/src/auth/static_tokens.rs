//! Static development tokens (stub, being implemented).

use async_trait::async_trait;

use super::{Auth, AuthError, Credentials};
use crate::model::Principal;

/// A fixed map from token to user.
#[derive(Debug, Default)]
pub struct StaticTokens {}

#[async_trait]
impl Auth for StaticTokens {
    async fn authenticate(&self, _credentials: &Credentials) -> Result<Principal, AuthError> {
        Err(AuthError::Unknown)
    }
}
