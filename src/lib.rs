//! # Herald
//!
//! Instant messaging and push notifications in one Rust framework. This facade re-exports the parts behind
//! cargo features, like `sqlx` does:
//!
//! | feature | crate | what |
//! |---|---|---|
//! | (always) | [`core`] | model, traits, protocol engine, hub, tower layers, JWT auth |
//! | `memory` (default) | [`memory`] | in-memory store |
//! | `postgres` | `postgres` | PostgreSQL store with group commit (`herald-postgres`) |
//! | `sqlite` | `sqlite` | embedded durable store on SQLite (`herald-sqlite`) |
//! | `websocket` (default) | [`websocket`] | WebSocket transport on axum |
//! | `quic` | `quic` | native QUIC and WebTransport transport on quinn |
//! | `longpoll` | `longpoll` | HTTP long-poll and SSE transport (HTTP/1.1, HTTP/2, TLS, h2c) |
//! | `testkit` | `core::testkit` | conformance suites and the in-process transport |
//!
//! ```no_run
//! use std::sync::Arc;
//! use herald::core::{Hub, auth::{JwtAuth, JwtKey}};
//! use herald::memory::MemoryStore;
//! use herald::websocket::{WebSocketTransport, WsConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = JwtAuth::new(JwtKey::Hs256(b"a secret of at least thirty-two bytes!".to_vec()))?;
//! let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(auth)).build();
//! let server = WebSocketTransport::new("127.0.0.1:8080".parse()?, WsConfig::default()).bind().await?;
//! server.serve(hub, Box::pin(async { let _ = tokio::signal::ctrl_c().await; })).await?;
//! # Ok(()) }
//! ```

pub use herald_core as core;
#[cfg(feature = "longpoll")]
pub use herald_longpoll as longpoll;
#[cfg(feature = "memory")]
pub use herald_memory as memory;
#[cfg(feature = "postgres")]
pub use herald_postgres as postgres;
#[cfg(feature = "quic")]
pub use herald_quic as quic;
#[cfg(feature = "sqlite")]
pub use herald_sqlite as sqlite;
#[cfg(feature = "websocket")]
pub use herald_websocket as websocket;

pub use herald_core::{Auth, Broker, Hub, HubConfig, PushProvider, Status, Store, Transport};
