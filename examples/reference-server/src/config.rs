//! The server configuration: defaults, then a TOML file, then `HERALD_*` environment variables, then the
//! command line (each overriding the previous).
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! store = "sqlite"
//! data_dir = "./herald-data"
//!
//! [websocket]
//! path = "/ws"
//!
//! [auth]
//! jwt_hs256_secret = "at least 32 bytes ................"
//!
//! [hub.limits]
//! max_frame_bytes = 65536
//! ```
//!
//! Environment variables: `HERALD_` + the key path in upper case with `__` between levels, e.g. `HERALD_LISTEN`,
//! `HERALD_AUTH__JWT_HS256_SECRET`, `HERALD_HUB__LIMITS__MAX_FRAME_BYTES`. Only variables whose first segment is a
//! top-level key ([`TOP_LEVEL_KEYS`]) are read; others (`HERALD_REQUIRE_SERVICES`, ...) belong to other tools.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::magic::RelativePathBuf;
use herald::core::HubConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The environment variable prefix.
pub(crate) const ENV_PREFIX: &str = "HERALD_";

/// The top-level keys; `HERALD_<KEY>...` variables whose first segment is not one of these are ignored.
pub(crate) const TOP_LEVEL_KEYS: &[&str] =
    &["listen", "store", "data_dir", "websocket", "auth", "hub", "telemetry", "quic", "longpoll", "postgres"];

/// The in-memory store: nothing survives a restart.
pub(crate) const MEMORY_STORE: &str = "memory";

/// The embedded SQLite store (the default): a database file and its append log in `data_dir`.
pub(crate) const SQLITE_STORE: &str = "sqlite";

/// The PostgreSQL store (`[postgres]` section).
pub(crate) const POSTGRES_STORE: &str = "postgres";

/// The stores this build has.
const STORES: &[&str] = &[SQLITE_STORE, POSTGRES_STORE, MEMORY_STORE];

/// Where the SQLite store keeps its files by default (relative to the working directory).
pub(crate) const DEFAULT_DATA_DIR: &str = "./herald-data";

/// The SQLite database file inside `data_dir`.
pub(crate) const SQLITE_FILE: &str = "herald.db";

/// The shortest accepted HS256 secret, in bytes.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// What the redacted secrets are printed as.
const REDACTED: &str = "<redacted>";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServerConfig {
    /// The address the WebSocket (and health) listener binds, `IP:port`. Port 0 picks a free port.
    pub(crate) listen: SocketAddr,
    /// The store: `"sqlite"` (durable, embedded, the default), `"postgres"` (configured in [`PostgresSection`])
    /// or `"memory"`.
    pub(crate) store: String,
    /// The directory of the SQLite store's files, created on first start; a relative path is relative to the
    /// working directory.
    pub(crate) data_dir: PathBuf,
    /// WebSocket transport settings.
    pub(crate) websocket: WebSocketSection,
    /// Authentication.
    pub(crate) auth: AuthSection,
    /// The hub's limits and timeouts ([`HubConfig`]).
    pub(crate) hub: HubConfig,
    /// Logs, metrics and traces.
    pub(crate) telemetry: crate::telemetry::TelemetrySection,
    /// QUIC / WebTransport transport settings.
    pub(crate) quic: QuicSection,
    /// The long-poll / SSE transport (on by default, on its own listener).
    pub(crate) longpoll: LongPollSection,
    /// The PostgreSQL store's settings (used when `store = "postgres"`).
    pub(crate) postgres: PostgresSection,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            store: SQLITE_STORE.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            websocket: WebSocketSection::default(),
            auth: AuthSection::default(),
            hub: HubConfig::default(),
            telemetry: crate::telemetry::TelemetrySection::default(),
            quic: QuicSection::default(),
            longpoll: LongPollSection::default(),
            postgres: PostgresSection::default(),
        }
    }
}

