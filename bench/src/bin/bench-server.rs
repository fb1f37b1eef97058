//! The server under test for `herald-load`: a hub over a chosen store (`--store`, memory by default),
//! authenticating the testkit's HS256 tokens (`TestTokens`), served by the WebSocket transport on `127.0.0.1`,
//! and on request by the other transports on their own loopback ports, all on the same hub:
//!
//! - `--quic 127.0.0.1:0`: native QUIC and WebTransport (`/wt`) on one UDP port, with a self-signed development
//!   certificate (clients pin its SHA-256 hash, as browsers' `serverCertificateHashes`);
//! - `--longpoll 127.0.0.1:0`: HTTP long-poll and SSE (`/lp`, cleartext HTTP/1.1 and h2c).
//!
//! It prints `quic <udp addr> <certificate sha-256 hex>` and `longpoll <addr>` for those, then
//! `listening <addr>` (the WebSocket address) once every transport accepts connections, and stops when its
//! standard input closes (the load tool holds it) or on Ctrl-C. Every setting not given by a flag is the
//! default of `HubConfig` / `WsConfig`, except the idle timeout, raised to an hour: the idle clients of a
//! memory measurement send nothing. Benchmark loads need some limits raised: `--no-rate-limit` (one bench user
//! sends thousands of messages a second), `--outbound-max-frames`, `--max-subscriptions`. The long-poll server's session and connection limits are raised to 20,000
//! (`--lp-max-sessions`): an idle-memory run holds 10,000 sessions, `LpConfig`'s default limit.
//!
//! Set-up for the scenarios: `--group-members N` creates `group:bench` with users u0..u{N-1},
//! `--topic-members N` creates `topic:bench` with the same users as readers.
//!
//! Application API for the load tool (same listener): `POST /admin/publish?channel=<id>` with a JSON body
//! publishes it as a `system` message from user `app` through `Hub::publish` (what an application backend
//! does), answering `200 {"seq":N}`, or `400`/`503` with the error text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;
use herald::core::id::{ChannelId, UserId};
use herald::core::store::StoreError;
use herald::core::testkit::protocol::TestTokens;
use herald::longpoll::{LongPollTransport, LpConfig};
use herald::quic::{QuicConfig, QuicTransport, ServerCertificate};
use herald::websocket::{WebSocketTransport, WsConfig};
use herald::{Hub, HubConfig};
use herald_bench::store::StoreKind;
use herald_bench::{BENCH_GROUP, BENCH_TOPIC, user_name};
use serde_json::value::RawValue;
use tokio::io::AsyncReadExt;

/// Herald benchmark server (WebSocket, test tokens).
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The store.
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    store: StoreKind,
    /// The store's location (file or database URL), for stores that need one.
    #[arg(long)]
    store_url: Option<String>,
    /// `WsConfig::read_buffer_size` (default: `WsConfig`'s). No effect since the WebSocket codec is Herald's own
    /// (it keeps no read buffer); accepted so that older commands still run.
    #[arg(long)]
    read_buffer: Option<usize>,
    /// `WsConfig::write_buffer_size` (default: `WsConfig`'s). No effect, as `--read-buffer`.
    #[arg(long)]
    write_buffer: Option<usize>,
    /// `HubConfig::idle_timeout`, in milliseconds.
    #[arg(long, default_value_t = 3_600_000)]
    idle_timeout_ms: u64,
    /// `HubConfig::heartbeat_interval`, in milliseconds (default: `HubConfig`'s).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Disable the per-user rate limit.
    #[arg(long)]
    no_rate_limit: bool,
    /// `HubConfig::write_coalescing`, in milliseconds; 0 disables it (default: `HubConfig`'s).
    #[arg(long)]
    write_coalescing_ms: Option<u64>,
    /// `Limits::max_subscriptions` (default: `Limits`'s).
    #[arg(long)]
    max_subscriptions: Option<usize>,
    /// `Limits::outbound_max_frames`: a session's queue (default: `Limits`'s).
    #[arg(long)]
    outbound_max_frames: Option<usize>,
    /// `Limits::outbound_max_bytes` (default: `Limits`'s).
    #[arg(long)]
    outbound_max_bytes: Option<usize>,
    /// Create `group:bench` with the users u0..u{N-1} as members before listening.
    #[arg(long, default_value_t = 0)]
    group_members: usize,
    /// Create `topic:bench` with the users u0..u{N-1} as readers before listening.
    #[arg(long, default_value_t = 0)]
    topic_members: usize,
    /// Also serve native QUIC and WebTransport on this UDP address (development certificate).
    #[arg(long)]
    quic: Option<SocketAddr>,
    /// Also serve HTTP long-poll and SSE on this address (cleartext: HTTP/1.1 and h2c).
    #[arg(long)]
    longpoll: Option<SocketAddr>,
    /// `LpConfig::max_sessions` and `LpConfig::max_connections` of the long-poll server.
    #[arg(long, default_value_t = 20_000)]
    lp_max_sessions: usize,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = args.workers {
        rt.worker_threads(w);
    }
    rt.enable_all().build()?.block_on(serve(args))
}

