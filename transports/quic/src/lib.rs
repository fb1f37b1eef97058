//! Herald's QUIC transport: native QUIC and WebTransport over HTTP/3 on one UDP port, on quinn.
//!
//! - **Native QUIC** (ALPN `herald/1`): the client opens one bidirectional stream per session and sends a
//!   stream header, then protocol frames; the server answers on the same stream.
//! - **WebTransport** (ALPN `h3`, for browsers): a WebTransport session at [`QuicConfig::webtransport_path`]
//!   (`/wt` by default); the browser opens one bidirectional stream that carries exactly the same bytes.
//!
//! Framing on the stream: every frame is a 4-byte big-endian length and that many bytes of the JSON protocol
//! (`docs/protocol.md`); a zero length is a keep-alive. The first unit the client sends is the stream header,
//! either empty or `{"token":"<bearer token>"}`. A token can also come in the WebTransport URL
//! (`?token=`), or later in an `auth` command. The session ends with a QUIC application close (native) or a
//! WebTransport session close carrying the same codes as WebSocket close frames
//! ([`CloseReason::code`](herald_core::driver::CloseReason::code)).
//!
//! All protocol logic runs in `herald_core::driver`; this crate only moves frames.
//!
//! ```no_run
//! # async fn demo(hub: herald_core::Hub) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use herald_quic::{QuicConfig, QuicTransport, ServerCertificate};
//!
//! // A development certificate (browsers pin it by hash); in production use `from_pem_files`.
//! let cert = ServerCertificate::self_signed_dev(Duration::from_secs(13 * 24 * 3600))?;
//! println!("serverCertificateHashes value (hex): {}", cert.leaf_hash());
//! let bound = QuicTransport::new("127.0.0.1:8443".parse()?, QuicConfig::default(), cert).bind()?;
//! println!("QUIC on udp://{}", bound.local_addr()?);
//! bound.serve(hub, Box::pin(async { let _ = tokio::signal::ctrl_c().await; })).await?;
//! # Ok(()) }
//! ```
//!
//! Clients for tests, load generation and Rust applications are in [`client`]; feature `testkit` implements
//! the protocol conformance harness over both flavours.

use std::time::Duration;

mod cert;
pub mod client;
mod early;
mod framing;
mod server;
mod stream;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use cert::{CertError, CertHash, MAX_PINNED_VALIDITY, ServerCertificate};
pub use early::{REPLAY_SAFE, replay_safe};
pub use server::{BoundQuic, QuicStats, QuicTransport};

/// The ALPN of native Herald QUIC sessions.
pub const ALPN_NATIVE: &[u8] = b"herald/1";

/// The ALPN of HTTP/3 (WebTransport sessions).
pub const ALPN_H3: &[u8] = b"h3";

/// Installs rustls' aws-lc-rs crypto provider as the process default, once. Idempotent, and harmless if
/// another part of the application installed the same provider first. This crate's own configurations name
/// the provider explicitly; the default matters for libraries that look it up.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
    });
}

/// When the server asks a client to prove its address (a QUIC Retry, one extra round trip) before it
/// spends memory on a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Never: every attempt starts a handshake (still bounded by [`QuicConfig::max_handshakes`]).
    Never,
    /// Always, for attempts whose address is not validated yet.
    Always,
    /// Once this many handshakes are in progress (a flood is likely).
    AboveHandshakes(usize),
}

/// QUIC transport settings.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// The WebTransport session path; `None` disables WebTransport (and the `h3` ALPN). Default `/wt`.
    pub webtransport_path: Option<String>,
    /// Accept 0-RTT data from resuming native clients. Until the handshake completes only replay-safe
    /// commands ([`REPLAY_SAFE`]) are processed; later ones wait. Default `false`.
    pub zero_rtt: bool,
    /// Most handshakes in progress at once; attempts above it are refused. Default 256.
    pub max_handshakes: usize,
    /// Address validation. Default [`RetryPolicy::AboveHandshakes`]`(32)`.
    pub retry: RetryPolicy,
    /// Most connection attempts quinn queues before this transport looks at them. Default 1024.
    pub max_incoming: usize,
    /// Bytes buffered per queued connection attempt (0-RTT data that arrives early). Default 16 KiB.
    pub incoming_buffer_bytes: u64,
    /// Time from the first packet to a started session (handshake, stream, header). Default 10 s.
    pub handshake_timeout: Duration,
    /// QUIC idle timeout: a peer silent this long is gone. Default 90 s (the protocol's own idle timeout,
    /// 60 s by default, usually acts first).
    pub idle_timeout: Duration,
    /// Flow-control window per stream: the most unread bytes a client can have in flight. Default 64 KiB.
    pub stream_receive_window: u32,
    /// Flow-control window per connection. Default 96 KiB.
    pub receive_window: u32,
    /// Most unacknowledged bytes in flight to one client. Default 512 KiB.
    pub send_window: u64,
    /// How long shutdown waits for sessions to close. Default 5 s.
    pub shutdown_grace: Duration,
    /// Receive and send buffer asked of the kernel for the UDP socket. All connections share one socket, and
    /// a datagram that finds the receive buffer full is dropped (a loss the clients must recover from), so the
    /// kernel's default (about 208 KiB on Linux) is too small under load. The kernel caps it
    /// (`net.core.rmem_max` / `wmem_max`). Default 4 MiB.
    pub socket_buffer_bytes: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            webtransport_path: Some("/wt".into()),
            zero_rtt: false,
            max_handshakes: 256,
            retry: RetryPolicy::AboveHandshakes(32),
            max_incoming: 1024,
            incoming_buffer_bytes: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            stream_receive_window: 64 * 1024,
            receive_window: 96 * 1024,
            send_window: 512 * 1024,
            shutdown_grace: Duration::from_secs(5),
            socket_buffer_bytes: 4 * 1024 * 1024,
        }
    }
}
