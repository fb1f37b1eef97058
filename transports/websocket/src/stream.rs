//! A server-side WebSocket over any byte stream (RFC 6455): reads client frames (unmasking, fragmentation,
//! ping/pong, the close handshake, size limits) and writes unmasked server frames.
//!
//! Built for many idle connections: while nothing is being received, the stream holds no buffer at all. A read
//! goes into a buffer on the stack first; only bytes that do not complete a frame (or frames that arrived
//! together with the one returned) are kept on the heap, and that buffer is freed as soon as it is consumed.
//! Writes go out with vectored writes (frame headers built on the stack, payloads written from the shared
//! [`Bytes`]), so no write buffer is kept either; only control frames that could not be written at once (a pong,
//! a close) wait in a small buffer of their own.

use std::io;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frame::{self, FrameError, Header, MAX_SERVER_HEADER, Opcode};

/// Bytes read per system call while no frame is in progress (a stack buffer: costs nothing while idle).
const READ_CHUNK: usize = 4096;
/// Frames written per vectored write.
const FRAMES_PER_WRITE: usize = 32;

/// What [`WsStream::poll_recv`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Received {
    /// A whole text message, valid UTF-8.
    Text(Bytes),
    /// A whole binary message (its payload is not kept).
    Binary,
    /// A ping (already answered with a pong).
    Ping,
    /// A pong.
    Pong,
    /// The peer's close frame (already answered), with its code. Nothing follows.
    Close(Option<u16>),
}

/// Why reading or writing failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The peer broke RFC 6455 (or sent invalid UTF-8).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A frame or message over the size limit.
    #[error("message too large")]
    TooLarge,
    /// The byte stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<FrameError> for WsError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Protocol(m) => Self::Protocol(m),
            FrameError::TooLarge => Self::TooLarge,
        }
    }
}

/// Where reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Frames are being read.
    Open,
    /// The peer's close frame arrived, or its stream ended.
    Closed,
    /// A frame was refused: the rest of the stream cannot be parsed.
    Failed,
}

/// The outcome of decoding buffered bytes.
struct Decoded {
    /// Bytes consumed.
    used: usize,
    /// What to hand to the caller, if a frame produced something.
    event: Option<Received>,
    /// Bytes the incomplete frame at `used` still needs, when its header says (0 when unknown).
    missing: usize,
}

/// A server-side WebSocket over `S`.
#[derive(Debug)]
pub(crate) struct WsStream<S> {
    io: S,
    /// Received bytes not yet consumed. Empty and unallocated unless a frame is partly received.
    rbuf: Vec<u8>,
    /// A fragmented message being assembled: whether it is text, and its payload so far. Boxed: rare, and the
    /// stream is part of every connection's task.
    fragmented: Option<Box<(bool, Vec<u8>)>>,
    /// Control frames waiting to be written (a pong, a close); unallocated when there are none.
    pending: Vec<u8>,
    /// Largest frame payload and message accepted.
    max_payload: usize,
    read: ReadState,
    close_sent: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// A WebSocket on `io`, after the handshake. Frames and messages over `max_payload` bytes are refused.
    pub(crate) fn new(io: S, max_payload: usize) -> Self {
        Self {
            io,
            rbuf: Vec::new(),
            fragmented: None,
            pending: Vec::new(),
            max_payload,
            read: ReadState::Open,
            close_sent: false,
        }
    }

    /// A WebSocket on `io` whose first bytes, `received`, were read already (with the request head).
    pub(crate) fn with_received(io: S, max_payload: usize, received: &[u8]) -> Self {
        let mut ws = Self::new(io, max_payload);
        ws.rbuf.extend_from_slice(received);
        ws
    }