/// `[websocket]`: the transport's settings (see `herald::websocket::WsConfig`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WebSocketSection {
    /// The upgrade path.
    pub(crate) path: String,
    /// No longer used (`WsConfig::read_buffer_size`); accepted for older configurations.
    pub(crate) read_buffer_size: usize,
    /// No longer used (`WsConfig::write_buffer_size`); accepted for older configurations.
    pub(crate) write_buffer_size: usize,
    /// No longer used (`WsConfig::max_write_buffer_size`); accepted for older configurations.
    pub(crate) max_write_buffer_size: usize,
    /// How long shutdown waits for sessions to close, in milliseconds.
    pub(crate) shutdown_grace_ms: u64,
}

impl Default for WebSocketSection {
    fn default() -> Self {
        let ws = herald::websocket::WsConfig::default();
        Self {
            path: ws.path,
            read_buffer_size: ws.read_buffer_size,
            write_buffer_size: ws.write_buffer_size,
            max_write_buffer_size: ws.max_write_buffer_size,
            shutdown_grace_ms: u64::try_from(ws.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl WebSocketSection {
    /// The transport configuration.
    pub(crate) fn ws_config(&self) -> herald::websocket::WsConfig {
        herald::websocket::WsConfig {
            path: self.path.clone(),
            read_buffer_size: self.read_buffer_size,
            write_buffer_size: self.write_buffer_size,
            max_write_buffer_size: self.max_write_buffer_size,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}

/// `[quic]`: the QUIC transport (native QUIC and WebTransport on one UDP port; see `herald::quic::QuicConfig`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QuicSection {
    /// Serve QUIC at all (default true).
    pub(crate) enabled: bool,
    /// The UDP address, `IP:port`.
    pub(crate) listen: SocketAddr,
    /// PEM certificate chain (leaf first). Without `cert_file` and `key_file` a development certificate is
    /// generated at start (self-signed, 13 days, for localhost / 127.0.0.1 / ::1) and its SHA-256 printed.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_relative_opt")]
    pub(crate) cert_file: Option<RelativePathBuf>,
    /// PEM private key of the certificate.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_relative_opt")]
    pub(crate) key_file: Option<RelativePathBuf>,
    /// Serve WebTransport (browsers) at `webtransport_path`.
    pub(crate) webtransport: bool,
    /// The WebTransport session path.
    pub(crate) webtransport_path: String,
    /// Accept 0-RTT data (replay-safe commands only until the handshake completes).
    pub(crate) zero_rtt: bool,
    /// Most handshakes in progress; more are refused.
    pub(crate) max_handshakes: usize,
    /// Ask every new client to validate its address (a Retry round trip); otherwise only under load.
    pub(crate) always_retry: bool,
    /// How long shutdown waits for sessions to close, in milliseconds.
    pub(crate) shutdown_grace_ms: u64,
    /// Serve the demo page (`GET /demo/`) on the WebSocket listener: a browser page that talks over
    /// WebSocket and WebTransport.
    pub(crate) demo_page: bool,
}

impl Default for QuicSection {
    fn default() -> Self {
        let q = herald::quic::QuicConfig::default();
        Self {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8443)),
            cert_file: None,
            key_file: None,
            webtransport: true,
            webtransport_path: q.webtransport_path.unwrap_or_else(|| "/wt".into()),
            zero_rtt: q.zero_rtt,
            max_handshakes: q.max_handshakes,
            always_retry: false,
            shutdown_grace_ms: u64::try_from(q.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
            demo_page: false,
        }
    }
}

/// `[postgres]`: the PostgreSQL store (see `herald::postgres::PgConfig`). The URL comes from `url` (or
/// `HERALD_POSTGRES__URL`), else from `HERALD_DATABASE_URL`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PostgresSection {
    /// `postgres://user:password@host:port/database`; redacted when printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<Secret>,
    /// The schema holding Herald's tables.
    pub(crate) schema: String,
    /// Connections of the read pool.
    pub(crate) pool_size: u32,
    /// Writer connections (group commit; channels spread over them).
    pub(crate) writers: usize,
    /// How long to wait for a connection or for room in the append queue, in milliseconds.
    pub(crate) acquire_timeout_ms: u64,
    /// Deadline of one batch transaction, in milliseconds.
    pub(crate) write_timeout_ms: u64,
    /// Most messages per batch transaction.
    pub(crate) batch_max_messages: usize,
    /// Most appends queued per writer.
    pub(crate) queue_max_messages: usize,
    /// Most bytes queued in all writers.
    pub(crate) queue_max_bytes: usize,
    /// The store's own body limit in bytes (the hub's `hub.limits.max_body_bytes` is checked first).
    pub(crate) max_body_bytes: usize,
    /// Create the schema and apply migrations at start.
    pub(crate) run_migrations: bool,
}

impl Default for PostgresSection {
    fn default() -> Self {
        let pg = herald::postgres::PgConfig::default();
        Self {
            url: None,
            schema: pg.schema,
            pool_size: pg.pool_size,
            writers: pg.writers,
            acquire_timeout_ms: u64::try_from(pg.acquire_timeout.as_millis()).unwrap_or(u64::MAX),
            write_timeout_ms: u64::try_from(pg.write_timeout.as_millis()).unwrap_or(u64::MAX),
            batch_max_messages: pg.batch_max_messages,
            queue_max_messages: pg.queue_max_messages,
            queue_max_bytes: pg.queue_max_bytes,
            max_body_bytes: pg.max_body_bytes,
            run_migrations: pg.run_migrations,
        }
    }
}

/// `[longpoll]`: the HTTP long-poll and SSE transport (see `herald::longpoll::LpConfig`), on its own listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LongPollSection {
    /// Whether to serve it. Default true.
    pub(crate) enabled: bool,
    /// Its listener, `IP:port`. Default 127.0.0.1:8081.
    pub(crate) listen: SocketAddr,
    /// The path prefix of its endpoints. Default `/lp`.
    pub(crate) prefix: String,
    /// PEM certificate chain for TLS (HTTP/2 by ALPN); relative to the config file. Without it: cleartext
    /// HTTP/1.1 and h2c.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "serialize_opt_relative")]
    pub(crate) tls_cert: Option<RelativePathBuf>,
    /// PEM private key for TLS; relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "serialize_opt_relative")]
    pub(crate) tls_key: Option<RelativePathBuf>,
    /// How long a session without a reader lives on, in milliseconds.
    pub(crate) linger_ms: u64,
    /// Origins allowed by CORS (`*` for any); empty: no CORS.
    pub(crate) cors_origins: Vec<String>,
    /// Most sessions at once.
    pub(crate) max_sessions: usize,
}

impl Default for LongPollSection {
    fn default() -> Self {
        let lp = herald::longpoll::LpConfig::default();
        Self {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
            prefix: lp.prefix,
            tls_cert: None,
            tls_key: None,
            linger_ms: u64::try_from(lp.linger.as_millis()).unwrap_or(u64::MAX),
            cors_origins: lp.cors_origins,
            max_sessions: lp.max_sessions,
        }
    }
}

impl PostgresSection {
    /// The store configuration (the URL falls back to `HERALD_DATABASE_URL` when unset here).
    pub(crate) fn pg_config(&self) -> herald::postgres::PgConfig {
        herald::postgres::PgConfig {
            url: self.url.as_ref().map(|s| s.0.clone()),
            schema: self.schema.clone(),
            pool_size: self.pool_size,
            writers: self.writers,
            acquire_timeout: Duration::from_millis(self.acquire_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            batch_max_messages: self.batch_max_messages,
            queue_max_messages: self.queue_max_messages,
            queue_max_bytes: self.queue_max_bytes,
            max_body_bytes: self.max_body_bytes,
            run_migrations: self.run_migrations,
            ..herald::postgres::PgConfig::default()
        }
    }
}

impl QuicSection {
    /// The transport configuration.
    pub(crate) fn quic_config(&self) -> herald::quic::QuicConfig {
        let defaults = herald::quic::QuicConfig::default();
        herald::quic::QuicConfig {
            webtransport_path: self.webtransport.then(|| self.webtransport_path.clone()),
            zero_rtt: self.zero_rtt,
            max_handshakes: self.max_handshakes,
            retry: if self.always_retry { herald::quic::RetryPolicy::Always } else { defaults.retry },
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            ..defaults
        }
    }

    /// The certificate and key files, resolved against the config file they came from.
    pub(crate) fn cert_paths(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.cert_file.as_ref()?.relative(), self.key_file.as_ref()?.relative()))
    }
}

fn serialize_relative_opt<S: Serializer>(p: &Option<RelativePathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => p.serialize_relative(s),
        None => s.serialize_none(),
    }
}

