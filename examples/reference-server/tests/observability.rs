//! Observability of the real `herald-server` binary: Prometheus metrics after real WebSocket traffic, and
//! OpenTelemetry spans exported over OTLP/HTTP to a local receiver, parented by the client's W3C `traceparent`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use futures_util::{SinkExt, StreamExt};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use common::Server;

const SECRET: &str = "an-observability-test-secret-of-48-bytes!!!!!!!!";

impl Server {
    /// Starts the server with `config` written to a scratch file (`--config`) and waits until it listens.
    fn with_config(name: &str, config: &str) -> Self {
        let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("herald-observability-{}-{name}.toml", std::process::id()));
        std::fs::write(&file, config).expect("write the config file");
        Server::start(&["--config", file.to_str().expect("a UTF-8 path")], &[])
    }

    /// Scrapes `/metrics`.
    fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert!(status.contains(" 200 "), "{status}");
        Metrics::parse(&body)
    }

    /// Scrapes `/metrics` until `check` holds (values that change after the client saw the effect, such as a
    /// connection closing); panics with the last scrape after 10 s.
    async fn metrics_until(&self, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics();
            if check(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "metrics never showed {what}:\n{}", m.text);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A Prometheus text scrape: `name{sorted labels}` -> value.
struct Metrics {
    values: HashMap<String, f64>,
    text: String,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut values = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut sorted: BTreeMap<&str, &str> = BTreeMap::new();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                sorted.insert(k, v.trim_matches('"'));
            }
            values.insert(key(name, &sorted.into_iter().collect::<Vec<_>>()), value);
        }
        Self { values, text: text.to_owned() }
    }

    /// The value of a series, 0 when absent (a counter never incremented is not exported).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sorted = labels.to_vec();
        sorted.sort();
        self.values.get(&key(name, &sorted)).copied().unwrap_or(0.0)
    }

    /// The sum of every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.values
            .iter()
            .filter(|(k, _)| {
                k.split_once('{').is_some_and(|(n, l)| {
                    n == name && labels.iter().all(|(lk, lv)| l.split(',').any(|p| p == format!("{lk}={lv}")))
                })
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects with a token and an optional `traceparent` header on the upgrade request.
async fn connect(addr: SocketAddr, token: &str, traceparent: Option<&str>) -> Ws {
    let mut request = format!("ws://{addr}/ws?token={token}").into_client_request().expect("request");
    if let Some(tp) = traceparent {
        request.headers_mut().insert("traceparent", tp.parse().expect("header value"));
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("connect");
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    let read = async {
        loop {
            match ws.next().await.expect("open").expect("read") {
                Message::Text(t) => return serde_json::from_str::<Value>(t.as_str()).expect("JSON"),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a frame in time")
}

/// Sends `frame` and returns the `reply` or `error` with its id, collecting other events into `events`.
async fn command(ws: &mut Ws, frame: Value, events: &mut Vec<Value>) -> Value {
    let id = frame["id"].clone();
    ws.send(Message::text(frame.to_string())).await.expect("send");
    loop {
        let event = next_json(ws).await;
        if event["id"] == id && (event["type"] == "reply" || event["type"] == "error") {
            return event;
        }
        events.push(event);
    }
}

async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    let read = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(c)) => return c.map(|c| c.code),
                Ok(_) => {}
                Err(e) => panic!("read error before the close frame: {e}"),
            }
        }
        panic!("the connection ended without a close frame");
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a close frame in time")
}

fn config(extra: &str) -> String {
    format!(
        "[auth]\njwt_hs256_secret = \"{SECRET}\"\n[auth.static_tokens]\n\"tok-alice\" = \"alice\"\n\
         \"tok-bob\" = \"bob\"\n{extra}"
    )
}

#[tokio::test]
async fn metrics_count_real_traffic_exactly() {
    let server = Server::with_config("metrics", &config(""));
    let (ws, websocket) = (("transport", "websocket"), ("transport", "websocket"));
    let before = server.metrics();
    assert_eq!(before.get("herald_connections_open", &[ws]), 0.0, "{}", before.text);
    assert!(before.text.contains("# HELP herald_messages_stored_total"), "described:\n{}", before.text);

    let mut alice = connect(server.addr, "tok-alice", None).await;
    let mut bob = connect(server.addr, "tok-bob", None).await;
    let mut events = Vec::new();
    for c in [&mut alice, &mut bob] {
        assert_eq!(next_json(c).await["type"], "hello");
        let reply = command(c, serde_json::json!({"type": "ping", "id": 1}), &mut events).await;
        assert_eq!(reply["type"], "reply", "{reply}");
    }
    let m = server.metrics();
    assert_eq!(m.get("herald_connections_open", &[websocket]), 2.0, "{}", m.text);
    assert_eq!(m.get("herald_connections_opened_total", &[ws]), 2.0, "{}", m.text);

    // Alice follows the direct channel; bob sends three messages and resends one of them.
    let sub = serde_json::json!({"type": "sub", "id": 2, "channel": "dm:alice:bob", "since": 0});
    assert_eq!(command(&mut alice, sub, &mut events).await["type"], "reply");
    for (id, cid) in [(2, "c1"), (3, "c2"), (4, "c3"), (5, "c1")] {
        let send = serde_json::json!({"type": "send", "id": id, "channel": "dm:alice:bob", "cid": cid,
            "body": {"text": format!("message {id}")}});
        let reply = command(&mut bob, send, &mut events).await;
        assert_eq!(reply["type"], "reply", "{reply}");
        assert_eq!(reply["dup"], id == 5, "{reply}");
    }
    // Bad commands: one the stack refuses (not a member), one that does not decode.
    let forbidden = serde_json::json!({"type": "send", "id": 6, "channel": "dm:carol:dave", "body": 1});
    assert_eq!(command(&mut bob, forbidden, &mut events).await["code"], "forbidden");
    let unknown = serde_json::json!({"type": "launch", "id": 7});
    assert_eq!(command(&mut bob, unknown, &mut events).await["code"], "unknown_command");
    // Alice got the three messages live.
    let mut got = 0;
    while got < 3 {
        let e = if events.is_empty() { next_json(&mut alice).await } else { events.remove(0) };
        if e["type"] == "message" {
            got += 1;
        }
    }

    // Everything above was recorded before the replies were sent: exact values, no waiting.
    let m = server.metrics();
    let expect = |name: &str, labels: &[(&str, &str)], value: f64| {
        assert_eq!(m.get(name, labels), value, "{name}{labels:?} in:\n{}", m.text);
    };
    expect("herald_messages_stored_total", &[], 3.0);
    expect("herald_messages_duplicates_total", &[], 1.0);
    expect("herald_commands_total", &[("kind", "ping"), ("status", "ok")], 2.0);
    expect("herald_commands_total", &[("kind", "sub"), ("status", "ok")], 1.0);
    expect("herald_commands_total", &[("kind", "send"), ("status", "ok")], 4.0);
    expect("herald_commands_total", &[("kind", "send"), ("status", "forbidden")], 1.0);
    expect("herald_commands_total", &[("kind", "malformed"), ("status", "unknown_command")], 1.0);
    assert_eq!(m.sum("herald_commands_total", &[]), 9.0, "no other command was counted:\n{}", m.text);
    expect("herald_commands_duration_seconds_count", &[("kind", "send")], 5.0);
    expect("herald_fanout_deliveries_total", &[("event", "message")], 3.0);
    expect("herald_fanout_duration_seconds_count", &[], 3.0);
    expect("herald_fanout_lagged_total", &[], 0.0);
    // The first append finds no channel, creates the direct channel, appends again; the resend appends too.
    expect("herald_store_duration_seconds_count", &[("operation", "append"), ("result", "ok")], 4.0);
    expect("herald_store_duration_seconds_count", &[("operation", "append"), ("result", "not_found")], 1.0);
    expect("herald_store_duration_seconds_count", &[("operation", "ensure_channel"), ("result", "ok")], 1.0);
    expect("herald_connections_open", &[websocket], 2.0);
    assert!(m.text.contains("herald_fanout_duration_seconds_bucket{le=\"0.000001\"}"), "buckets set:\n{}", m.text);

    // A refused token: counted as an authentication failure and a 4001 close.
    let mut mallory = connect(server.addr, "not-a-token", None).await;
    assert_eq!(next_json(&mut mallory).await["type"], "error");
    assert_eq!(close_code(&mut mallory).await, Some(CloseCode::Library(4001)));
    let m = server.metrics();
    assert_eq!(m.get("herald_auth_failures_total", &[("stage", "connect"), ("reason", "unknown")]), 1.0, "{}", m.text);
    assert_eq!(m.get("herald_connections_closed_total", &[ws, ("code", "4001")]), 1.0, "{}", m.text);
    assert_eq!(m.get("herald_connections_opened_total", &[ws]), 3.0, "{}", m.text);

    // A request to the WebSocket path that is not an upgrade.
    let (status, _) = server.get("/ws");
    assert!(!status.contains(" 200 ") && !status.contains(" 101 "), "{status}");
    let m = server.metrics();
    let handshake = [ws, ("reason", "bad_upgrade")];
    assert_eq!(m.get("herald_connections_handshake_failures_total", &handshake), 1.0, "{}", m.text);

    // Alice leaves: the gauge goes down once the server has seen the close.
    alice.close(None).await.expect("close");
    let m = server
        .metrics_until("alice's close", |m| m.get("herald_connections_closed_total", &[ws, ("code", "1000")]) == 1.0)
        .await;
    assert_eq!(m.get("herald_connections_open", &[websocket]), 1.0, "{}", m.text);
    drop(bob);
}

/// The spans one OTLP/HTTP receiver got.
type Received = Arc<Mutex<Vec<Span>>>;

async fn receive_traces(State(received): State<Received>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf trace export");
    let mut spans = received.lock().expect("lock");
    for rs in request.resource_spans {
        let service = rs.resource.iter().flat_map(|r| &r.attributes).find(|a| a.key == "service.name");
        let service = service.and_then(|a| a.value.as_ref()).and_then(|v| v.value.as_ref());
        assert!(matches!(service, Some(AnyValue::StringValue(s)) if s == "herald-test"), "{service:?}");
        spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
    }
    ""
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).and_then(|v| match &v.value {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        Some(AnyValue::IntValue(i)) => Some(i.to_string()),
        _ => None,
    })
}

/// Whether `span` descends from `ancestor` (following parent span ids through `all`).
fn descends_from(span: &Span, ancestor: &Span, all: &[Span]) -> bool {
    let mut parent = span.parent_span_id.clone();
    for _ in 0..32 {
        if parent == ancestor.span_id {
            return true;
        }
        match all.iter().find(|s| s.span_id == parent && s.trace_id == span.trace_id) {
            Some(p) => parent = p.parent_span_id.clone(),
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_follow_the_clients_traceparent_over_otlp() {
    // A local OTLP/HTTP receiver.
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/v1/traces", post(receive_traces)).with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });

    let telemetry = format!("[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"herald-test\"\n");
    let mut server = Server::with_config("otlp", &config(&telemetry));

    // Trace A: the upgrade header of alice's connection. Trace B: a field on one of bob's commands.
    let trace_a = "0af7651916cd43dd8448eb211c80319c";
    let header = format!("00-{trace_a}-b7ad6b7169203331-01");
    let trace_b = "4bf92f3577b34da6a3ce929d0e0e4736";
    let field = format!("00-{trace_b}-00f067aa0ba902b7-01");
    let mut alice = connect(server.addr, "tok-alice", Some(&header)).await;
    let mut bob = connect(server.addr, "tok-bob", None).await;
    let mut events = Vec::new();
    for c in [&mut alice, &mut bob] {
        assert_eq!(next_json(c).await["type"], "hello");
    }
    let sub = serde_json::json!({"type": "sub", "id": 1, "channel": "dm:alice:bob"});
    assert_eq!(command(&mut alice, sub, &mut events).await["type"], "reply");
    let send = serde_json::json!({"type": "send", "id": 2, "channel": "dm:alice:bob", "body": {"text": "traced"},
        "traceparent": field});
    assert_eq!(command(&mut bob, send, &mut events).await["type"], "reply");
    // Without a field and without a header: a new trace.
    let history = serde_json::json!({"type": "history", "id": 3, "channel": "dm:alice:bob"});
    assert_eq!(command(&mut bob, history, &mut events).await["type"], "reply");
    // Without a field on a connection with a header: trace A.
    let send = serde_json::json!({"type": "send", "id": 4, "channel": "dm:alice:bob", "body": {"text": "back"}});
    assert_eq!(command(&mut alice, send, &mut events).await["type"], "reply");

    // Shutdown exports what is still buffered.
    server.signal("TERM");
    let status = server.exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}; stderr:\n{}", server.stderr());
    let spans = received.lock().expect("lock").clone();
    let names: Vec<String> = spans.iter().map(|s| format!("{}@{}", s.name, hex(&s.trace_id))).collect();
    let summary = format!("{} spans: {names:?}\nstderr:\n{}", spans.len(), server.stderr());

    let named = |trace: &str, name: &str| -> Vec<Span> {
        spans.iter().filter(|s| hex(&s.trace_id) == trace && s.name == name).cloned().collect()
    };

    // Trace B: bob's send. Its command span's parent is the client's span.
    let commands = named(trace_b, "command");
    assert_eq!(commands.len(), 1, "{summary}");
    let command_b = &commands[0];
    assert_eq!(hex(&command_b.parent_span_id), "00f067aa0ba902b7", "{summary}");
    assert_eq!(attribute(command_b, "kind").as_deref(), Some("send"), "{summary}");
    assert_eq!(attribute(command_b, "traceparent").as_deref(), Some(field.as_str()), "{summary}");
    let appends = named(trace_b, "store.append");
    assert!(!appends.is_empty(), "{summary}");
    for append in &appends {
        assert!(descends_from(append, command_b, &spans), "store.append outside the command: {summary}");
        assert_eq!(attribute(append, "channel").as_deref(), Some("dm:alice:bob"), "{summary}");
    }
    assert!(appends.iter().any(|a| attribute(a, "seq").as_deref() == Some("1")), "{summary}");
    let publish = named(trace_b, "publish");
    assert_eq!(publish.len(), 1, "{summary}");
    assert!(descends_from(&publish[0], command_b, &spans), "{summary}");
    let fanout = named(trace_b, "fanout");
    assert_eq!(fanout.len(), 1, "{summary}");
    assert!(descends_from(&fanout[0], &publish[0], &spans), "{summary}");
    assert_eq!(attribute(&fanout[0], "recipients").as_deref(), Some("1"), "{summary}");

    // Trace A: alice's commands (sub and send) without a field, parented by her upgrade header.
    let commands = named(trace_a, "command");
    assert_eq!(commands.len(), 2, "{summary}");
    for c in &commands {
        assert_eq!(hex(&c.parent_span_id), "b7ad6b7169203331", "{summary}");
    }
    let send_a = commands.iter().find(|c| attribute(c, "kind").as_deref() == Some("send")).expect("alice's send");
    assert!(named(trace_a, "store.append").iter().any(|a| descends_from(a, send_a, &spans)), "{summary}");

    // Bob's history: a root span of a new trace.
    let history = spans
        .iter()
        .find(|s| s.name == "command" && attribute(s, "kind").as_deref() == Some("history"))
        .unwrap_or_else(|| panic!("no history span: {summary}"));
    assert!(history.parent_span_id.is_empty(), "{summary}");
    assert!(![trace_a, trace_b].contains(&hex(&history.trace_id).as_str()), "{summary}");
    drop((alice, bob));
}

/// A local OTLP/HTTP receiver over TLS, with a certificate for `localhost` issued by a private CA. Returns its
/// address and the CA's certificate as PEM.
async fn tls_collector(received: Received) -> (SocketAddr, String) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "herald otlp test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
        .expect("server certificate");
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/v1/traces", post(receive_traces)).with_state(received);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate aborts the handshake: nothing to serve.
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, ca_cert.pem())
}

/// Runs the server exporting to `collector` over https (trusting `ca_file` when given), sends one message and
/// stops the server; returns the spans the collector got and the server's stderr.
async fn export_over_https(
    collector: SocketAddr,
    received: &Received,
    ca_file: Option<&PathBuf>,
) -> (Vec<Span>, String) {
    received.lock().expect("lock").clear();
    let mut telemetry = format!(
        "[telemetry]\notlp_endpoint = \"https://localhost:{}\"\nservice_name = \"herald-test\"\n",
        collector.port()
    );
    if let Some(ca) = ca_file {
        telemetry.push_str(&format!("otlp_ca_file = {:?}\n", ca.display().to_string()));
    }
    let mut server = Server::with_config("otlp-tls", &config(&telemetry));
    let mut bob = connect(server.addr, "tok-bob", None).await;
    let mut events = Vec::new();
    assert_eq!(next_json(&mut bob).await["type"], "hello");
    let send = serde_json::json!({"type": "send", "id": 1, "channel": "dm:alice:bob", "body": {"text": "over tls"}});
    assert_eq!(command(&mut bob, send, &mut events).await["type"], "reply");
    drop(bob);
    server.signal("TERM");
    let status = server.exit(Duration::from_secs(30)).await;
    let stderr = server.stderr();
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    let spans = received.lock().expect("lock").clone();
    (spans, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_go_to_an_https_collector_whose_certificate_is_verified() {
    let received: Received = Arc::default();
    let (collector, ca_pem) = tls_collector(received.clone()).await;
    let dir = common::data_dir();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let ca_file = dir.join(format!("otlp-ca-{}.pem", common::unique()));
    std::fs::write(&ca_file, ca_pem).expect("write the CA");

    // Trusting the private CA: the spans arrive over TLS.
    let (spans, stderr) = export_over_https(collector, &received, Some(&ca_file)).await;
    let sends = spans.iter().filter(|s| s.name == "command" && attribute(s, "kind").as_deref() == Some("send"));
    assert_eq!(sends.count(), 1, "{} spans; stderr:\n{stderr}", spans.len());
    assert!(spans.iter().any(|s| s.name == "store.append"), "stderr:\n{stderr}");

    // Without it, the certificate is not trusted and nothing is delivered: the client really verifies.
    let (spans, stderr) = export_over_https(collector, &received, None).await;
    assert!(spans.is_empty(), "an untrusted collector got {} spans; stderr:\n{stderr}", spans.len());
    let _ = std::fs::remove_file(&ca_file);
}
