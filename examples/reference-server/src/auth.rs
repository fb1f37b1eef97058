//! Authentication from the configuration: JWT keys and development static tokens, tried in turn.

use async_trait::async_trait;
use herald::core::auth::{Auth, AuthError, Credentials, JwtAuth, JwtKey, StaticTokens};
use herald::core::id::UserId;
use herald::core::model::Principal;

use crate::Error;
use crate::config::{AuthSection, KeyAlg, Secret};

/// The server's authenticator: static tokens first (when any are configured), then JWT.
#[derive(Debug)]
pub(crate) struct ServerAuth {
    jwt: Option<JwtAuth>,
    static_tokens: Option<StaticTokens>,
}

/// Whether `token` has the shape of a JWT (three dot-separated parts).
fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[async_trait]
impl Auth for ServerAuth {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        let Credentials::Bearer(token) = credentials;
        match (&self.static_tokens, &self.jwt) {
            (Some(tokens), Some(jwt)) => match tokens.authenticate(credentials).await {
                Ok(principal) => Ok(principal),
                // Report the JWT verdict for JWT-shaped tokens, the static one otherwise.
                Err(_) if looks_like_jwt(token) => jwt.authenticate(credentials).await,
                Err(e) => Err(e),
            },
            (Some(tokens), None) => tokens.authenticate(credentials).await,
            (None, Some(jwt)) => jwt.authenticate(credentials).await,
            (None, None) => Err(AuthError::Unknown),
        }
    }
}

/// The authenticator, and the development secret when one had to be generated.
#[derive(Debug)]
pub(crate) struct BuiltAuth {
    /// The authenticator.
    pub(crate) auth: ServerAuth,
    /// The generated HS256 secret, when the configuration has no JWT key and generation was allowed.
    pub(crate) dev_secret: Option<Secret>,
}

/// Builds the authenticator. Reads the PEM files. With no JWT key configured and `generate_dev_secret`, a random
/// HS256 secret is generated for this run.
pub(crate) fn build(config: &AuthSection, generate_dev_secret: bool) -> Result<BuiltAuth, Error> {
    let mut dev_secret = None;
    // (what, kid, key): `what` names the key in error messages.
    let mut keys: Vec<(String, Option<String>, JwtKey)> = Vec::new();
    match &config.jwt_hs256_secret {
        Some(secret) => keys.push(("auth.jwt_hs256_secret".into(), None, JwtKey::Hs256(secret.as_bytes().to_vec()))),
        None if config.jwt_keys.is_empty() && generate_dev_secret => {
            let secret = random_secret()?;
            keys.push(("the development secret".into(), None, JwtKey::Hs256(secret.as_bytes().to_vec())));
            dev_secret = Some(secret);
        }
        None => {}
    }
    for (i, k) in config.jwt_keys.iter().enumerate() {
        let what = format!("auth.jwt_keys[{i}] ({:?}, pem_file {})", k.alg, k.path().display());
        let pem = std::fs::read(k.path()).map_err(|e| format!("{what}: cannot read the file: {e}"))?;
        let key = match k.alg {
            KeyAlg::RS256 => JwtKey::Rs256Pem(pem),
            KeyAlg::ES256 => JwtKey::Es256Pem(pem),
            KeyAlg::EdDSA => JwtKey::EdDsaPem(pem),
        };
        keys.push((what, k.kid.clone(), key));
    }

    let mut jwt: Option<JwtAuth> = None;
    for (what, kid, key) in keys {
        let added = match (jwt.take(), kid) {
            (None, None) => JwtAuth::new(key),
            (None, Some(kid)) => JwtAuth::new_named(kid, key),
            (Some(auth), None) => auth.with_key(key),
            (Some(auth), Some(kid)) => auth.with_named_key(kid, key),
        };
        jwt = Some(added.map_err(|e| format!("{what}: {e}"))?);
    }
    let jwt = jwt.map(|mut auth| {
        if let Some(iss) = &config.jwt_issuer {
            auth = auth.issuer(iss.clone());
        }
        if let Some(aud) = &config.jwt_audience {
            auth = auth.audience(aud.clone());
        }
        auth
    });

    let static_tokens = if config.static_tokens.is_empty() {
        None
    } else {
        let mut tokens = StaticTokens::new();
        for (i, (token, user)) in config.static_tokens.iter().enumerate() {
            if token.is_empty() {
                return Err(format!("auth.static_tokens: entry #{} has an empty token", i + 1).into());
            }
            let user = UserId::new(user)
                .map_err(|e| format!("auth.static_tokens: entry #{} maps to an invalid user id: {e}", i + 1))?;
            tokens.insert(token.clone(), user);
        }
        Some(tokens)
    };
    if jwt.is_none() && static_tokens.is_none() {
        return Err("auth: no JWT key and no static token is configured: nobody could connect (set \
                    auth.jwt_hs256_secret, auth.jwt_keys or auth.static_tokens)"
            .into());
    }
    Ok(BuiltAuth { auth: ServerAuth { jwt, static_tokens }, dev_secret })
}

/// A fresh random secret: 32 random bytes, hex-encoded (64 characters).
pub(crate) fn random_secret() -> Result<Secret, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("cannot read random bytes for the development secret: {e}"))?;
    Ok(Secret(bytes.iter().map(|b| format!("{b:02x}")).collect()))
}

#[cfg(test)]
mod tests {
    use herald::core::auth::{TokenClaims, mint_hs256};

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn bearer(t: &str) -> Credentials {
        Credentials::Bearer(t.to_owned())
    }

    fn token(secret: &str, sub: &str) -> String {
        let exp = herald::core::model::now_millis() / 1000 + 600;
        mint_hs256(secret.as_bytes(), &TokenClaims { sub: sub.into(), exp: Some(exp), ..TokenClaims::default() })
            .expect("mint")
    }

    #[tokio::test]
    async fn static_tokens_and_jwt_together() {
        let mut config = AuthSection { jwt_hs256_secret: Some(Secret(SECRET.into())), ..AuthSection::default() };
        config.static_tokens.insert("dev-bob".into(), "bob".into());
        let built = build(&config, true).expect("auth");
        assert!(built.dev_secret.is_none());
        let auth = built.auth;
        assert_eq!(auth.authenticate(&bearer("dev-bob")).await.map(|p| p.user.to_string()), Ok("bob".into()));
        let jwt = token(SECRET, "alice");
        assert_eq!(auth.authenticate(&bearer(&jwt)).await.map(|p| p.user.to_string()), Ok("alice".into()));
        assert_eq!(auth.authenticate(&bearer("nope")).await, Err(AuthError::Unknown));
        let forged = token("another-secret-that-is-long-enough-x", "alice");
        assert_eq!(auth.authenticate(&bearer(&forged)).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn dev_secret_is_generated_only_without_keys() {
        let built = build(&AuthSection::default(), true).expect("auth");
        let secret = built.dev_secret.expect("generated");
        assert_eq!(secret.0.len(), 64);
        let jwt = token(&secret.0, "alice");
        assert!(built.auth.authenticate(&bearer(&jwt)).await.is_ok());
        assert_ne!(random_secret().expect("random"), random_secret().expect("random"));
        // Without generation and without keys nobody could connect: refused.
        assert!(build(&AuthSection::default(), false).is_err());
    }

    #[test]
    fn bad_static_users_and_missing_pem_files_are_errors() {
        let mut config = AuthSection::default();
        config.static_tokens.insert("t".into(), "not a user".into());
        let e = build(&config, true).expect_err("bad user").to_string();
        assert!(e.contains("auth.static_tokens"), "{e}");
    }
}