impl LongPollSection {
    /// The transport configuration.
    pub(crate) fn lp_config(&self) -> herald::longpoll::LpConfig {
        herald::longpoll::LpConfig {
            prefix: self.prefix.clone(),
            linger: Duration::from_millis(self.linger_ms),
            cors_origins: self.cors_origins.clone(),
            max_sessions: self.max_sessions,
            ..herald::longpoll::LpConfig::default()
        }
    }

    /// The TLS certificate and key paths, resolved against the config file, when both are set.
    pub(crate) fn tls_paths(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.tls_cert.as_ref()?.relative(), self.tls_key.as_ref()?.relative()))
    }

    fn validate(&self, ws_listen: SocketAddr) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("invalid configuration: longpoll.tls_cert and longpoll.tls_key must be set together".into());
        }
        if self.listen == ws_listen && self.listen.port() != 0 {
            return Err(format!(
                "invalid configuration: longpoll.listen {} is also the WebSocket listener",
                self.listen
            )
            .into());
        }
        self.lp_config().validate().map_err(|e| format!("invalid configuration: longpoll.{e}").into())
    }
}

fn serialize_opt_relative<S: Serializer>(path: &Option<RelativePathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => RelativePathBuf::serialize_relative(p, s),
        None => s.serialize_none(),
    }
}