    /// Receives the next message or control frame; `None` once the stream has ended (after [`Received::Close`],
    /// an error, or end of stream). Cancel-safe: every byte read is kept in `self`.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Received, WsError>>> {
        if self.read != ReadState::Open {
            return Poll::Ready(None);
        }
        // Answers (a pong) go out before more is read; a peer that does not read does not stop reading.
        if !self.pending.is_empty()
            && let Poll::Ready(Err(e)) = self.poll_write_pending(cx)
        {
            return self.fail(e.into());
        }
        loop {
            let mut missing = 0;
            if !self.rbuf.is_empty() {
                let buf = std::mem::take(&mut self.rbuf);
                let decoded = match self.decode(&buf) {
                    Ok(d) => d,
                    Err(e) => return self.fail(e),
                };
                if decoded.used < buf.len() {
                    let mut buf = buf;
                    buf.drain(..decoded.used);
                    self.rbuf = buf;
                }
                if let Some(event) = decoded.event {
                    return self.deliver(event, cx);
                }
                missing = decoded.missing;
            }
            if self.rbuf.is_empty() {
                let mut chunk = [0u8; READ_CHUNK];
                let mut rb = ReadBuf::new(&mut chunk);
                match ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb)) {
                    Ok(()) => {}
                    Err(e) => return self.fail(e.into()),
                }
                let data = rb.filled();
                if data.is_empty() {
                    self.read = ReadState::Closed;
                    return Poll::Ready(None);
                }
                let decoded = match self.decode(data) {
                    Ok(d) => d,
                    Err(e) => return self.fail(e),
                };
                if decoded.used < data.len() {
                    let rest = &data[decoded.used..];
                    self.rbuf.reserve_exact(rest.len().max(decoded.missing));
                    self.rbuf.extend_from_slice(rest);
                }
                if let Some(event) = decoded.event {
                    return self.deliver(event, cx);
                }
            } else {
                // A frame is partly here: read the rest straight into the buffer.
                let len = self.rbuf.len();
                self.rbuf.resize(len + missing.max(READ_CHUNK), 0);
                let mut rb = ReadBuf::new(&mut self.rbuf[len..]);
                let polled = Pin::new(&mut self.io).poll_read(cx, &mut rb);
                let n = rb.filled().len();
                self.rbuf.truncate(len + n);
                match polled {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return self.fail(e.into()),
                    Poll::Ready(Ok(())) if n == 0 => {
                        self.read = ReadState::Closed;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(())) => {}
                }
            }
        }
    }

    fn fail(&mut self, e: WsError) -> Poll<Option<Result<Received, WsError>>> {
        self.read = ReadState::Failed;
        self.rbuf = Vec::new();
        self.fragmented = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Hands `event` over; answers of control frames are written right away when the socket takes them.
    fn deliver(&mut self, event: Received, cx: &mut Context<'_>) -> Poll<Option<Result<Received, WsError>>> {
        if self.rbuf.is_empty() {
            // Free the buffer: an idle connection keeps none.
            self.rbuf = Vec::new();
        }
        if !self.pending.is_empty()
            && let Poll::Ready(Err(e)) = self.poll_write_pending(cx)
        {
            // The event still counts; the error shows on the next read or write.
            tracing::trace!(error = %e, "writing a control frame failed");
        }
        Poll::Ready(Some(Ok(event)))
    }

    /// Consumes whole frames from `buf` until one produces an event or the bytes run out.
    fn decode(&mut self, buf: &[u8]) -> Result<Decoded, WsError> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            let Some(header) = frame::parse_header(rest, self.max_payload)? else {
                return Ok(Decoded { used, event: None, missing: 0 });
            };
            let total = header.header_len + header.len;
            if rest.len() < total {
                return Ok(Decoded { used, event: None, missing: total - rest.len() });
            }
            used += total;
            if let Some(event) = self.on_frame(&header, &rest[header.header_len..total])? {
                return Ok(Decoded { used, event: Some(event), missing: 0 });
            }
        }
    }

    /// Handles one whole frame (`payload` still masked).
    fn on_frame(&mut self, header: &Header, payload: &[u8]) -> Result<Option<Received>, WsError> {
        match header.opcode {
            Opcode::Text | Opcode::Binary => {
                if self.fragmented.is_some() {
                    return Err(WsError::Protocol("a new message started before the previous one ended"));
                }
                let text = header.opcode == Opcode::Text;
                if !header.fin {
                    let mut message = Vec::with_capacity(payload.len());
                    frame::unmask_into(&mut message, payload, header.mask, 0);
                    self.fragmented = Some(Box::new((text, message)));
                    return Ok(None);
                }
                if !text {
                    return Ok(Some(Received::Binary));
                }
                let mut data = Vec::with_capacity(payload.len());
                frame::unmask_into(&mut data, payload, header.mask, 0);
                Ok(Some(text_message(data)?))
            }
            Opcode::Continuation => {
                let Some(fragmented) = self.fragmented.as_mut() else {
                    return Err(WsError::Protocol("continuation frame without a message"));
                };
                let (text, message) = &mut **fragmented;
                if message.len() + payload.len() > self.max_payload {
                    return Err(WsError::TooLarge);
                }
                frame::unmask_into(message, payload, header.mask, 0);
                if !header.fin {
                    return Ok(None);
                }
                let text = *text;
                let data = std::mem::take(message);
                self.fragmented = None;
                if !text {
                    return Ok(Some(Received::Binary));
                }
                Ok(Some(text_message(data)?))
            }
            Opcode::Ping => {
                // Answer the latest ping only when an earlier answer is still waiting (section 5.5.3 allows it).
                if self.pending.is_empty() && !self.close_sent {
                    let mut data = Vec::with_capacity(payload.len());
                    frame::unmask_into(&mut data, payload, header.mask, 0);
                    frame::encode_frame(&mut self.pending, Opcode::Pong, &data);
                }
                Ok(Some(Received::Ping))
            }
            Opcode::Pong => Ok(Some(Received::Pong)),
            Opcode::Close => {
                let mut data = Vec::with_capacity(payload.len());
                frame::unmask_into(&mut data, payload, header.mask, 0);
                let code = frame::parse_close(&data)?;
                self.read = ReadState::Closed;
                if !self.close_sent {
                    // Echo the code (section 5.5.1); the server then closes the TCP connection first.
                    self.close_sent = true;
                    let echo = code.map(u16::to_be_bytes);
                    frame::encode_frame(&mut self.pending, Opcode::Close, echo.as_ref().map_or(&[], |c| &c[..]));
                }
                Ok(Some(Received::Close(code)))
            }
        }
    }

    /// Writes the pending control frames.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        self.pending = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Sends `frames` as text messages, in order, after any pending control frame, and flushes.
    pub(crate) async fn send_text(&mut self, frames: &[Bytes]) -> Result<(), WsError> {
        if self.close_sent {
            return Err(io::Error::from(io::ErrorKind::NotConnected).into());
        }
        // Progress: the frame being written and how many of its bytes (header and payload) are out.
        let mut next = 0;
        let mut done = 0;
        std::future::poll_fn(|cx| self.poll_send(cx, frames, &mut next, &mut done)).await
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frames: &[Bytes],
        next: &mut usize,
        done: &mut usize,
    ) -> Poll<Result<(), WsError>> {
        ready!(self.poll_write_pending(cx))?;
        while *next < frames.len() {
            let batch = &frames[*next..frames.len().min(*next + FRAMES_PER_WRITE)];
            let mut headers = [[0u8; MAX_SERVER_HEADER]; FRAMES_PER_WRITE];
            let mut header_lens = [0usize; FRAMES_PER_WRITE];
            for (i, f) in batch.iter().enumerate() {
                header_lens[i] = frame::encode_header(&mut headers[i], Opcode::Text, f.len());
            }
            let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
            let mut count = 0;
            for (i, f) in batch.iter().enumerate() {
                let skip = if i == 0 { *done } else { 0 };
                let header = &headers[i][..header_lens[i]];
                if skip < header.len() {
                    slices[count] = IoSlice::new(&header[skip..]);
                    slices[count + 1] = IoSlice::new(f);
                    count += 2;
                } else {
                    slices[count] = IoSlice::new(&f[skip - header.len()..]);
                    count += 1;
                }
            }
            let mut n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            for (i, f) in batch.iter().enumerate() {
                let left = header_lens[i] + f.len() - if i == 0 { *done } else { 0 };
                if n < left {
                    *done = if i == 0 { *done + n } else { n };
                    break;
                }
                n -= left;
                *next += 1;
                *done = 0;
            }
        }
        Pin::new(&mut self.io).poll_flush(cx).map_err(WsError::from)
    }

    /// Sends a ping with an empty payload.
    pub(crate) async fn ping(&mut self) -> Result<(), WsError> {
        if self.close_sent {
            return Err(io::Error::from(io::ErrorKind::NotConnected).into());
        }
        frame::encode_frame(&mut self.pending, Opcode::Ping, &[]);
        std::future::poll_fn(|cx| {
            ready!(self.poll_write_pending(cx))?;
            Pin::new(&mut self.io).poll_flush(cx)
        })
        .await
        .map_err(WsError::from)
    }

    /// Closes: sends a close frame with `code` and `reason` (unless one was sent already, as the answer to the
    /// peer's), then waits for the peer's close frame, at most `grace`. The caller drops the stream afterwards,
    /// which closes the TCP connection (the server closes first, section 7.1.1).
    pub(crate) async fn close(&mut self, code: u16, reason: &str, grace: Duration) {
        if !self.close_sent {
            self.close_sent = true;
            frame::encode_frame(&mut self.pending, Opcode::Close, &frame::close_payload(code, reason));
        }
        let _ = tokio::time::timeout(grace, async {
            if std::future::poll_fn(|cx| self.poll_write_pending(cx)).await.is_err() {
                return;
            }
            let _ = std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await;
            match self.read {
                ReadState::Open => {
                    while let Some(Ok(r)) = std::future::poll_fn(|cx| self.poll_recv(cx)).await {
                        if matches!(r, Received::Close(_)) {
                            break;
                        }
                    }
                }
                // Whatever follows cannot be parsed; read it away so that closing does not reset the
                // connection before the peer has read the close frame.
                ReadState::Failed => {
                    let mut chunk = [0u8; READ_CHUNK];
                    loop {
                        let mut rb = ReadBuf::new(&mut chunk);
                        match std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_read(cx, &mut rb)).await {
                            Ok(()) if !rb.filled().is_empty() => {}
                            _ => break,
                        }
                    }
                }
                ReadState::Closed => {}
            }
        })
        .await;
    }
}