fn users(n: usize) -> Result<Vec<UserId>, Box<dyn std::error::Error>> {
    Ok((0..n).map(|i| UserId::new(user_name(i))).collect::<Result<Vec<_>, _>>()?)
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = HubConfig { idle_timeout: Duration::from_millis(args.idle_timeout_ms), ..HubConfig::default() };
    if let Some(ms) = args.heartbeat_ms {
        config.heartbeat_interval = Duration::from_millis(ms);
    }
    if args.no_rate_limit {
        config.rate_limit = None;
    }
    if let Some(ms) = args.write_coalescing_ms {
        config.write_coalescing = Duration::from_millis(ms);
    }
    if let Some(n) = args.max_subscriptions {
        config.limits.max_subscriptions = n;
    }
    if let Some(n) = args.outbound_max_frames {
        config.limits.outbound_max_frames = n;
    }
    if let Some(n) = args.outbound_max_bytes {
        config.limits.outbound_max_bytes = n;
    }
    let store = herald_bench::store::open(args.store, args.store_url.as_deref()).await?;
    let hub = Hub::builder(store, Arc::new(TestTokens::default().auth())).config(config).build();
    if args.group_members > 0 {
        let members = users(args.group_members)?;
        hub.create_channel(ChannelId::new(BENCH_GROUP)?, members[0].clone(), &members).await?;
    }
    if args.topic_members > 0 {
        let members = users(args.topic_members)?;
        hub.create_channel(ChannelId::new(BENCH_TOPIC)?, UserId::new("app")?, &members).await?;
    }

    let mut ws = WsConfig::default();
    if let Some(n) = args.read_buffer {
        ws.read_buffer_size = n;
    }
    if let Some(n) = args.write_buffer {
        ws.write_buffer_size = n;
    }
    let admin = Router::new().route("/admin/publish", post(publish)).with_state(hub.clone());
    let bound = WebSocketTransport::new(args.listen, ws).with_routes(admin).bind().await?;
    let quic = match args.quic {
        Some(addr) => {
            herald::quic::install_crypto_provider();
            let cert = ServerCertificate::self_signed_dev(Duration::from_secs(13 * 24 * 3600))?;
            let q = QuicTransport::new(addr, QuicConfig::default(), cert).bind()?;
            println!("quic {} {}", q.local_addr()?, q.certificate().leaf_hash().hex());
            Some(q)
        }
        None => None,
    };
    let longpoll = match args.longpoll {
        Some(addr) => {
            let config = LpConfig {
                max_sessions: args.lp_max_sessions,
                max_connections: args.lp_max_sessions,
                ..LpConfig::default()
            };
            let lp = LongPollTransport::new(addr, config).bind().await?;
            println!("longpoll {}", lp.local_addr()?);
            Some(lp)
        }
        None => None,
    };
    println!("listening {}", bound.local_addr()?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    };
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        let stdin_closed = async { while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {} };
        tokio::select! {
            () = stdin_closed => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop_tx.send(true);
    });
    let quic_served = {
        let (hub, stop) = (hub.clone(), stopped());
        async move {
            match quic {
                Some(q) => q.serve(hub, stop).await,
                None => Ok(()),
            }
        }
    };
    let lp_served = {
        let (hub, stop) = (hub.clone(), stopped());
        async move {
            match longpoll {
                Some(lp) => lp.serve(hub, stop).await,
                None => Ok(()),
            }
        }
    };
    let (ws_result, quic_result, lp_result) = tokio::join!(bound.serve(hub, stopped()), quic_served, lp_served);
    ws_result?;
    quic_result?;
    lp_result?;
    Ok(())
}

#[derive(serde::Deserialize)]
struct PublishQuery {
    channel: String,
}

/// `POST /admin/publish?channel=…`: the application publishing a system message.
async fn publish(State(hub): State<Hub>, Query(q): Query<PublishQuery>, body: String) -> (StatusCode, String) {
    let channel = match ChannelId::new(&q.channel) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad channel: {e}")),
    };
    let body: Arc<RawValue> = match RawValue::from_string(body) {
        Ok(b) => Arc::from(b),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
    };
    let sender = match UserId::new("app") {
        Ok(u) => u,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match hub.publish(channel, sender, body).await {
        Ok(m) => (StatusCode::OK, format!("{{\"seq\":{}}}", m.seq)),
        Err(e @ StoreError::ChannelNotFound(_)) => (StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