/// `[auth]`: JWT keys and development tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSection {
    /// The HS256 shared secret (its UTF-8 bytes; at least 32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jwt_hs256_secret: Option<Secret>,
    /// When set, tokens must carry this `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jwt_audience: Option<String>,
    /// Public keys for asymmetric algorithms.
    pub(crate) jwt_keys: Vec<JwtKeySection>,
    /// Development tokens: token -> user id. Never use them in production.
    #[serde(serialize_with = "serialize_redacted_keys")]
    pub(crate) static_tokens: BTreeMap<String, String>,
}

impl AuthSection {
    /// Whether any JWT key (secret or public key) is configured.
    pub(crate) fn has_jwt_key(&self) -> bool {
        self.jwt_hs256_secret.is_some() || !self.jwt_keys.is_empty()
    }
}

/// `[[auth.jwt_keys]]`: one public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtKeySection {
    /// The algorithm the key verifies.
    pub(crate) alg: KeyAlg,
    /// The PEM file holding the public key; a relative path is relative to the config file's directory.
    #[serde(serialize_with = "RelativePathBuf::serialize_relative")]
    pub(crate) pem_file: RelativePathBuf,
    /// The key id tokens select it with (`kid` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kid: Option<String>,
}

impl JwtKeySection {
    /// The PEM file's path, resolved against the config file it came from.
    pub(crate) fn path(&self) -> PathBuf {
        self.pem_file.relative()
    }
}

/// An asymmetric JWT algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KeyAlg {
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

/// A secret string: never printed, serialized as `<redacted>`.
///
/// Deserializes from any scalar, so that an all-digit secret given in an environment variable (which figment
/// reads as a number) still works.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl Secret {
    /// The secret's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Serializes a token -> user map with the tokens replaced by `<redacted #n>`.
fn serialize_redacted_keys<S: Serializer>(map: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = s.serialize_map(Some(map.len()))?;
    for (i, user) in map.values().enumerate() {
        out.serialize_entry(&format!("<redacted #{}>", i + 1), user)?;
    }
    out.end()
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources<'a> {
    /// The TOML file, if any (it must exist).
    pub(crate) file: Option<&'a Path>,
    /// `--listen`, overriding everything else.
    pub(crate) listen: Option<SocketAddr>,
}

