//! The two halves of a bidirectional stream, native QUIC or WebTransport, behind one interface.

use bytes::Bytes;

use herald_core::store::BoxError;

/// A stream failed (reset, stopped, or its connection was lost).
#[derive(Debug, thiserror::Error)]
#[error("stream failed: {0}")]
pub(crate) struct StreamError(#[source] pub(crate) BoxError);

/// The receiving half of a native QUIC or WebTransport stream.
#[derive(Debug)]
pub(crate) enum RecvHalf {
    /// Native QUIC.
    Native(quinn::RecvStream),
    /// WebTransport.
    Web(web_transport_quinn::RecvStream),
}

impl RecvHalf {
    /// The next chunk of at most `max` bytes, in order; `None` at the end of the stream. Cancel-safe.
    pub(crate) async fn chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
        match self {
            Self::Native(s) => match s.read_chunk(max, true).await {
                Ok(c) => Ok(c.map(|c| c.bytes)),
                Err(e) => Err(StreamError(Box::new(e))),
            },
            Self::Web(s) => match s.read_chunk(max, true).await {
                Ok(c) => Ok(c.map(|c| c.bytes)),
                Err(e) => Err(StreamError(Box::new(e))),
            },
        }
    }

    /// Asks the peer to stop sending (it may be blocked on flow control); errors are ignored.
    pub(crate) fn stop(&mut self, code: u32) {
        let _ = match self {
            Self::Native(s) => s.stop(quinn::VarInt::from_u32(code)),
            Self::Web(s) => s.stop(code),
        };
    }
}

/// The sending half of a native QUIC or WebTransport stream.
#[derive(Debug)]
pub(crate) enum SendHalf {
    /// Native QUIC.
    Native(quinn::SendStream),
    /// WebTransport.
    Web(web_transport_quinn::SendStream),
}

impl SendHalf {
    /// Writes `data` whole.
    pub(crate) async fn write(&mut self, data: Bytes) -> Result<(), StreamError> {
        match self {
            Self::Native(s) => s.write_chunk(data).await.map_err(|e| StreamError(Box::new(e))),
            Self::Web(s) => s.write_chunk(data).await.map_err(|e| StreamError(Box::new(e))),
        }
    }

    /// Ends the stream (FIN); errors (already finished or reset) are ignored.
    pub(crate) fn finish(&mut self) {
        let _ = match self {
            Self::Native(s) => s.finish().map_err(|_| ()),
            Self::Web(s) => s.finish().map_err(|_| ()),
        };
    }

    /// Waits until the peer acknowledged everything written (after [`finish`](Self::finish)), stopped the
    /// stream, or the connection ended.
    pub(crate) async fn acknowledged(&mut self) {
        match self {
            Self::Native(s) => {
                let _ = s.stopped().await;
            }
            Self::Web(s) => {
                let _ = s.stopped().await;
            }
        }
    }
}
