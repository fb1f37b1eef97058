//! The server under test for `herald-load`: a hub over the memory store, authenticating the testkit's HS256
//! tokens (`TestTokens`), served by the WebSocket transport on `127.0.0.1`.
//!
//! It prints `listening <addr>` on its first stdout line once it accepts connections, and stops when its
//! standard input closes (the load tool holds it) or on Ctrl-C. Every setting not given by a flag is the
//! default of `HubConfig` / `WsConfig`, except the idle timeout, raised to an hour: the idle clients of a
//! memory measurement send nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use herald::core::id::{ChannelId, UserId};
use herald::core::testkit::protocol::TestTokens;
use herald::memory::MemoryStore;
use herald::websocket::{WebSocketTransport, WsConfig};
use herald::{Hub, HubConfig};
use herald_bench::{BENCH_GROUP, user_name};
use tokio::io::AsyncReadExt;

/// Herald benchmark server (WebSocket, memory store, test tokens).
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// `WsConfig::read_buffer_size` (default: `WsConfig`'s).
    #[arg(long)]
    read_buffer: Option<usize>,
    /// `WsConfig::write_buffer_size` (default: `WsConfig`'s).
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
    /// Create `group:bench` with the users u0..u{N-1} as members before listening.
    #[arg(long, default_value_t = 0)]
    group_members: usize,
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

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = HubConfig { idle_timeout: Duration::from_millis(args.idle_timeout_ms), ..HubConfig::default() };
    if let Some(ms) = args.heartbeat_ms {
        config.heartbeat_interval = Duration::from_millis(ms);
    }
    if args.no_rate_limit {
        config.rate_limit = None;
    }
    let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(TestTokens::default().auth())).config(config).build();
    if args.group_members > 0 {
        let members = (0..args.group_members).map(|i| UserId::new(user_name(i))).collect::<Result<Vec<_>, _>>()?;
        hub.create_channel(ChannelId::new(BENCH_GROUP)?, members[0].clone(), &members).await?;
    }

    let mut ws = WsConfig::default();
    if let Some(n) = args.read_buffer {
        ws.read_buffer_size = n;
    }
    if let Some(n) = args.write_buffer {
        ws.write_buffer_size = n;
    }
    let bound = WebSocketTransport::new(args.listen, ws).bind().await?;
    println!("listening {}", bound.local_addr()?);

    let shutdown = Box::pin(async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        let stdin_closed = async { while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {} };
        tokio::select! {
            () = stdin_closed => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    bound.serve(hub, shutdown).await?;
    Ok(())
}