/// Whether `key` (an environment variable name without the prefix) names a configuration key.
fn is_config_var(key: &str) -> bool {
    let first = key.split("__").next().unwrap_or_default();
    TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(first))
}

/// The figment: defaults, file, environment, command line.
fn figment(sources: &Sources<'_>) -> Result<Figment, Error> {
    let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
    if let Some(file) = sources.file {
        // Figment silently skips a missing file; a file named on the command line must exist.
        if !file.is_file() {
            return Err(format!("config file {} does not exist or is not a file", file.display()).into());
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).filter(|k| is_config_var(k.as_str())).split("__"));
    if let Some(listen) = sources.listen {
        figment = figment.merge(Serialized::default("listen", listen));
    }
    Ok(figment)
}

/// Renders a figment error with every error it holds, naming the key and where its value came from (the file,
/// or the exact environment variable).
fn figment_error(e: figment::Error) -> Error {
    let messages: Vec<String> = e
        .into_iter()
        .map(|e| {
            if e.path.is_empty() {
                return e.kind.to_string();
            }
            let key = e.path.join(".");
            let origin = match &e.metadata {
                Some(md) if md.name.contains("environment variable") => {
                    format!("environment variable {ENV_PREFIX}{}", e.path.join("__").to_uppercase())
                }
                Some(md) => match &md.source {
                    Some(source) => format!("{source}"),
                    None => md.name.to_string(),
                },
                None => "the configuration".to_owned(),
            };
            format!("{} for key `{key}` (in {origin})", e.kind)
        })
        .collect();
    format!("invalid configuration: {}", messages.join("; ")).into()
}

