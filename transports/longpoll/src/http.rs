//! The HTTP endpoints: open, commands, long-poll, SSE, ack, delete.
//!
//! Every failure is a JSON body `{"error":{"code":…,"message":…}}` using the protocol's error codes
//! (`docs/protocol.md` §21).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use herald_core::auth::Credentials;
use herald_core::driver::{self, CloseReason};
use herald_core::{Code, Hub};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until, timeout_at};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::LpConfig;
use crate::session::{CreateError, LpSession, ReaderHint, Registry, SessionKey, Settings};

/// The `Last-Event-ID` request header of SSE reconnects.
pub(crate) const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Asks reverse proxies (nginx) not to buffer the SSE stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// State shared by every endpoint of one [`LongPoll`](crate::LongPoll).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) config: LpConfig,
    pub(crate) settings: Arc<Settings>,
    pub(crate) registry: Arc<Registry>,
    /// The largest request body accepted.
    pub(crate) max_post: usize,
    /// How long opening a session waits for the driver's first event.
    pub(crate) open_timeout: Duration,
}

/// The routes, under the configured prefix, with CORS when origins are configured.
pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    let p = shared.config.prefix.trim_end_matches('/').to_owned();
    let cors = cors_layer(&shared.config.cors_origins);
    let router = Router::new()
        .route(&format!("{p}/sessions"), post(open))
        .route(&format!("{p}/sessions/{{id}}"), delete(delete_session))
        .route(&format!("{p}/sessions/{{id}}/commands"), post(commands))
        .route(&format!("{p}/sessions/{{id}}/events"), get(events))
        .route(&format!("{p}/sessions/{{id}}/sse"), get(sse))
        .route(&format!("{p}/sessions/{{id}}/ack"), post(ack))
        .with_state(shared);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// The CORS layer for `origins` (`*` allows any origin); `None` when the list is empty.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([AUTHORIZATION, CONTENT_TYPE, LAST_EVENT_ID])
            .expose_headers([RETRY_AFTER, LOCATION, WWW_AUTHENTICATE])
            .max_age(Duration::from_secs(600)),
    )
}

// --- responses -------------------------------------------------------------------------------------------

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `{"code":…,"reason":…}`.
fn close_value(reason: CloseReason) -> Value {
    json!({"code": reason.code(), "reason": reason.text()})
}

/// Appends `"events":[{"n":…,"event":…},…]` (the frames are JSON objects written by core, embedded as they are).
fn push_events(out: &mut Vec<u8>, events: &[(u64, Bytes)]) {
    out.extend_from_slice(b"\"events\":[");
    for (i, (n, frame)) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"n\":");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b",\"event\":");
        out.extend_from_slice(frame);
        out.push(b'}');
    }
    out.push(b']');
}

/// A batch body: `{<head>"events":[…],"close":{…}}` where `head` is a list of `"key":value,` pairs.
fn batch_body(head: &str, events: &[(u64, Bytes)], close: Option<CloseReason>) -> Vec<u8> {
    let size: usize = events.iter().map(|(_, f)| f.len() + 32).sum();
    let mut out = Vec::with_capacity(size + head.len() + 64);
    out.push(b'{');
    out.extend_from_slice(head.as_bytes());
    push_events(&mut out, events);
    if let Some(reason) = close {
        out.extend_from_slice(b",\"close\":");
        out.extend_from_slice(close_value(reason).to_string().as_bytes());
    }
    out.push(b'}');
    out
}

/// An error response: `{"error":{"code":…,"message":…}, …extra}`.
pub(crate) fn error(status: StatusCode, code: Code, message: impl Into<String>, extra: Option<Value>) -> Response {
    let mut body = json!({"error": {"code": code.as_str(), "message": message.into()}});
    if let (Some(Value::Object(extra)), Some(map)) = (extra, body.as_object_mut()) {
        map.extend(extra);
    }
    json_response(status, body.to_string())
}

/// 503 with `Retry-After`.
fn unavailable(retry_after: Duration, message: &str, extra: Option<Value>) -> Response {
    let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut extra = extra.unwrap_or_else(|| json!({}));
    if let Some(map) = extra.as_object_mut() {
        map.insert("retry_after_ms".into(), json!(ms));
    }
    let mut res = error(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message, Some(extra));
    res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    res
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, Code::NotFound, "unknown or expired session", None)
}

