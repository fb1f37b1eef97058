//! `herald-server token`: mints an HS256 JWT for development and tests.

use std::time::Duration;

use herald::core::auth::{TokenClaims, mint_hs256};
use herald::core::id::{DeviceId, UserId};

use crate::Error;
use crate::config::{AuthSection, MIN_SECRET_BYTES, ServerConfig, Sources};

/// The longest accepted TTL (about ten years).
const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Parses a duration such as `24h`, `90m`, `3600s`, `7d`, `1h30m` or `3600` (seconds).
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("invalid TTL {text:?}: use a number with a unit, e.g. 3600s, 90m, 24h or 7d");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number.unwrap_or(0).checked_mul(10).and_then(|n| n.checked_add(u64::from(digit)));
            number = Some(n.ok_or_else(bad)?);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n = number.take().ok_or_else(bad)?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(bad)?;
    }
    if let Some(n) = number {
        total = total.checked_add(n).ok_or_else(bad)?;
    }
    let ttl = Duration::from_secs(total);
    if ttl.is_zero() {
        return Err(format!("invalid TTL {text:?}: it must be longer than 0 seconds"));
    }
    if ttl > MAX_TTL {
        return Err(format!("invalid TTL {text:?}: at most {} days", MAX_TTL.as_secs() / 86_400));
    }
    Ok(ttl)
}

/// What to mint.
#[derive(Debug)]
pub(crate) struct MintRequest<'a> {
    /// The user (`sub`).
    pub(crate) user: &'a str,
    /// The device, if any.
    pub(crate) device: Option<&'a str>,
    /// Lifetime.
    pub(crate) ttl: Duration,
    /// `--secret` (or `HERALD_AUTH__JWT_HS256_SECRET`).
    pub(crate) secret: Option<&'a str>,
}

/// Mints a token. The secret is `--secret`/`HERALD_AUTH__JWT_HS256_SECRET`, else the configuration's; the issuer
/// and audience come from the configuration, so that the server accepts the token.
pub(crate) fn mint(request: &MintRequest<'_>, sources: &Sources<'_>) -> Result<String, Error> {
    UserId::new(request.user).map_err(|e| format!("invalid user id {:?}: {e}", request.user))?;
    if let Some(device) = request.device {
        DeviceId::new(device).map_err(|e| format!("invalid device id {device:?}: {e}"))?;
    }
    let config = ServerConfig::load(sources)?;
    let secret = match (request.secret, &config.auth.jwt_hs256_secret) {
        (Some(s), _) => s.to_owned(),
        (None, Some(s)) => s.0.clone(),
        (None, None) => {
            return Err("no HS256 secret: pass --secret, set HERALD_AUTH__JWT_HS256_SECRET, or give a --config \
                        file with auth.jwt_hs256_secret (a server started without one prints its development \
                        secret at start)"
                .into());
        }
    };
    if secret.len() < MIN_SECRET_BYTES {
        return Err(
            format!("the secret is {} bytes long, at least {MIN_SECRET_BYTES} are required", secret.len()).into()
        );
    }
    mint_with(secret.as_bytes(), request.user, request.device, request.ttl, &config.auth)
}

/// Mints a token for `user` with `secret`, carrying the issuer and audience `auth` requires.
pub(crate) fn mint_with(
    secret: &[u8],
    user: &str,
    device: Option<&str>,
    ttl: Duration,
    auth: &AuthSection,
) -> Result<String, Error> {
    let now = herald::core::model::now_millis() / 1000;
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let claims = TokenClaims {
        sub: user.to_owned(),
        exp: Some(now.saturating_add(ttl)),
        nbf: None,
        iss: auth.jwt_issuer.clone(),
        aud: auth.jwt_audience.clone(),
        device: device.map(str::to_owned),
    };
    Ok(mint_hs256(secret, &claims)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        let secs = |t: &str| parse_ttl(t).map(|d| d.as_secs());
        assert_eq!(secs("24h"), Ok(86_400));
        assert_eq!(secs("3600s"), Ok(3600));
        assert_eq!(secs("3600"), Ok(3600));
        assert_eq!(secs("90m"), Ok(5400));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs(" 2h "), Ok(7200));
        for bad in ["", "h", "0", "0s", "1x", "1.5h", "-1h", "99999999999999999999s", "100000d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