impl ServerConfig {
    /// Loads and validates the configuration.
    pub(crate) fn load(sources: &Sources<'_>) -> Result<Self, Error> {
        let config: Self = figment(sources)?.extract().map_err(figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    fn validate(&self) -> Result<(), Error> {
        if !STORES.contains(&self.store.as_str()) {
            let known: Vec<String> = STORES.iter().map(|s| format!("store = {s:?}")).collect();
            return Err(format!(
                "invalid configuration: store = {:?} is not available; this build has {}",
                self.store,
                known.join(", ")
            )
            .into());
        }
        if self.store == POSTGRES_STORE {
            let pg = self.postgres.pg_config();
            pg.validate().map_err(|e| format!("invalid configuration: [postgres]: {e}"))?;
            pg.resolved_url().map_err(|_| {
                "invalid configuration: store = \"postgres\" needs postgres.url (or HERALD_POSTGRES__URL) or \
                 HERALD_DATABASE_URL"
            })?;
        }
        if self.store == SQLITE_STORE && self.data_dir.as_os_str().is_empty() {
            return Err("invalid configuration: data_dir must name a directory for the SQLite store".into());
        }
        let ws = &self.websocket;
        if !ws.path.starts_with('/') {
            return Err(format!("invalid configuration: websocket.path {:?} must start with '/'", ws.path).into());
        }
        if ws.path == crate::serve::HEALTH_PATH {
            return Err(format!("invalid configuration: websocket.path cannot be {}", crate::serve::HEALTH_PATH).into());
        }
        for (name, value) in [
            ("read_buffer_size", ws.read_buffer_size),
            ("write_buffer_size", ws.write_buffer_size),
            ("max_write_buffer_size", ws.max_write_buffer_size),
        ] {
            if value == 0 {
                return Err(format!("invalid configuration: websocket.{name} must be greater than 0").into());
            }
        }
        if let Some(secret) = &self.auth.jwt_hs256_secret
            && secret.as_bytes().len() < MIN_SECRET_BYTES
        {
            return Err(format!(
                "invalid configuration: auth.jwt_hs256_secret is {} bytes long, at least {MIN_SECRET_BYTES} are \
                 required",
                secret.as_bytes().len()
            )
            .into());
        }
        self.telemetry.validate(&[crate::serve::HEALTH_PATH, &ws.path])?;
        let quic = &self.quic;
        if quic.cert_file.is_some() != quic.key_file.is_some() {
            return Err("invalid configuration: quic.cert_file and quic.key_file go together (or neither, for a \
                        generated development certificate)"
                .into());
        }
        if quic.webtransport && !quic.webtransport_path.starts_with('/') {
            return Err(format!(
                "invalid configuration: quic.webtransport_path {:?} must start with '/'",
                quic.webtransport_path
            )
            .into());
        }
        if quic.max_handshakes == 0 {
            return Err("invalid configuration: quic.max_handshakes must be greater than 0".into());
        }
        self.longpoll.validate(self.listen)?;
        let limits = &self.hub.limits;
        if limits.max_frame_bytes == 0 || limits.max_body_bytes == 0 {
            return Err("invalid configuration: hub.limits.max_frame_bytes and max_body_bytes must be > 0".into());
        }
        if let Some(rate) = &self.hub.rate_limit
            && !(rate.per_second.is_finite() && rate.per_second > 0.0 && rate.burst > 0)
        {
            return Err("invalid configuration: hub.rate_limit needs per_second > 0 and burst > 0".into());
        }
        Ok(())
    }

    /// The SQLite database file: `herald.db` in `data_dir`.
    pub(crate) fn database_path(&self) -> PathBuf {
        self.data_dir.join(SQLITE_FILE)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub(crate) fn to_redacted_toml(&self) -> Result<String, Error> {
        Ok(toml::to_string(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_print() {
        let config = ServerConfig::default();
        config.validate().expect("valid");
        let text = config.to_redacted_toml().expect("toml");
        assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
        assert!(text.contains("max_frame_bytes = 65536"), "{text}");
        // What is printed parses back.
        let back: ServerConfig = toml::from_str(&text).expect("round trip");
        assert_eq!(back.listen, config.listen);
    }

    #[test]
    fn secrets_are_redacted() {
        let mut config = ServerConfig::default();
        config.auth.jwt_hs256_secret = Some(Secret("a-very-secret-secret-of-many-bytes".into()));
        config.auth.static_tokens.insert("tok-alice-secret".into(), "alice".into());
        let text = config.to_redacted_toml().expect("toml");
        assert!(!text.contains("a-very-secret"), "{text}");
        assert!(!text.contains("tok-alice"), "{text}");
        assert!(text.contains("<redacted #1>\" = \"alice\""), "{text}");
        assert!(!format!("{config:?}").contains("a-very-secret"));
    }

    #[test]
    fn env_filter_takes_only_config_keys() {
        assert!(is_config_var("LISTEN"));
        assert!(is_config_var("hub__limits__max_frame_bytes"));
        assert!(is_config_var("AUTH__JWT_HS256_SECRET"));
        assert!(!is_config_var("REQUIRE_SERVICES"));
        assert!(!is_config_var("LOG_FORMAT"));
        assert!(!is_config_var("HUBX"));
    }

    #[test]
    fn other_stores_are_refused_clearly() {
        let config = ServerConfig { store: "cassandra".into(), ..ServerConfig::default() };
        let e = config.validate().expect_err("refused").to_string();
        assert!(
            e.contains("\"cassandra\"") && e.contains("store = \"memory\"") && e.contains("store = \"sqlite\""),
            "{e}"
        );
        let config = ServerConfig { data_dir: PathBuf::new(), ..ServerConfig::default() };
        assert!(config.validate().expect_err("refused").to_string().contains("data_dir"));
        // An empty data_dir is fine with the memory store, which does not use it.
        let config = ServerConfig { store: MEMORY_STORE.into(), data_dir: PathBuf::new(), ..ServerConfig::default() };
        config.validate().expect("valid");
    }

    #[test]
    fn sqlite_is_the_default_with_a_data_dir() {
        let config = ServerConfig::default();
        assert_eq!(config.store, SQLITE_STORE);
        assert_eq!(config.database_path(), Path::new(DEFAULT_DATA_DIR).join(SQLITE_FILE));
        let text = config.to_redacted_toml().expect("toml");
        assert!(text.contains("store = \"sqlite\"") && text.contains("data_dir = \"./herald-data\""), "{text}");
        assert!(is_config_var("DATA_DIR"));
    }

    #[test]
    fn short_secrets_are_refused() {
        let mut config = ServerConfig::default();
        config.auth.jwt_hs256_secret = Some(Secret("short".into()));
        assert!(config.validate().expect_err("refused").to_string().contains("at least 32"));
    }

    #[test]
    fn quic_section_is_checked() {
        let mut config = ServerConfig::default();
        assert!(config.quic.enabled, "QUIC is served by default");
        assert_eq!(config.quic.quic_config().webtransport_path.as_deref(), Some("/wt"));
        config.quic.cert_file = Some(RelativePathBuf::from("cert.pem"));
        assert!(config.validate().expect_err("key missing").to_string().contains("quic.key_file"));
        config.quic.cert_file = None;
        config.quic.webtransport_path = "wt".into();
        assert!(config.validate().expect_err("bad path").to_string().contains("webtransport_path"));
        config.quic.webtransport = false;
        config.validate().expect("the path is unused without webtransport");
        assert_eq!(config.quic.quic_config().webtransport_path, None);
    }

    #[test]
    fn longpoll_section_is_on_by_default_and_checked() {
        let config = ServerConfig::default();
        assert!(config.longpoll.enabled);
        assert_eq!(config.longpoll.listen.to_string(), "127.0.0.1:8081");
        let text = config.to_redacted_toml().expect("toml");
        assert!(text.contains("[longpoll]"), "{text}");
        let text = "[longpoll]\nenabled = true\ntls_cert = \"cert.pem\"\nlinger_ms = 5000\ncors_origins = [\"*\"]\n";
        let mut config: ServerConfig = Figment::from(Serialized::defaults(ServerConfig::default()))
            .merge(Toml::string(text))
            .extract()
            .expect("parses");
        assert_eq!(config.longpoll.lp_config().linger, Duration::from_secs(5));
        let e = config.validate().expect_err("key missing").to_string();
        assert!(e.contains("tls_key"), "{e}");
        config.longpoll.tls_cert = None;
        config.validate().expect("valid without TLS");
        config.longpoll.listen = config.listen;
        assert!(config.validate().expect_err("same port").to_string().contains("longpoll.listen"));
        config.longpoll.listen = "127.0.0.1:0".parse().expect("addr");
        config.longpoll.linger_ms = 0;
        assert!(config.validate().expect_err("zero linger").to_string().contains("longpoll.linger"));
    }

    #[test]
    fn postgres_section() {
        let config: ServerConfig = toml::from_str(
            "store = \"postgres\"\n[postgres]\nurl = \"postgres://u:pw-secret@db/herald\"\nschema = \"chat\"\n\
             pool_size = 3\nwrite_timeout_ms = 2500\n",
        )
        .expect("parses");
        config.validate().expect("valid");
        let pg = config.postgres.pg_config();
        assert_eq!(pg.url.as_deref(), Some("postgres://u:pw-secret@db/herald"));
        assert_eq!((pg.schema.as_str(), pg.pool_size, pg.write_timeout), ("chat", 3, Duration::from_millis(2500)));
        let text = config.to_redacted_toml().expect("toml");
        assert!(!text.contains("pw-secret") && text.contains("schema = \"chat\""), "{text}");
        assert!(!format!("{config:?}").contains("pw-secret"));

        let bad = ServerConfig {
            store: POSTGRES_STORE.into(),
            postgres: PostgresSection { schema: "No-Good".into(), ..config.postgres.clone() },
            ..ServerConfig::default()
        };
        assert!(bad.validate().expect_err("refused").to_string().contains("No-Good"));
        assert!(toml::from_str::<ServerConfig>("[postgres]\nbogus = 1\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn numeric_secrets_deserialize() {
        let s: Secret = serde_json::from_str("12345678901234567890").expect("number");
        assert_eq!(s.0, "12345678901234567890");
        let s: Secret = serde_json::from_str("\"abc\"").expect("string");
        assert_eq!(s.0, "abc");
    }
}
