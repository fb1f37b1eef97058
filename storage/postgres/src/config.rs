//! [`PgConfig`]: where the database is and how the store uses it.

use std::fmt;
use std::time::Duration;

use herald_core::store::DEFAULT_MAX_BODY_BYTES;

use crate::ConnectError;

/// The environment variable read for the database URL when [`PgConfig::url`] is `None`.
pub const DATABASE_URL_ENV: &str = "HERALD_DATABASE_URL";

/// The longest schema name PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_SCHEMA_LEN: usize = 63;

/// Bytes counted against the queue's byte budget for each queued message besides its body (ids, the request).
pub(crate) const REQUEST_OVERHEAD_BYTES: usize = 256;

/// How a [`PgStore`](crate::PgStore) connects and behaves.
///
/// Every field has a default ([`PgConfig::default`]); most applications set only the URL.
#[derive(Clone)]
pub struct PgConfig {
    /// The database URL (`postgres://user:password@host:port/database?sslmode=...`). `None`: read
    /// [`HERALD_DATABASE_URL`](DATABASE_URL_ENV).
    pub url: Option<String>,
    /// The schema holding Herald's tables; it is created when missing (if [`run_migrations`](Self::run_migrations)
    /// is on). Lower-case ASCII letters, digits and `_`, starting with a letter or `_`, at most 63 bytes.
    /// Default `herald`.
    pub schema: String,
    /// Connections of the read pool (history, metadata, membership, cursors). Default 8.
    pub pool_size: u32,
    /// Writer tasks, each with its own connection; channels are spread over them by hash, so one transaction's
    /// commit overlaps the next batch's work on another writer. Default 2.
    pub writers: usize,
    /// How long an operation waits for a connection (pool acquire, connecting a writer) and how long an append
    /// waits for room in a full queue, before failing with `StoreError::Unavailable`. Default 5 s.
    pub acquire_timeout: Duration,
    /// The deadline of one batch transaction; past it the batch fails and the writer reconnects. Default 10 s.
    pub write_timeout: Duration,
    /// The most messages one batch transaction writes. Default 1000.
    pub batch_max_messages: usize,
    /// The most body bytes one batch transaction writes (a single larger message still goes alone).
    /// Default 4 MiB.
    pub batch_max_bytes: usize,
    /// The most appends queued or in flight per writer. Default 10 000.
    pub queue_max_messages: usize,
    /// The most bytes queued or in flight in all writers together (bodies plus a fixed overhead per message).
    /// Default 64 MiB.
    pub queue_max_bytes: usize,
    /// The largest body `append` accepts ([`Store::max_body_bytes`](herald_core::store::Store::max_body_bytes)).
    /// Default [`DEFAULT_MAX_BODY_BYTES`] (1 MiB).
    pub max_body_bytes: usize,
    /// Whether [`PgStore::connect`](crate::PgStore::connect) creates the schema and applies the embedded
    /// migrations. Turn it off when migrations are applied separately. Default on.
    pub run_migrations: bool,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: "herald".to_owned(),
            pool_size: 8,
            writers: 2,
            acquire_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            batch_max_messages: 1000,
            batch_max_bytes: 4 * 1024 * 1024,
            queue_max_messages: 10_000,
            queue_max_bytes: 64 * 1024 * 1024,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            run_migrations: true,
        }
    }
}

