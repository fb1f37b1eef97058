//! Client sockets for many connections: each bound to a 127.0.0.x source address before it connects (one
//! source address has only ~28,000 ephemeral ports toward one server port), with small WebSocket buffers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// Boxed error of the load tools.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The source address of client connection `i`: `127.0.0.(2 + i % 250)`.
pub fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8))
}

/// Opens TCP connection number `i` to `server` from [`source_ip`]`(i)` (for a loopback server; other servers
/// get an unbound socket).
pub async fn tcp(server: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let socket = if server.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if server.ip().is_loopback() && server.is_ipv4() {
        socket.bind(SocketAddr::new(source_ip(i), 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The WebSocket settings of load clients: a 4 KiB read buffer (tungstenite's default, 128 KiB, would cost
/// GiBs over thousands of connections) and no write buffering beyond one frame.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// Opens WebSocket connection number `i` to `ws://server{path_and_query}` (30 s at most).
pub async fn websocket(server: SocketAddr, path_and_query: &str, i: usize) -> Result<Ws, Error> {
    let open = async {
        let stream = tcp(server, i).await?;
        let url = format!("ws://{server}{path_and_query}");
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
        Ok::<_, Error>(ws)
    };
    tokio::time::timeout(Duration::from_secs(30), open).await.map_err(|_| "WebSocket connect timed out after 30 s")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_cycle_over_250() {
        assert_eq!(source_ip(0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(249), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 251)));
        assert_eq!(source_ip(250), source_ip(0));
    }

    #[tokio::test]
    async fn binds_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(tcp(addr, 7), listener.accept());
        let (_server_side, peer) = accepted.expect("accept");
        assert_eq!(client.expect("connect").local_addr().expect("local").ip(), source_ip(7));
        assert_eq!(peer.ip(), source_ip(7));
    }
}