fn bad_query(e: &QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, Code::BadRequest, format!("invalid query: {}", e.body_text()), None)
}

fn ack_beyond(n: u64, last: u64) -> Response {
    error(StatusCode::BAD_REQUEST, Code::BadRequest, format!("ack {n} is beyond the last event number, {last}"), None)
}

fn find(shared: &Shared, id: &str) -> Option<Arc<LpSession>> {
    SessionKey::parse(id).and_then(|k| shared.registry.get(&k))
}

/// Forgets a closed session whose every event the client has seen.
fn finish(shared: &Shared, session: &LpSession) {
    session.finish();
    shared.registry.remove(&session.key());
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// --- open ------------------------------------------------------------------------------------------------

/// The event `type` of a frame.
fn event_type(frame: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        ty: String,
    }
    serde_json::from_slice::<Typed>(frame).ok().map(|t| t.ty)
}

#[derive(Debug, Deserialize)]
struct OpenQuery {
    reader: Option<String>,
}

/// `POST {prefix}/sessions[?reader=sse]`: opens a session, answers with its id and first events (`hello`). The
/// optional `reader` names how the client will read (`poll` or `sse`); it only picks the metrics label, and an
/// unknown value or an unreadable query counts as `poll`.
async fn open(
    State(lp): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<OpenQuery>, QueryRejection>,
) -> Response {
    let token = bearer(&headers).filter(|t| !t.is_empty());
    let hint = ReaderHint::parse(query.as_ref().ok().and_then(|Query(q)| q.reader.as_deref()));
    let (session, conn, guard) = match lp.registry.create(&lp.settings, hint) {
        Ok(created) => created,
        Err(CreateError::Full) => {
            herald_core::metrics::handshake_failed(hint.label(), "session_limit");
            return unavailable(lp.config.retry_after, "the session limit is reached; retry later", None);
        }
        Err(CreateError::ShuttingDown) => {
            return unavailable(lp.config.retry_after, "the server is shutting down; retry later", None);
        }
        Err(CreateError::Rng) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, "cannot generate a session id", None);
        }
    };
    let hub = lp.hub.clone();
    tokio::spawn(async move {
        let _guard = guard;
        driver::run(hub, conn, token.map(Credentials::Bearer)).await;
    });

    // Wait for the driver's first word: `hello`, or an error and a close (a refused token).
    let deadline = Instant::now() + lp.open_timeout;
    let snap = loop {
        let changed = session.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let snap = session.snapshot(0, None);
        let hello = snap.events.first().and_then(|(_, f)| event_type(f)).is_some_and(|t| t == "hello");
        if hello || snap.closed.is_some() {
            break Some((snap, hello));
        }
        tokio::select! {
            () = changed => {}
            () = sleep_until(deadline) => break None,
        }
    };
    let Some((snap, hello)) = snap else {
        session.force_close(CloseReason::TryAgainLater);
        finish(&lp, &session);
        return unavailable(lp.config.retry_after, "the session did not start in time", None);
    };
    if hello {
        let head = format!(
            "\"session\":\"{}\",\"linger_ms\":{},\"wait_ms\":{},\"max_wait_ms\":{},",
            session.key(),
            millis(lp.config.linger),
            millis(lp.config.default_wait),
            millis(lp.config.max_wait),
        );
        let mut res = json_response(StatusCode::CREATED, batch_body(&head, &snap.events, snap.closed));
        let location = format!("{}/sessions/{}", lp.config.prefix.trim_end_matches('/'), session.key());
        if let Ok(v) = HeaderValue::from_str(&location) {
            res.headers_mut().insert(LOCATION, v);
        }
        return res;
    }
    // Refused before `hello`: nothing is kept.
    finish(&lp, &session);
    refused(&lp, snap.events, snap.closed.unwrap_or(CloseReason::InternalError))
}

