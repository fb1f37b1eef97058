//! A cheap reader of server-to-client WebSocket frames for the receiving side of the load tools.
//!
//! Receivers of the fan-out and broadcast scenarios take a million frames a second on the same two cores as
//! the server, so their cost per frame is part of what is measured. [`FrameReader`] parses only frame headers
//! (RFC 6455 §5.2) out of whatever a socket read returned, hands each complete payload to the caller as a
//! slice of that read (no allocation, no UTF-8 check, no copy unless a frame straddles two reads) and keeps
//! at most one partial frame between reads.

/// One complete frame as the receiver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text or binary data frame (or a continuation): its payload.
    Data(&'a [u8]),
    /// A ping: its payload, to be echoed in a pong.
    Ping(&'a [u8]),
    /// The peer closes the connection.
    Close,
    /// A pong or a reserved opcode: nothing to do.
    Other,
}

/// The largest frame accepted (a bench frame is a few hundred bytes).
pub const MAX_FRAME: u64 = 16 << 20;

/// A frame header that cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub u64);

/// `(header length, payload length, opcode)` of the frame starting `buf`, or `None` while the header is
/// incomplete.
fn header(buf: &[u8]) -> Result<Option<(usize, usize, u8)>, TooLarge> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (len_bytes, len) = match b1 & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let hlen = 2 + len_bytes + mask;
    if buf.len() < hlen {
        return Ok(None);
    }
    let len = len.unwrap_or_else(|| buf[2..2 + len_bytes].iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)));
    if len > MAX_FRAME {
        return Err(TooLarge(len));
    }
    // At most MAX_FRAME, so it fits.
    Ok(Some((hlen, len as usize, b0 & 0x0f)))
}

fn frame(opcode: u8, payload: &[u8]) -> Frame<'_> {
    match opcode {
        0..=2 => Frame::Data(payload),
        8 => Frame::Close,
        9 => Frame::Ping(payload),
        _ => Frame::Other,
    }
}

/// Parses frames out of successive reads; holds the unfinished tail of the last one.
#[derive(Debug, Default)]
pub struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    /// A reader with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of an unfinished frame held since the last read.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Feeds the bytes of one read; calls `on_frame` for every frame completed by them, in order.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_frame: impl FnMut(Frame<'_>)) -> Result<(), TooLarge> {
        // First finish the frame left over from the previous read, copying only the bytes it still needs.
        while !self.pending.is_empty() {
            match header(&self.pending)? {
                Some((hlen, plen, op)) => {
                    let need = hlen + plen - self.pending.len();
                    let take = need.min(chunk.len());
                    self.pending.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if take < need {
                        return Ok(());
                    }
                    on_frame(frame(op, &self.pending[hlen..]));
                    self.pending.clear();
                }
                None => {
                    let Some((&b, rest)) = chunk.split_first() else { return Ok(()) };
                    self.pending.push(b);
                    chunk = rest;
                }
            }
        }
        // Then every complete frame straight out of the read.
        let mut at = 0;
        while let Some((hlen, plen, op)) = header(&chunk[at..])? {
            let end = at + hlen + plen;
            if end > chunk.len() {
                break;
            }
            on_frame(frame(op, &chunk[at + hlen..end]));
            at = end;
        }
        self.pending.extend_from_slice(&chunk[at..]);
        if self.pending.is_empty() && self.pending.capacity() > 4096 {
            self.pending = Vec::new();
        }
        Ok(())
    }
}

/// A masked client pong echoing `payload` (at most 125 bytes are echoed; a control frame carries no more).
pub fn pong(payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(125)];
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x8a);
    // `payload.len()` is at most 125: one byte.
    out.push(0x80 | payload.len() as u8);
    // A zero masking key: the payload goes out as it is.
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Appends a masked client text frame carrying `payload` (RFC 6455 §5.3) to `out`.
pub fn client_text(out: &mut Vec<u8>, payload: &[u8], key: [u8; 4]) {
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn owned(f: Frame<'_>) -> (u8, Vec<u8>) {
        match f {
            Frame::Data(p) => (1, p.to_vec()),
            Frame::Ping(p) => (9, p.to_vec()),
            Frame::Close => (8, Vec::new()),
            Frame::Other => (10, Vec::new()),
        }
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let big = vec![b'x'; 70_000];
        let mid = vec![b'y'; 300];
        let mut stream = encode(1, b"first");
        stream.extend(encode(9, b"pp"));
        stream.extend(encode(1, &mid));
        stream.extend(encode(2, &big));
        stream.extend(encode(1, b""));
        stream.extend(encode(8, &[3, 232]));
        let want = vec![
            (1, b"first".to_vec()),
            (9, b"pp".to_vec()),
            (1, mid.clone()),
            (1, big.clone()),
            (1, Vec::new()),
            (8, Vec::new()),
        ];
        for step in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                r.feed(chunk, |f| got.push(owned(f))).unwrap_or_else(|e| panic!("{e:?}"));
            }
            assert_eq!(got, want, "reads of {step} bytes");
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let f = encode(1, b"hello");
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        r.feed(&f[..4], |f| got.push(owned(f))).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(got.is_empty());
        assert_eq!(r.pending(), 4);
        r.feed(&f[4..], |f| got.push(owned(f))).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(got, vec![(1, b"hello".to_vec())]);
    }

    #[test]
    fn an_absurd_length_is_refused() {
        let mut f = vec![0x81, 127];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(FrameReader::new().feed(&f, |_| {}), Err(TooLarge(u64::MAX)));
    }

    #[test]
    fn pong_is_a_masked_control_frame() {
        assert_eq!(pong(b"ab"), vec![0x8a, 0x82, 0, 0, 0, 0, b'a', b'b']);
        assert_eq!(pong(&[7; 200]).len(), 6 + 125);
    }

    #[test]
    fn client_text_is_masked_and_framed() {
        let key = [1, 2, 3, 4];
        for len in [0, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = b"before".to_vec();
            client_text(&mut out, &payload, key);
            let f = &out[6..];
            assert_eq!(f[0], 0x81);
            assert_eq!(f[1] & 0x80, 0x80, "masked");
            let (hlen, plen) = match f[1] & 0x7f {
                126 => (4, usize::from(u16::from_be_bytes([f[2], f[3]]))),
                127 => (10, u64::from_be_bytes(f[2..10].try_into().unwrap_or_default()) as usize),
                n => (2, usize::from(n)),
            };
            assert_eq!(plen, len);
            assert_eq!(&f[hlen..hlen + 4], &key);
            let unmasked: Vec<u8> = f[hlen + 4..].iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k).collect();
            assert_eq!(unmasked, payload, "payload of {len} bytes");
        }
    }
}