impl PgConfig {
    /// The default configuration with this database URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: Some(url.into()), ..Self::default() }
    }

    /// Sets [`schema`](Self::schema).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The URL to connect to: [`url`](Self::url), else `HERALD_DATABASE_URL`.
    pub fn resolved_url(&self) -> Result<String, ConnectError> {
        match &self.url {
            Some(url) => Ok(url.clone()),
            None => match std::env::var(DATABASE_URL_ENV) {
                Ok(url) if !url.is_empty() => Ok(url),
                _ => Err(ConnectError::MissingUrl),
            },
        }
    }

    /// Checks the values; [`PgStore::connect`](crate::PgStore::connect) calls it first.
    pub fn validate(&self) -> Result<(), ConnectError> {
        let invalid = |msg: String| Err(ConnectError::InvalidConfig(msg));
        if !valid_schema(&self.schema) {
            return invalid(format!(
                "schema {:?} is not a plain identifier: use lower-case ASCII letters, digits and '_', starting \
                 with a letter or '_', at most {MAX_SCHEMA_LEN} bytes",
                self.schema
            ));
        }
        for (name, value) in [
            ("pool_size", self.pool_size as usize),
            ("writers", self.writers),
            ("batch_max_messages", self.batch_max_messages),
            ("batch_max_bytes", self.batch_max_bytes),
            ("queue_max_messages", self.queue_max_messages),
            ("max_body_bytes", self.max_body_bytes),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be greater than 0"));
            }
        }
        if self.writers > 64 {
            return invalid(format!("writers is {}, at most 64 are allowed", self.writers));
        }
        if self.acquire_timeout.is_zero() || self.write_timeout.is_zero() {
            return invalid("acquire_timeout and write_timeout must be greater than 0".to_owned());
        }
        if u32::try_from(self.max_body_bytes + REQUEST_OVERHEAD_BYTES).is_err() {
            return invalid(format!("max_body_bytes is {}, at most 4 GiB are supported", self.max_body_bytes));
        }
        if self.queue_max_bytes > tokio::sync::Semaphore::MAX_PERMITS {
            return invalid(format!("queue_max_bytes is {}, too large", self.queue_max_bytes));
        }
        if self.queue_max_bytes < self.max_body_bytes + REQUEST_OVERHEAD_BYTES {
            return invalid(format!(
                "queue_max_bytes ({}) must hold at least one message of max_body_bytes ({}) plus {} bytes",
                self.queue_max_bytes, self.max_body_bytes, REQUEST_OVERHEAD_BYTES
            ));
        }
        Ok(())
    }
}

/// Whether `s` is a schema name that needs no quoting.
fn valid_schema(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= MAX_SCHEMA_LEN
}

/// The URL with its password (in the authority or a `password=` parameter) replaced by `<redacted>`.
pub(crate) fn redact_url(url: &str) -> String {
    let url = redact_authority(url);
    match url.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => url,
    }
}

/// The URL with the password of its authority replaced by `<redacted>`.
fn redact_authority(url: &str) -> String {
    // postgres://user:password@host/...: the password is between the first ':' after "//" and the last '@'
    // before the path.
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:<redacted>{}", &url[..scheme_end], &authority[..colon], &rest[at..])
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("writers", &self.writers)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("batch_max_messages", &self.batch_max_messages)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("queue_max_messages", &self.queue_max_messages)
            .field("queue_max_bytes", &self.queue_max_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("run_migrations", &self.run_migrations)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        PgConfig::default().validate().expect("the defaults are valid");
    }

    #[test]
    fn schema_names() {
        for ok in ["herald", "_x", "t_0123456789abcdef", &"a".repeat(63)] {
            assert!(valid_schema(ok), "{ok}");
        }
        for bad in ["", "Herald", "1abc", "a-b", "a b", "a\"b", "é", &"a".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
        let e = PgConfig::default().with_schema("Bad").validate().expect_err("refused");
        assert!(e.to_string().contains("\"Bad\""), "{e}");
    }

    #[test]
    fn limits_are_checked() {
        let config = PgConfig { writers: 0, ..PgConfig::default() };
        assert!(config.validate().expect_err("refused").to_string().contains("writers"));
        let config = PgConfig { queue_max_bytes: 1024, max_body_bytes: 1024, ..PgConfig::default() };
        assert!(config.validate().expect_err("refused").to_string().contains("queue_max_bytes"));
        let config = PgConfig { queue_max_bytes: usize::MAX, ..PgConfig::default() };
        assert!(config.validate().expect_err("refused").to_string().contains("queue_max_bytes"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:<redacted>@h:5432/db");
        assert_eq!(redact_url("postgres://u:p@ss@h/db?x=1"), "postgres://u:<redacted>@h/db?x=1");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h:5432/db"), "postgres://h:5432/db");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=pw&x=1"),
            "postgres://h/db?user=u&password=<redacted>&x=1"
        );
        let debug = format!("{:?}", PgConfig::new("postgres://u:hunter2@h/db"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
