//! The README's embedding example, run: a Hub on the memory store with JWT auth, mounted in an axum app; the
//! application publishes to a user's channel and the user's client receives it.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use herald::core::Hub;
use herald::core::auth::{JwtAuth, JwtKey, TokenClaims, mint_hs256};
use herald::core::id::{ChannelId, UserId};
use herald::memory::MemoryStore;
use herald::websocket::{WsConfig, router};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"the embedding example's 32+ byte secret";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The README example, with the listener passed in (port 0 here).
async fn build_app() -> Result<(axum::Router, Hub)> {
    let auth = JwtAuth::new(JwtKey::Hs256(SECRET.to_vec()))?;
    let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(auth)).build();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "my app" }))
        .merge(router(hub.clone(), WsConfig::default())); // GET /ws
    Ok((app, hub))
}

async fn publish_shipped(hub: &Hub) -> Result<()> {
    let alice = UserId::new("alice")?;
    let body = serde_json::value::to_raw_value(&serde_json::json!({ "text": "Your order shipped" }))?;
    hub.publish(ChannelId::user(&alice), UserId::new("shop")?, body.into()).await?;
    Ok(())
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: StreamExt<Item = std::result::Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await;
        match next.expect("a frame in time").expect("open").expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn embedded_hub_in_an_axum_app() -> Result<()> {
    let (app, hub) = build_app().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let exp = herald::core::model::now_millis() / 1000 + 600;
    let token = mint_hs256(SECRET, &TokenClaims { sub: "alice".into(), exp: Some(exp), ..TokenClaims::default() })?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}")).await?;
    assert_eq!(next_json(&mut ws).await["user"], "alice");
    ws.send(Message::text(r#"{"type":"sub","id":1,"channel":"user:alice","since":0}"#)).await?;
    assert_eq!(next_json(&mut ws).await["type"], "reply");

    publish_shipped(&hub).await?;
    let msg = next_json(&mut ws).await;
    assert_eq!((msg["type"].as_str(), msg["from"].as_str()), (Some("message"), Some("shop")), "{msg}");
    assert_eq!(msg["body"]["text"], "Your order shipped");
    Ok(())
}