fn text_message(data: Vec<u8>) -> Result<Received, WsError> {
    if std::str::from_utf8(&data).is_err() {
        return Err(WsError::Protocol("text message is not valid UTF-8"));
    }
    Ok(Received::Text(Bytes::from(data)))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;
    use crate::frame::tests::client_frame;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn pair(max: usize) -> (WsStream<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(1 << 20);
        (WsStream::new(server, max), client)
    }

    async fn recv(ws: &mut WsStream<DuplexStream>) -> Option<Result<Received, WsError>> {
        std::future::poll_fn(|cx| ws.poll_recv(cx)).await
    }

    async fn recv_ok(ws: &mut WsStream<DuplexStream>) -> Received {
        match recv(ws).await {
            Some(Ok(r)) => r,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads what the server wrote so far (the server side must have written something).
    async fn read_some(client: &mut DuplexStream) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 16];
        let n = client.read(&mut buf).await.expect("read");
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn text_frames_arrive_whole_and_idle_streams_hold_no_buffer() {
        let (mut ws, mut client) = pair(1024);
        let mut bytes = client_frame(true, 1, b"{\"a\":1}", MASK);
        bytes.extend(client_frame(true, 1, b"{\"b\":2}", MASK));
        client.write_all(&bytes).await.expect("write");
        assert_eq!(recv_ok(&mut ws).await, Received::Text(Bytes::from_static(b"{\"a\":1}")));
        assert!(ws.rbuf.capacity() > 0, "the second frame waits in the buffer");
        assert_eq!(recv_ok(&mut ws).await, Received::Text(Bytes::from_static(b"{\"b\":2}")));
        assert_eq!(ws.rbuf.capacity(), 0, "consumed: freed");
        assert!(ws.fragmented.is_none());
        assert_eq!(ws.pending.capacity(), 0);
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled() {
        let (mut ws, mut client) = pair(100_000);
        let payload = "é".repeat(20_000);
        let bytes = client_frame(true, 1, payload.as_bytes(), MASK);
        let task = tokio::spawn(async move {
            for piece in bytes.chunks(777) {
                client.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        assert_eq!(recv_ok(&mut ws).await, Received::Text(Bytes::from(payload)));
        assert_eq!(ws.rbuf.capacity(), 0);
        drop(task.await);
    }

    #[tokio::test]
    async fn fragmented_messages_with_interleaved_pings() {
        let (mut ws, mut client) = pair(1024);
        let mut bytes = client_frame(false, 1, b"hel", MASK);
        bytes.extend(client_frame(true, 9, b"p", MASK));
        bytes.extend(client_frame(false, 0, b"lo ", MASK));
        bytes.extend(client_frame(true, 0, b"world", MASK));
        client.write_all(&bytes).await.expect("write");
        assert_eq!(recv_ok(&mut ws).await, Received::Ping);
        assert_eq!(recv_ok(&mut ws).await, Received::Text(Bytes::from_static(b"hello world")));
        // The ping was answered with a pong carrying its payload.
        assert_eq!(read_some(&mut client).await, [0x8A, 1, b'p']);
    }

    #[tokio::test]
    async fn binary_messages_are_reported_without_their_payload() {
        let (mut ws, mut client) = pair(1024);
        client.write_all(&client_frame(true, 2, &[1, 2, 3], MASK)).await.expect("write");
        assert_eq!(recv_ok(&mut ws).await, Received::Binary);
    }

    #[tokio::test]
    async fn invalid_utf8_is_a_protocol_error() {
        let (mut ws, mut client) = pair(1024);
        client.write_all(&client_frame(true, 1, &[0xff, 0xfe], MASK)).await.expect("write");
        assert!(matches!(recv(&mut ws).await, Some(Err(WsError::Protocol(_)))));
        assert!(recv(&mut ws).await.is_none(), "nothing after a failure");
    }

    #[tokio::test]
    async fn unmasked_and_out_of_order_frames_fail_the_stream() {
        let cases: [Vec<u8>; 3] = [
            vec![0x81, 0x01, b'x'],
            client_frame(true, 0, b"x", MASK),
            [client_frame(false, 1, b"x", MASK), client_frame(true, 1, b"y", MASK)].concat(),
        ];
        for bytes in cases {
            let (mut ws, mut client) = pair(1024);
            client.write_all(&bytes).await.expect("write");
            assert!(matches!(recv(&mut ws).await, Some(Err(WsError::Protocol(_)))), "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn oversize_frames_and_messages_are_refused() {
        let (mut ws, mut client) = pair(100);
        // The header alone is enough to refuse a frame.
        client.write_all(&client_frame(true, 1, &[b'a'; 101], MASK)[..8]).await.expect("write");
        assert!(matches!(recv(&mut ws).await, Some(Err(WsError::TooLarge))));

        let (mut ws, mut client) = pair(100);
        let mut bytes = client_frame(false, 1, &[b'a'; 60], MASK);
        bytes.extend(client_frame(true, 0, &[b'a'; 60], MASK));
        client.write_all(&bytes).await.expect("write");
        assert!(matches!(recv(&mut ws).await, Some(Err(WsError::TooLarge))));
    }

    #[tokio::test]
    async fn a_close_frame_is_echoed_and_ends_the_stream() {
        let (mut ws, mut client) = pair(1024);
        client.write_all(&client_frame(true, 8, &frame::close_payload(1000, "done"), MASK)).await.expect("write");
        assert_eq!(recv_ok(&mut ws).await, Received::Close(Some(1000)));
        assert!(recv(&mut ws).await.is_none());
        assert_eq!(read_some(&mut client).await, [0x88, 2, 0x03, 0xE8]);
        // Closing afterwards sends nothing more and does not wait.
        ws.close(1000, "bye", Duration::from_secs(5)).await;
        assert!(ws.send_text(&[Bytes::from_static(b"x")]).await.is_err());
    }

    #[tokio::test]
    async fn a_server_close_waits_for_the_peers_close() {
        let (mut ws, mut client) = pair(1024);
        let closing = tokio::spawn(async move {
            ws.close(4001, "unauthenticated", Duration::from_secs(30)).await;
            ws
        });
        let mut expected = vec![0x88, 17, 0x0F, 0xA1];
        expected.extend_from_slice(b"unauthenticated");
        assert_eq!(read_some(&mut client).await, expected);
        assert!(!closing.is_finished());
        client.write_all(&client_frame(true, 8, &frame::close_payload(4001, ""), MASK)).await.expect("write");
        let ws = closing.await.expect("close");
        assert_eq!(ws.read, ReadState::Closed);
    }

    #[tokio::test]
    async fn batches_are_written_as_unmasked_text_frames_in_order() {
        let (mut ws, mut client) = pair(1024);
        let frames: Vec<Bytes> = (0..70).map(|i| Bytes::from(format!("{{\"n\":{i}}}"))).collect();
        ws.send_text(&frames).await.expect("send");
        let mut expected = Vec::new();
        for f in &frames {
            frame::encode_frame(&mut expected, Opcode::Text, f);
        }
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, expected);
        ws.ping().await.expect("ping");
        assert_eq!(read_some(&mut client).await, [0x89, 0]);
    }

    #[tokio::test]
    async fn partial_writes_resume_where_they_stopped() {
        // A tiny pipe: every write is partial.
        let (server, mut client) = duplex(7);
        let mut ws = WsStream::new(server, 1024);
        let frames: Vec<Bytes> = vec![Bytes::from(vec![b'x'; 300]), Bytes::from_static(b"y"), Bytes::new()];
        let mut expected = Vec::new();
        for f in &frames {
            frame::encode_frame(&mut expected, Opcode::Text, f);
        }
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.expect("read");
            (got, expected)
        });
        ws.send_text(&frames).await.expect("send");
        let (got, expected) = reader.await.expect("reader");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn end_of_stream_ends_receiving() {
        let (mut ws, client) = pair(1024);
        drop(client);
        assert!(recv(&mut ws).await.is_none());
    }
}