/// The answer to an open the driver refused (bad token, auth backend down, shutdown).
fn refused(lp: &Shared, events: Vec<(u64, Bytes)>, reason: CloseReason) -> Response {
    let err = events.iter().rev().find_map(|(_, f)| {
        let v: Value = serde_json::from_slice(f).ok()?;
        (v["type"] == "error").then(|| (v["code"].as_str().unwrap_or("internal").to_owned(), v["message"].clone()))
    });
    let (code, message) = err.unwrap_or_else(|| ("internal".into(), json!(reason.text())));
    let event_values: Vec<Value> = events
        .iter()
        .filter_map(|(n, f)| serde_json::from_slice::<Value>(f).ok().map(|e| json!({"n": n, "event": e})))
        .collect();
    let body = json!({
        "error": {"code": code, "message": message},
        "close": close_value(reason),
        "events": event_values,
    });
    match reason {
        CloseReason::Unauthenticated | CloseReason::TokenExpired | CloseReason::AuthTimeout => {
            let mut res = json_response(StatusCode::UNAUTHORIZED, body.to_string());
            res.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            res
        }
        CloseReason::TryAgainLater | CloseReason::GoingAway => {
            let mut res = json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string());
            let secs = lp.config.retry_after.as_secs().max(1);
            res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            res
        }
        _ => json_response(StatusCode::INTERNAL_SERVER_ERROR, body.to_string()),
    }
}

// --- commands --------------------------------------------------------------------------------------------

/// Splits a request body into frames: a body that is one JSON value is one frame; anything else is
/// newline-delimited, one frame per non-blank line (a trailing `\r` is dropped). Frames are forwarded verbatim:
/// core decodes them and answers malformed ones with its usual `error` event.
pub(crate) fn split_frames(body: &Bytes) -> Vec<Bytes> {
    let is_space = |b: &u8| b.is_ascii_whitespace();
    let start = body.iter().position(|b| !is_space(b)).unwrap_or(body.len());
    let end = body.iter().rposition(|b| !is_space(b)).map_or(start, |p| p + 1);
    if start >= end {
        return Vec::new();
    }
    let trimmed = body.slice(start..end);
    if serde_json::from_slice::<&serde_json::value::RawValue>(&trimmed).is_ok() {
        return vec![trimmed];
    }
    let mut frames = Vec::new();
    let mut line_start = 0;
    for (i, b) in trimmed.iter().enumerate().chain(std::iter::once((trimmed.len(), &b'\n'))) {
        if *b != b'\n' {
            continue;
        }
        let line = &trimmed[line_start..i];
        let line_end = line.iter().rposition(|b| !is_space(b)).map_or(0, |p| p + 1);
        if line_end > 0 {
            frames.push(trimmed.slice(line_start..line_start + line_end));
        }
        line_start = i + 1;
    }
    frames
}

/// `POST {prefix}/sessions/{id}/commands`: queues the body's commands for the session, in order.
async fn commands(State(lp): State<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let Some(session) = find(&lp, &id) else {
        return not_found();
    };
    if let Some(reason) = session.closed() {
        return error(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "the session is closed",
            Some(json!({"close": close_value(reason)})),
        );
    }
    // A request in progress counts as presence for the linger, at its start and at its end.
    session.touch();
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::TooLarge,
            format!("request bodies are limited to {} bytes", lp.max_post),
            None,
        )
    };
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > lp.max_post as u64) {
        return too_large();
    }
    let deadline = Instant::now() + lp.config.body_timeout;
    let bytes = match timeout_at(deadline, Limited::new(body, lp.max_post).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, Code::BadRequest, "cannot read the request body", None),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                Code::Timeout,
                format!("the request body did not arrive within {} ms", millis(lp.config.body_timeout)),
                None,
            );
        }
    };
    let frames = split_frames(&bytes);
    if frames.is_empty() {
        return error(StatusCode::BAD_REQUEST, Code::BadRequest, "the body holds no command", None);
    }
    session.touch();
    let deadline = Instant::now() + lp.config.post_timeout;
    let busy = |accepted: usize| {
        unavailable(
            lp.config.retry_after,
            "the session's command queue stayed full; resend the commands not accepted",
            Some(json!({"accepted": accepted})),
        )
    };
    let Ok(tx) = timeout_at(deadline, session.inbound().lock()).await else {
        return busy(0);
    };
    let mut accepted = 0;
    for frame in frames {
        match timeout_at(deadline, tx.send(frame)).await {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(_)) => {
                let close = session.closed().map(close_value);
                return error(
                    StatusCode::NOT_FOUND,
                    Code::NotFound,
                    "the session is closed",
                    Some(json!({"accepted": accepted, "close": close})),
                );
            }
            Err(_) => return busy(accepted),
        }
    }
    drop(tx);
    json_response(StatusCode::ACCEPTED, json!({"accepted": accepted}).to_string())
}

