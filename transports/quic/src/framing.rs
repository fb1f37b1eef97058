//! Length-prefixed framing on a QUIC stream, shared by the server and the clients.
//!
//! Every frame is a 4-byte big-endian unsigned length followed by that many bytes. A length of zero is a
//! keep-alive that carries no frame. The length is checked against the limit **before** anything is
//! allocated for the payload, so a peer cannot make the reader reserve more than the limit.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::stream::{RecvHalf, StreamError};

/// Size of the length prefix in bytes.
pub(crate) const LENGTH_PREFIX: usize = 4;

/// The most bytes asked from the stream in one read.
const READ_CHUNK: usize = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The length prefix announced more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a length prefix or a payload.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Reassembles length-prefixed frames from stream chunks.
///
/// All progress is kept in the reader, and a stream read either completes or leaves the stream untouched,
/// so [`FrameReader::next`] is cancel-safe: a dropped call loses nothing.
#[derive(Debug)]
pub(crate) struct FrameReader {
    max: usize,
    /// Received but not yet consumed.
    pending: Bytes,
    header: [u8; LENGTH_PREFIX],
    header_len: usize,
    /// The payload being assembled when it spans chunks, with its announced length.
    body: Option<(BytesMut, usize)>,
}

impl FrameReader {
    /// A reader accepting frames of at most `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        Self { max, pending: Bytes::new(), header: [0; LENGTH_PREFIX], header_len: 0, body: None }
    }

    /// Changes the limit (for frames that follow).
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next frame; an empty frame is a keep-alive. `None` when the stream ended cleanly between frames.
    pub(crate) async fn next(&mut self, stream: &mut RecvHalf) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            match stream.chunk(READ_CHUNK).await? {
                Some(chunk) => self.pending = chunk,
                None if self.header_len == 0 && self.body.is_none() => return Ok(None),
                None => return Err(FrameError::Truncated),
            }
        }
    }

    /// Consumes pending bytes; returns a frame once one is complete.
    fn parse(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some((body, want)) = &mut self.body {
                let take = (*want - body.len()).min(self.pending.len());
                body.put_slice(&self.pending[..take]);
                self.pending.advance(take);
                if body.len() < *want {
                    return Ok(None);
                }
                let frame = std::mem::take(body).freeze();
                self.body = None;
                return Ok(Some(frame));
            }
            if self.pending.is_empty() {
                return Ok(None);
            }
            let take = (LENGTH_PREFIX - self.header_len).min(self.pending.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&self.pending[..take]);
            self.pending.advance(take);
            self.header_len += take;
            if self.header_len < LENGTH_PREFIX {
                return Ok(None);
            }
            self.header_len = 0;
            let len = u32::from_be_bytes(self.header);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > self.max {
                return Err(FrameError::TooLarge { len: u64::from(u32::from_be_bytes(self.header)), max: self.max });
            }
            if len == 0 {
                return Ok(Some(Bytes::new()));
            }
            if self.pending.len() >= len {
                // The whole payload is in this chunk: no copy.
                return Ok(Some(self.pending.split_to(len)));
            }
            self.body = Some((BytesMut::with_capacity(len), len));
        }
    }
}

/// Encodes `frames` into one buffer, each with its length prefix.
///
/// # Panics
/// Never for frames produced by the protocol; a frame above 4 GiB cannot be framed and is a bug.
pub(crate) fn encode(frames: &[Bytes]) -> Bytes {
    let total: usize = frames.iter().map(|f| f.len() + LENGTH_PREFIX).sum();
    let mut out = BytesMut::with_capacity(total);
    for f in frames {
        put_frame(&mut out, f);
    }
    out.freeze()
}

/// Appends one length-prefixed frame to `out`.
pub(crate) fn put_frame(out: &mut BytesMut, frame: &[u8]) {
    let len = u32::try_from(frame.len()).expect("frames are far below 4 GiB");
    out.put_u32(len);
    out.put_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` to a reader (without a stream) and collects what it yields.
    fn feed(max: usize, chunks: &[&[u8]]) -> Result<Vec<Bytes>, FrameError> {
        let mut r = FrameReader::new(max);
        let mut out = Vec::new();
        for c in chunks {
            r.pending = Bytes::copy_from_slice(c);
            while let Some(f) = r.parse()? {
                out.push(f);
            }
            assert!(r.pending.is_empty(), "every byte of a chunk is consumed");
        }
        Ok(out)
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let wire = encode(&[Bytes::from_static(b"{\"a\":1}"), Bytes::new(), Bytes::from_static(b"xyz")]);
        assert_eq!(&wire[..4], &[0, 0, 0, 7], "big-endian u32 length");
        for split in 0..=wire.len() {
            for split2 in split..=wire.len() {
                let got = feed(64, &[&wire[..split], &wire[split..split2], &wire[split2..]]).expect("valid");
                assert_eq!(got, vec![Bytes::from_static(b"{\"a\":1}"), Bytes::new(), Bytes::from_static(b"xyz")]);
            }
        }
    }

    #[test]
    fn oversize_length_is_refused_before_allocating() {
        let err = feed(16, &[&[0, 0, 0, 17]]).expect_err("over the limit");
        assert!(matches!(err, FrameError::TooLarge { len: 17, max: 16 }), "{err:?}");
        let err = feed(16, &[&[0xff, 0xff, 0xff, 0xff]]).expect_err("far over the limit");
        assert!(matches!(err, FrameError::TooLarge { len: 0xffff_ffff, .. }), "{err:?}");
        // Exactly at the limit is fine.
        assert_eq!(feed(3, &[&[0, 0, 0, 3, b'a', b'b', b'c']]).expect("at the limit").len(), 1);
    }
}
