//! WebSocket framing, server side (RFC 6455 section 5): parsing client frame headers, unmasking, encoding
//! server frames, and the close frame's payload. No I/O: [`crate::stream`] drives it.

/// Longest header of a server frame (never masked).
pub(crate) const MAX_SERVER_HEADER: usize = 10;
/// Largest payload of a control frame.
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    /// Continues a fragmented message.
    Continuation,
    /// Starts a text message.
    Text,
    /// Starts a binary message.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub(crate) fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The final fragment of its message.
    pub(crate) fin: bool,
    /// The opcode.
    pub(crate) opcode: Opcode,
    /// The client's masking key.
    pub(crate) mask: [u8; 4],
    /// Payload length.
    pub(crate) len: usize,
    /// Header length (where the payload starts).
    pub(crate) header_len: usize,
}

/// A frame that must not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The frame breaks RFC 6455 (close code 1002).
    #[error("{0}")]
    Protocol(&'static str),
    /// The payload is larger than allowed (close code 1009), known from the header alone.
    #[error("frame too large")]
    TooLarge,
}

/// Parses the header at the start of `buf`. `Ok(None)`: more bytes are needed. A payload over `max_payload`
/// bytes is refused from its header.
pub(crate) fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        // No extension is negotiated, so no reserved bit may be set.
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    if b1 & 0x80 == 0 {
        // Section 5.1: a server must close the connection on an unmasked client frame.
        return Err(FrameError::Protocol("unmasked client frame"));
    }
    let (len, len_bytes) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length with the most significant bit set"));
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(FrameError::Protocol("control frame payload over 125 bytes"));
        }
    }
    let len = match usize::try_from(len) {
        Ok(len) if len <= max_payload => len,
        _ => return Err(FrameError::TooLarge),
    };
    let mask_at = 2 + len_bytes;
    let Some(m) = buf.get(mask_at..mask_at + 4) else { return Ok(None) };
    Ok(Some(Header { fin, opcode, mask: [m[0], m[1], m[2], m[3]], len, header_len: mask_at + 4 }))
}

/// Appends `payload` unmasked with `mask` to `out`; `offset` is the position of `payload[0]` within the frame's
/// payload (the mask cycles over the whole payload).
pub(crate) fn unmask_into(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4], offset: usize) {
    let start = out.len();
    out.extend_from_slice(payload);
    let mut key = mask;
    key.rotate_left(offset % 4);
    let data = &mut out[start..];
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Writes the header of an unmasked server frame into `out` and returns its length.
pub(crate) fn encode_header(out: &mut [u8; MAX_SERVER_HEADER], opcode: Opcode, len: usize) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        // `len < 126` fits a byte.
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Appends a whole unmasked server frame to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = encode_header(&mut header, opcode, payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// Validates a close frame's payload (section 5.5.1, 7.4): empty, or a valid status code followed by a UTF-8
/// reason. Returns the code, if any.
pub(crate) fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::Protocol("close reason is not UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

/// The payload of a close frame: the code and a reason of at most 123 bytes.
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn parses_the_rfc_example_and_unmasks_it() {
        // RFC 6455 section 5.7: a single-frame masked text message "Hello".
        let frame = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let h = parse_header(&frame, 1024).expect("valid").expect("complete");
        assert_eq!(h, Header { fin: true, opcode: Opcode::Text, mask: MASK, len: 5, header_len: 6 });
        let mut out = Vec::new();
        unmask_into(&mut out, &frame[6..], h.mask, 0);
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn unmasking_in_pieces_matches_unmasking_at_once() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let frame = client_frame(true, 1, &payload, MASK);
        let h = parse_header(&frame, 4096).expect("valid").expect("complete");
        let masked = &frame[h.header_len..];
        for split in [0, 1, 3, 7, 8, 9, 513, 999] {
            let mut out = Vec::new();
            unmask_into(&mut out, &masked[..split], h.mask, 0);
            unmask_into(&mut out, &masked[split..], h.mask, split);
            assert_eq!(out, payload, "split at {split}");
        }
    }

    #[test]
    fn extended_lengths_are_read() {
        for len in [125, 126, 65_535, 65_536, 100_000] {
            let frame = client_frame(true, 1, &vec![b'a'; len], MASK);
            let h = parse_header(&frame, 1 << 20).expect("valid").expect("complete");
            assert_eq!((h.len, h.header_len), (len, frame.len() - len));
        }
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let frame = client_frame(true, 1, &[b'a'; 300], MASK);
        for cut in 0..8 {
            assert_eq!(parse_header(&frame[..cut], 1024), Ok(None), "cut at {cut}");
        }
        assert!(parse_header(&frame[..8], 1024).expect("valid").is_some());
    }

    #[test]
    fn unmasked_client_frames_are_refused() {
        let frame = [0x81, 0x05, b'H', b'e', b'l', b'l', b'o'];
        assert_eq!(parse_header(&frame, 1024), Err(FrameError::Protocol("unmasked client frame")));
    }

    #[test]
    fn malformed_frames_are_refused() {
        let mut rsv = client_frame(true, 1, b"x", MASK);
        rsv[0] |= 0x40;
        assert_eq!(parse_header(&rsv, 1024), Err(FrameError::Protocol("reserved bits set")));
        for opcode in [3, 7, 0xB, 0xF] {
            let frame = client_frame(true, opcode, b"x", MASK);
            assert_eq!(parse_header(&frame, 1024), Err(FrameError::Protocol("unknown opcode")));
        }
        let fragmented_ping = client_frame(false, 9, b"x", MASK);
        assert_eq!(parse_header(&fragmented_ping, 1024), Err(FrameError::Protocol("fragmented control frame")));
        let long_ping = client_frame(true, 9, &[0; 126], MASK);
        assert_eq!(parse_header(&long_ping, 1024), Err(FrameError::Protocol("control frame payload over 125 bytes")));
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert!(matches!(parse_header(&huge, 1024), Err(FrameError::Protocol(_))));
    }

    #[test]
    fn oversize_frames_are_refused_from_the_header() {
        // Only the header: the payload is never needed to refuse it.
        let frame = client_frame(true, 1, &[0; 2000], MASK);
        assert_eq!(parse_header(&frame[..8], 1999), Err(FrameError::TooLarge));
        assert!(parse_header(&frame[..8], 2000).expect("valid").is_some());
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        let mut h = [0u8; MAX_SERVER_HEADER];
        assert_eq!(encode_header(&mut h, Opcode::Text, 5), 2);
        assert_eq!(h[..2], [0x81, 5]);
        assert_eq!(encode_header(&mut h, Opcode::Text, 126), 4);
        assert_eq!(h[..4], [0x81, 126, 0, 126]);
        assert_eq!(encode_header(&mut h, Opcode::Pong, 70_000), 10);
        assert_eq!(h[..10], [0x8A, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn close_payloads_are_validated() {
        assert_eq!(parse_close(&[]), Ok(None));
        assert!(parse_close(&[3]).is_err());
        assert_eq!(parse_close(&close_payload(1000, "bye")), Ok(Some(1000)));
        assert_eq!(parse_close(&close_payload(4001, "")), Ok(Some(4001)));
        for code in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(parse_close(&close_payload(code, "")).is_err(), "code {code}");
        }
        let mut bad_utf8 = close_payload(1000, "");
        bad_utf8.extend_from_slice(&[0xff, 0xfe]);
        assert!(parse_close(&bad_utf8).is_err());
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let payload = close_payload(1000, &long);
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