// --- long-poll -------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct PollQuery {
    ack: Option<u64>,
    wait: Option<u64>,
}

/// `GET {prefix}/sessions/{id}/events?ack=N&wait=MS`: acknowledges up to N, then answers with every event
/// after it, holding the request up to `wait` ms until there is one.
async fn events(
    State(lp): State<Arc<Shared>>,
    Path(id): Path<String>,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let Some(session) = find(&lp, &id) else {
        return not_found();
    };
    if let Some(n) = q.ack
        && let Err(e) = session.ack(n)
    {
        return ack_beyond(n, e.last);
    }
    let wait = q.wait.map_or(lp.config.default_wait, Duration::from_millis).min(lp.config.max_wait);
    let reader = session.attach();
    let deadline = Instant::now() + wait;
    loop {
        let changed = session.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // The buffer holds exactly the unacknowledged events.
        let snap = session.snapshot(0, Some(reader.generation()));
        if snap.replaced {
            return error(
                StatusCode::CONFLICT,
                Code::Conflict,
                "replaced by a newer request reading this session",
                None,
            );
        }
        if !snap.events.is_empty() || snap.closed.is_some() {
            if snap.closed.is_some() && snap.events.is_empty() {
                // The client has acknowledged everything: this answer, with the close, is the last one.
                finish(&lp, &session);
            }
            return json_response(StatusCode::OK, batch_body("", &snap.events, snap.closed));
        }
        tokio::select! {
            () = changed => {}
            () = sleep_until(deadline) => return json_response(StatusCode::OK, batch_body("", &[], None)),
        }
    }
}

// --- acks and delete -------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct AckQuery {
    ack: u64,
}

/// `POST {prefix}/sessions/{id}/ack?ack=N`: acknowledges every event up to N (for SSE readers).
async fn ack(
    State(lp): State<Arc<Shared>>,
    Path(id): Path<String>,
    query: Result<Query<AckQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let Some(session) = find(&lp, &id) else {
        return not_found();
    };
    if let Err(e) = session.ack(q.ack) {
        return ack_beyond(q.ack, e.last);
    }
    session.touch();
    let snap = session.snapshot(u64::MAX, None);
    if snap.closed.is_some() && snap.drained {
        finish(&lp, &session);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE {prefix}/sessions/{id}`: closes the session (1000) and forgets it at once.
async fn delete_session(State(lp): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(session) = find(&lp, &id) else {
        return not_found();
    };
    session.force_close(CloseReason::Normal);
    finish(&lp, &session);
    StatusCode::NO_CONTENT.into_response()
}

// --- SSE -------------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct SseQuery {
    ack: Option<u64>,
}

/// The state of one SSE stream.
struct SseStream {
    lp: Arc<Shared>,
    reader: crate::session::Reader,
    /// The highest event number written to this stream.
    cursor: u64,
    next_keepalive: Instant,
    started: bool,
    done: bool,
}

fn sse_events(events: &[(u64, Bytes)]) -> Bytes {
    let mut out = Vec::with_capacity(events.iter().map(|(_, f)| f.len() + 32).sum());
    for (n, frame) in events {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Core writes compact JSON: one line, no raw newline.
        out.extend_from_slice(frame);
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

impl SseStream {
    /// The next chunk of the stream; `None` at its end.
    async fn step(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(Bytes::from(format!("retry: {}\n\n", millis(self.lp.config.sse_retry))));
        }
        let session = self.reader.session().clone();
        loop {
            let changed = session.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let snap = session.snapshot(self.cursor, Some(self.reader.generation()));
            if snap.replaced {
                self.done = true;
                return Some(Bytes::from_static(b"event: replaced\ndata: {}\n\n"));
            }
            if let Some((last, _)) = snap.events.last() {
                self.cursor = *last;
                return Some(sse_events(&snap.events));
            }
            if let Some(reason) = snap.closed {
                self.done = true;
                if snap.drained {
                    finish(&self.lp, &session);
                }
                return Some(Bytes::from(format!("event: close\ndata: {}\n\n", close_value(reason))));
            }
            tokio::select! {
                () = changed => {}
                () = sleep_until(self.next_keepalive) => {
                    self.next_keepalive = Instant::now() + self.lp.config.sse_keepalive;
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
            }
        }
    }
}

/// `GET {prefix}/sessions/{id}/sse`: streams events as Server-Sent Events, starting after `Last-Event-ID` (or
/// `?ack=N`), which also acknowledges everything up to it.
async fn sse(
    State(lp): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<SseQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let Some(session) = find(&lp, &id) else {
        return not_found();
    };
    let last_event_id =
        match headers.get(LAST_EVENT_ID).map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok())) {
            None => None,
            Some(Some(n)) => Some(n),
            Some(None) => {
                return error(StatusCode::BAD_REQUEST, Code::BadRequest, "Last-Event-ID must be an event number", None);
            }
        };
    let ack = last_event_id.max(q.ack);
    if let Some(n) = ack
        && let Err(e) = session.ack(n)
    {
        return ack_beyond(n, e.last);
    }
    let reader = session.attach();
    let next_keepalive = Instant::now() + lp.config.sse_keepalive;
    let stream = SseStream { lp, reader, cursor: 0, next_keepalive, started: false, done: false };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.step().await.map(|chunk| (Ok::<_, Infallible>(chunk), s))
    });
    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(body: &str) -> Vec<String> {
        split_frames(&Bytes::from(body.to_owned()))
            .into_iter()
            .map(|b| String::from_utf8(b.to_vec()).expect("utf-8"))
            .collect()
    }

    #[test]
    fn bodies_split_into_frames() {
        assert_eq!(frames(r#"{"type":"ping","id":1}"#), vec![r#"{"type":"ping","id":1}"#]);
        // One JSON value spread over lines is one frame.
        assert_eq!(frames("{\n \"type\": \"ping\",\n \"id\": 1\n}\n"), vec!["{\n \"type\": \"ping\",\n \"id\": 1\n}"]);
        // NDJSON: one frame per non-blank line; CRLF accepted.
        assert_eq!(
            frames("{\"id\":1}\r\n\r\n{\"id\":2}\n  \n{\"id\":3}"),
            vec![r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#]
        );
        // Anything else is forwarded line by line for core to answer.
        assert_eq!(frames("this is not json"), vec!["this is not json"]);
        assert_eq!(frames("not json\n{\"id\":2}"), vec!["not json", r#"{"id":2}"#]);
        // An array is one frame (core refuses arrays with `bad_request`).
        assert_eq!(frames("[1,2]"), vec!["[1,2]"]);
        assert!(frames("  \n\r\n ").is_empty());
        assert!(frames("").is_empty());
    }

    #[test]
    fn batches_embed_frames() {
        let events = vec![(1, Bytes::from_static(br#"{"type":"hello"}"#)), (2, Bytes::from_static(br#"{"a":1}"#))];
        let body = batch_body("\"session\":\"x\",", &events, Some(CloseReason::IdleTimeout));
        let v: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(
            v,
            json!({"session": "x", "events": [{"n": 1, "event": {"type": "hello"}}, {"n": 2, "event": {"a": 1}}],
                   "close": {"code": 4000, "reason": "idle timeout"}})
        );
        let v: Value = serde_json::from_slice(&batch_body("", &[], None)).expect("valid JSON");
        assert_eq!(v, json!({"events": []}));
    }

    #[test]
    fn sse_chunks() {
        let chunk = sse_events(&[(7, Bytes::from_static(br#"{"type":"reply"}"#))]);
        assert_eq!(&chunk[..], b"id: 7\ndata: {\"type\":\"reply\"}\n\n");
    }
}
