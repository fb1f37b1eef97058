//! The append log's files: segments of length- and CRC-framed records, written once and recycled.
//!
//! The append log is a set of segment files next to the database, `<path>-log-<16 hex digits>` (the digits are the
//! file's number, which never changes). Each file starts with a header block ([`HEADER_BYTES`]) naming the
//! segment's id (ids grow: a later segment has a larger id) and a random salt; records follow it back to back:
//!
//! ```text
//! header: "HRLDSEG1" | version u32 | 0 u32 | id u64 | salt u64 | crc32 u32      (little endian, in a 4 KiB block)
//! record: payload length u32 | crc32(salt, length, payload) u32 | payload
//! payload: pos i64 | seq u64 | ts i64 | refers u64 | kind u8 | flags u8 | id [16] | channel, sender, client id, body
//!          (each a u32 length and its bytes; the client id only when flags say so)
//! ```
//!
//! A batch of appends is one `write` of its records at the segment's end and one `fdatasync`; only then is any of
//! them acknowledged. A reader of a segment stops at the first record whose length is zero, runs beyond the file or
//! whose CRC does not match: the torn end of a write that was never acknowledged, or the bytes of the file's earlier
//! life. The salt makes the second case certain: every record's CRC covers its segment's salt, and a recycled file
//! gets a new salt, so no record of an earlier life ever reads as valid.
//!
//! Files are not truncated or extended on the hot path once the log is warm: the keeper (a thread of its own)
//! keeps spare segments ready, either recycled (a segment whose every record is folded gets a new header: new id,
//! new salt) or new (written full of zeros and synced once, made when the appender's segment is a quarter full and
//! no recycled one is ready), so an `fdatasync` after a batch writes data blocks only, no file size or block
//! allocation. Only a segment started when no spare was ready (the first one, or when the keeper falls behind)
//! grows as it is written. Folded segments beyond the spares are deleted (`unlink`, then the directory is synced).
//!
//! After a write or sync failure the appender never writes that segment again: it moves to a new one and reuses
//! the failed batch's positions there. Records of a segment at or beyond the first position of a later segment
//! are therefore void (they belong to a batch that failed), and recovery drops them.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use herald_core::id::{ChannelId, ClientMsgId, MessageId, UserId};
use herald_core::model::{Message, MessageKind};
use serde_json::value::RawValue;

use crate::log::Folded;

/// The bytes before a segment's first record (one file system block).
pub(crate) const HEADER_BYTES: u64 = 4096;
/// The header's magic.
const MAGIC: &[u8; 8] = b"HRLDSEG1";
/// The format version in the header.
const VERSION: u32 = 1;
/// The header's encoded length (without the padding to `HEADER_BYTES`).
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 4;
/// A record's frame: payload length and CRC.
const FRAME: usize = 8;
/// Zeros written per `write` when the keeper fills a new segment.
const ZERO_CHUNK: usize = 1 << 20;
/// Zeros written between two syncs when filling, so that the fill never holds much unsynced data (which the
/// appender's next `fdatasync` might otherwise have to wait behind).
const ZERO_SYNC_EVERY: u64 = 1 << 20;
/// Spare segments the keeper keeps (recycled ones; beyond this many, folded segments are deleted).
const SPARES: usize = 2;
/// How often the keeper looks at the fold watermark when nothing else wakes it.
const KEEPER_TICK: Duration = Duration::from_millis(50);

const FLAG_CLIENT_ID: u8 = 1;
const FLAG_REFERS: u8 = 2;

/// The name prefix of the segment files of the database at `database`: `<file name>-log-`.
fn prefix(database: &Path) -> String {
    let name = database.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{name}-log-")
}

/// The directory holding the database (and its segments).
fn directory(database: &Path) -> PathBuf {
    match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The segment files of the database at `database`, with their numbers, in no particular order.
pub(crate) fn list(database: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = directory(database);
    let prefix = prefix(database);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name.strip_prefix(&prefix) else { continue };
        if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if let Ok(number) = u64::from_str_radix(digits, 16) {
            found.push((number, entry.path()));
        }
    }
    Ok(found)
}

/// Syncs the directory holding the database, so that file creations and removals in it are durable.
fn sync_directory(database: &Path) -> io::Result<()> {
    File::open(directory(database))?.sync_all()
}

/// A random salt (std's hasher keys are random per process and per `RandomState`).
fn new_salt() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

fn encode_header(id: u64, salt: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// `(id, salt)` of a valid header.
fn decode_header(b: &[u8]) -> Option<(u64, u64)> {
    let b = b.get(..HEADER_LEN)?;
    if &b[..8] != MAGIC || u32_at(b, 8)? != VERSION {
        return None;
    }
    let crc = u32_at(b, HEADER_LEN - 4)?;
    if crc32fast::hash(&b[..HEADER_LEN - 4]) != crc {
        return None;
    }
    Some((u64_at(b, 16)?, u64_at(b, 24)?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn record_crc(salt: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Message => 0,
        MessageKind::Edit => 1,
        MessageKind::Recall => 2,
        MessageKind::System => 3,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends the framed record of `message` at log position `pos` to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, salt: u64, pos: i64, m: &Message) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    out.extend_from_slice(&pos.to_le_bytes());
    out.extend_from_slice(&m.seq.to_le_bytes());
    out.extend_from_slice(&m.ts.to_le_bytes());
    out.extend_from_slice(&m.refers.unwrap_or(0).to_le_bytes());
    out.push(kind_byte(m.kind));
    let flags =
        if m.client_id.is_some() { FLAG_CLIENT_ID } else { 0 } | if m.refers.is_some() { FLAG_REFERS } else { 0 };
    out.push(flags);
    out.extend_from_slice(m.id.0.as_bytes());
    put_str(out, m.channel.as_str());
    put_str(out, m.sender.as_str());
    if let Some(cid) = &m.client_id {
        put_str(out, cid.as_str());
    }
    put_str(out, m.body.get());
    let payload_len = (out.len() - start - FRAME) as u32;
    let crc = record_crc(salt, payload_len, &out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
}

/// A record that passed its CRC but does not decode: written by something else, or a bug.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record in the append log segment {}: {what}", path.display())]
pub(crate) struct Corrupt {
    path: PathBuf,
    what: String,
}

/// Reads a payload's fields in order.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("record too short")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "record too short")?))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| "record too short")?) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|e| e.to_string())
    }
}

fn decode_payload(b: &[u8]) -> Result<(i64, Message), String> {
    let mut c = Cursor { b, at: 0 };
    let pos = c.u64()? as i64;
    let seq = c.u64()?;
    let ts = c.u64()? as i64;
    let refers = c.u64()?;
    let kind = match c.u8()? {
        0 => MessageKind::Message,
        1 => MessageKind::Edit,
        2 => MessageKind::Recall,
        3 => MessageKind::System,
        other => return Err(format!("unknown message kind {other}")),
    };
    let flags = c.u8()?;
    let id = uuid::Uuid::from_slice(c.take(16)?).map_err(|e| e.to_string())?;
    let channel = ChannelId::new(c.str()?).map_err(|e| e.to_string())?;
    let sender = UserId::new(c.str()?).map_err(|e| e.to_string())?;
    let client_id =
        if flags & FLAG_CLIENT_ID != 0 { Some(ClientMsgId::new(c.str()?).map_err(|e| e.to_string())?) } else { None };
    let body = RawValue::from_string(c.str()?.to_owned()).map_err(|e| e.to_string())?;
    if c.at != b.len() {
        return Err("trailing bytes".into());
    }
    let message = Message {
        channel,
        seq,
        id: MessageId(id),
        sender,
        client_id,
        kind,
        refers: (flags & FLAG_REFERS != 0).then_some(refers),
        ts,
        body: Arc::from(body),
    };
    Ok((pos, message))
}

/// The valid records of a segment's bytes (after its header), in order: up to the first invalid one.
fn scan(path: &Path, bytes: &[u8], salt: u64) -> Result<Vec<(i64, Message)>, Corrupt> {
    let mut found = Vec::new();
    let mut at = HEADER_BYTES as usize;
    while let (Some(len), Some(crc)) = (u32_at(bytes, at), u32_at(bytes, at + 4)) {
        if len == 0 {
            break;
        }
        let Some(payload) = bytes.get(at + FRAME..at + FRAME + len as usize) else { break };
        if record_crc(salt, len, payload) != crc {
            break;
        }
        let record = decode_payload(payload).map_err(|what| Corrupt { path: path.to_owned(), what })?;
        if let Some((last, _)) = found.last()
            && record.0 <= *last
        {
            return Err(Corrupt { path: path.to_owned(), what: format!("position {} after {last}", record.0) });
        }
        found.push(record);
        at += FRAME + len as usize;
    }
    Ok(found)
}

/// A segment file, open for writing.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) id: u64,
    pub(crate) salt: u64,
    /// Where the next record goes.
    pub(crate) end: u64,
    /// The bytes the file has room for without growing (0: not preallocated).
    pub(crate) capacity: u64,
    /// The highest log position of the records written (0 before any).
    pub(crate) last_pos: i64,
}

impl Segment {
    /// A segment found at open: never written again; only its file is reused once folded.
    fn closed(file: File, path: PathBuf, last_pos: i64) -> Self {
        Self { file, path, id: 0, salt: 0, end: HEADER_BYTES, capacity: 0, last_pos }
    }

    /// Gives the file a new identity (a fresh header; the old records become void) and syncs it.
    fn reset(file: File, path: PathBuf, id: u64, capacity: u64) -> io::Result<Self> {
        let salt = new_salt();
        file.write_all_at(&encode_header(id, salt), 0)?;
        file.sync_data()?;
        Ok(Self { file, path, id, salt, end: HEADER_BYTES, capacity, last_pos: 0 })
    }
}

/// What recovery found in the segment files.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The valid records beyond nothing in particular (the caller filters by watermark), ascending by position.
    pub(crate) records: Vec<(i64, Message)>,
    /// The valid segments in id order, with the highest position each still holds (0 if none): for the keeper.
    pub(crate) segments: Vec<(PathBuf, i64)>,
    /// Files without a valid header: free for reuse.
    pub(crate) free: Vec<PathBuf>,
    /// The largest segment id seen.
    pub(crate) max_id: u64,
    /// The largest file number seen.
    pub(crate) max_number: u64,
}

/// A segment's valid records: positions and messages, ascending.
type Records = Vec<(i64, Message)>;

/// Reads every segment of the database at `database`.
pub(crate) fn recover(database: &Path) -> Result<Recovered, RecoverError> {
    let mut valid: Vec<(u64, PathBuf, Records)> = Vec::new();
    let mut free = Vec::new();
    let mut max_id = 0;
    let mut max_number = 0;
    for (number, path) in list(database).map_err(|e| RecoverError::Io { path: directory(database), source: e })? {
        max_number = max_number.max(number);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| RecoverError::Io { path: path.clone(), source: e })?;
        match decode_header(&bytes) {
            Some((id, salt)) => {
                max_id = max_id.max(id);
                let records = scan(&path, &bytes, salt).map_err(RecoverError::Corrupt)?;
                valid.push((id, path, records));
            }
            None => free.push(path),
        }
    }
    valid.sort_by_key(|(id, ..)| *id);
    // A later segment's first position voids that position and beyond in the earlier ones (a failed batch).
    for i in 0..valid.len() {
        let Some(first) = valid[i].2.first().map(|(pos, _)| *pos) else { continue };
        for earlier in &mut valid[..i] {
            let keep = earlier.2.partition_point(|(pos, _)| *pos < first);
            earlier.2.truncate(keep);
        }
    }
    let segments = valid.iter().map(|(_, path, r)| (path.clone(), r.last().map_or(0, |(pos, _)| *pos))).collect();
    let records = valid.into_iter().flat_map(|(.., r)| r).collect();
    Ok(Recovered { records, segments, free, max_id, max_number })
}

/// Why the segments could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoverError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Corrupt(Corrupt),
}

/// The ids and file numbers handed out, shared by the appender and the keeper.
#[derive(Debug)]
struct Counters {
    next_id: AtomicU64,
    next_number: AtomicU64,
}

/// Shared between the appender and the keeper.
#[derive(Debug)]
struct Shared {
    database: PathBuf,
    segment_bytes: u64,
    counters: Counters,
    spares: Mutex<VecDeque<Segment>>,
    /// Signalled when the keeper should look again (a segment closed, a spare taken, stop).
    wake: Condvar,
    /// Segments the appender no longer writes, oldest first, with their last position, for the keeper.
    closed: Mutex<VecDeque<(Segment, i64)>>,
    /// Set by the appender when its segment is a quarter full and no spare is ready: the keeper then fills a new
    /// one (so that a store with little traffic never writes a whole segment of zeros).
    want_spare: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    /// A new segment file (not preallocated unless `fill`), synced along with its directory entry.
    fn create(&self, fill: bool) -> io::Result<Segment> {
        loop {
            let number = self.counters.next_number.fetch_add(1, Ordering::AcqRel);
            let path = directory(&self.database).join(format!("{}{number:016x}", prefix(&self.database)));
            let file = match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let mut capacity = 0;
            if fill {
                let zeros = vec![0u8; ZERO_CHUNK];
                let mut at = 0;
                let mut unsynced = 0;
                while at < self.segment_bytes {
                    let n = (self.segment_bytes - at).min(ZERO_CHUNK as u64) as usize;
                    file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                    unsynced += n as u64;
                    if unsynced >= ZERO_SYNC_EVERY {
                        file.sync_data()?;
                        unsynced = 0;
                    }
                    if self.stop.load(Ordering::Acquire) {
                        break;
                    }
                }
                capacity = at;
            }
            let id = self.counters.next_id.fetch_add(1, Ordering::AcqRel);
            let segment = Segment::reset(file, path, id, capacity)?;
            sync_directory(&self.database)?;
            return Ok(segment);
        }
    }

    /// Gives `segment` (folded, closed) a new identity: a spare.
    fn recycle(&self, segment: &mut Segment) -> io::Result<()> {
        let capacity = segment.file.metadata()?.len();
        let id = self.counters.next_id.fetch_add(1, Ordering::AcqRel);
        let salt = new_salt();
        segment.file.write_all_at(&encode_header(id, salt), 0)?;
        segment.file.sync_data()?;
        segment.id = id;
        segment.salt = salt;
        segment.end = HEADER_BYTES;
        segment.capacity = capacity;
        segment.last_pos = 0;
        Ok(())
    }
}

/// The append log's files as the appender sees them: the segment it writes, and the keeper behind it.
#[derive(Debug)]
pub(crate) struct Log {
    shared: Arc<Shared>,
    current: Option<Segment>,
    keeper: Option<JoinHandle<()>>,
    /// The write buffer, reused.
    buf: Vec<u8>,
}

impl Log {
    /// Takes over what recovery found: `segments` go to the keeper (which recycles them once folded), `free` files
    /// become spares. Starts the keeper; the first segment is opened by the first write.
    pub(crate) fn start(
        database: &Path,
        segment_bytes: u64,
        recovered: &Recovered,
        folded: Arc<Folded>,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            database: database.to_owned(),
            segment_bytes,
            counters: Counters {
                next_id: AtomicU64::new(recovered.max_id + 1),
                next_number: AtomicU64::new(recovered.max_number + 1),
            },
            spares: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            closed: Mutex::new(VecDeque::new()),
            want_spare: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        {
            let mut closed = shared.closed.lock().unwrap_or_else(PoisonError::into_inner);
            // Files without a valid header first: they hold nothing, and need not wait for the watermark.
            for path in &recovered.free {
                let file = OpenOptions::new().read(true).write(true).open(path)?;
                closed.push_back((Segment::closed(file, path.clone(), 0), 0));
            }
            for (path, last) in &recovered.segments {
                let file = OpenOptions::new().read(true).write(true).open(path)?;
                closed.push_back((Segment::closed(file, path.clone(), *last), *last));
            }
        }
        let keeper_shared = shared.clone();
        let keeper = std::thread::Builder::new()
            .name("herald-sqlite-log-keeper".into())
            .spawn(move || keep(&keeper_shared, &folded))?;
        Ok(Self { shared, current: None, keeper: Some(keeper), buf: Vec::new() })
    }

    /// The segment to write `bytes` more into: the current one if they fit, else a spare (or a new file).
    fn segment_for(&mut self, bytes: u64) -> io::Result<&mut Segment> {
        let fits = self
            .current
            .as_ref()
            .is_some_and(|s| s.end == HEADER_BYTES || s.end + bytes <= s.capacity.max(self.shared.segment_bytes));
        if !fits {
            self.roll()?;
        }
        match self.current.as_mut() {
            Some(s) => Ok(s),
            None => Err(io::Error::other("no append log segment")),
        }
    }

    /// Closes the current segment (the keeper recycles it once folded) and opens the next one.
    pub(crate) fn roll(&mut self) -> io::Result<()> {
        if let Some(old) = self.current.take() {
            let last = old.last_pos;
            self.shared.closed.lock().unwrap_or_else(PoisonError::into_inner).push_back((old, last));
        }
        let spare = self.shared.spares.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
        self.shared.wake.notify_one();
        self.current = Some(match spare {
            Some(s) => s,
            // None ready: a file that grows as it is written (its syncs carry the size too).
            None => self.shared.create(false)?,
        });
        Ok(())
    }

    /// Writes the records of `rows` (positions and messages, ascending) and syncs them. On an error the segment is
    /// abandoned: the next write goes to a new segment, and these positions may be written again there.
    pub(crate) fn append<'m>(&mut self, rows: impl Iterator<Item = (i64, &'m Message)> + Clone) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.append_with(&mut buf, rows);
        buf.clear();
        self.buf = buf;
        if result.is_err()
            && let Some(broken) = self.current.take()
        {
            let last = broken.last_pos;
            self.shared.closed.lock().unwrap_or_else(PoisonError::into_inner).push_back((broken, last));
            self.shared.wake.notify_one();
        }
        result
    }

    fn append_with<'m>(
        &mut self,
        buf: &mut Vec<u8>,
        rows: impl Iterator<Item = (i64, &'m Message)> + Clone,
    ) -> io::Result<()> {
        // Encoded with the current segment's salt (records do not change size with the salt): again if the batch
        // goes into another segment.
        let encode = |buf: &mut Vec<u8>, salt: u64| {
            buf.clear();
            let mut last = 0;
            for (pos, m) in rows.clone() {
                encode_record(buf, salt, pos, m);
                last = pos;
            }
            last
        };
        let salt = self.current.as_ref().map_or(0, |s| s.salt);
        let mut last = encode(buf, salt);
        let segment = self.segment_for(buf.len() as u64)?;
        if segment.salt != salt {
            last = encode(buf, segment.salt);
        }
        segment.file.write_all_at(buf, segment.end)?;
        segment.file.sync_data()?;
        segment.end += buf.len() as u64;
        if last > 0 {
            segment.last_pos = last;
        }
        if segment.end > segment.capacity.max(self.shared.segment_bytes) / 4
            && !self.shared.want_spare.load(Ordering::Relaxed)
            && self.shared.spares.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
        {
            self.shared.want_spare.store(true, Ordering::Release);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Stops the keeper and waits for it. The segments stay as they are for the next open.
    pub(crate) fn close(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _spares = self.shared.spares.lock().unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        if let Some(keeper) = self.keeper.take()
            && keeper.join().is_err()
        {
            tracing::error!("the SQLite append log keeper thread panicked");
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

/// The keeper: recycles (or deletes) folded segments and keeps [`SPARES`] spare segments ready.
fn keep(shared: &Shared, folded: &Folded) {
    let mut failing = false;
    while !shared.stop.load(Ordering::Acquire) {
        let mut progress = false;
        // Folded segments, oldest first and strictly in order: an earlier segment may hold void records that only
        // a later one's positions mark as void, so the later one never goes first.
        let watermark = folded.get();
        loop {
            let front = {
                let mut closed = shared.closed.lock().unwrap_or_else(PoisonError::into_inner);
                match closed.front() {
                    Some((_, last)) if *last <= watermark => closed.pop_front(),
                    _ => None,
                }
            };
            let Some((mut segment, last)) = front else { break };
            let spares = shared.spares.lock().unwrap_or_else(PoisonError::into_inner).len();
            let outcome = if spares < SPARES {
                shared.recycle(&mut segment)
            } else {
                std::fs::remove_file(&segment.path).and_then(|()| sync_directory(&shared.database))
            };
            match outcome {
                Ok(()) => {
                    if spares < SPARES {
                        shared.spares.lock().unwrap_or_else(PoisonError::into_inner).push_back(segment);
                    }
                    progress = true;
                    failing = false;
                }
                Err(e) => {
                    // Tried again later; nothing behind it goes first.
                    if !failing {
                        tracing::warn!(error = %e, "recycling a folded SQLite append log segment failed");
                    }
                    shared.closed.lock().unwrap_or_else(PoisonError::into_inner).push_front((segment, last));
                    failing = true;
                    break;
                }
            }
        }
        let spares = shared.spares.lock().unwrap_or_else(PoisonError::into_inner).len();
        if spares == 0 && !failing && shared.want_spare.swap(false, Ordering::AcqRel) {
            match shared.create(true) {
                Ok(s) => {
                    shared.spares.lock().unwrap_or_else(PoisonError::into_inner).push_back(s);
                    progress = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "creating a spare SQLite append log segment failed");
                    shared.want_spare.store(true, Ordering::Release);
                    failing = true;
                }
            }
        }
        if !progress {
            let spares = shared.spares.lock().unwrap_or_else(PoisonError::into_inner);
            let tick = if failing { KEEPER_TICK * 20 } else { KEEPER_TICK };
            let _ = shared.wake.wait_timeout(spares, tick);
            failing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::id::ChannelName;

    fn message(seq: u64, body: &str) -> Message {
        let channel = ChannelId::group(&ChannelName::new("seg").expect("name"));
        Message {
            channel,
            seq,
            id: MessageId::generate(),
            sender: UserId::new("s").expect("user"),
            client_id: seq.is_multiple_of(2).then(|| ClientMsgId::new(format!("c{seq}")).expect("client id")),
            kind: if seq.is_multiple_of(3) { MessageKind::Edit } else { MessageKind::Message },
            refers: seq.is_multiple_of(3).then_some(1),
            ts: 1_700_000_000_000 + seq as i64,
            body: Arc::from(RawValue::from_string(format!("\"{body}\"")).expect("json")),
        }
    }

    fn start(db: &Path, folded: &Arc<Folded>) -> (Log, Recovered) {
        let recovered = recover(db).expect("recover");
        let log = Log::start(db, 64 * 1024, &recovered, folded.clone()).expect("start");
        (log, recovered)
    }

    fn write(log: &mut Log, rows: &[(i64, Message)]) {
        log.append(rows.iter().map(|(p, m)| (*p, m))).expect("append");
    }

    fn positions(r: &Recovered) -> Vec<i64> {
        r.records.iter().map(|(p, _)| *p).collect()
    }

    #[test]
    fn records_come_back_as_written_and_a_torn_end_is_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("h.db");
        let folded = Arc::new(Folded::default());
        let (mut log, _) = start(&db, &folded);
        let rows: Vec<(i64, Message)> = (1..=5).map(|i| (i, message(i as u64, &format!("m{i}")))).collect();
        write(&mut log, &rows[..3]);
        write(&mut log, &rows[3..]);
        let path = log.current.as_ref().expect("a segment").path.clone();
        let end = log.current.as_ref().expect("a segment").end;
        log.close();
        drop(log);
        let back = recover(&db).expect("recover");
        assert_eq!(back.records, rows, "every field of every record");

        // The last record torn (a write that was never synced): the others come back.
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        let last_len = {
            let mut b = Vec::new();
            encode_record(&mut b, 0, 5, &rows[4].1);
            b.len() as u64
        };
        file.write_all_at(&[0xAB; 7], end - last_len + FRAME as u64 + 3).expect("tear");
        drop(file);
        assert_eq!(positions(&recover(&db).expect("recover")), vec![1, 2, 3, 4]);
        // A length running beyond the file.
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&u32::MAX.to_le_bytes(), end - last_len).expect("tear");
        drop(file);
        assert_eq!(positions(&recover(&db).expect("recover")), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_recycled_segment_never_replays_its_earlier_records() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("h.db");
        let folded = Arc::new(Folded::default());
        let (mut log, _) = start(&db, &folded);
        // Records of one length (same fields but the position).
        let old: Vec<(i64, Message)> = (6..=9).map(|i| (i, message(5, "old"))).collect();
        write(&mut log, &old);
        let shared = log.shared.clone();
        let mut segment = log.current.take().expect("a segment");
        let path = segment.path.clone();
        log.close();
        drop(log);
        // Folded, then recycled and written again with one record: the old ones beyond it stay on disk.
        shared.recycle(&mut segment).expect("recycle");
        // The same length as each old record: without the salt, the old ones would line up behind it.
        let mut buf = Vec::new();
        encode_record(&mut buf, segment.salt, 5, &message(5, "new"));
        segment.file.write_all_at(&buf, segment.end).expect("write");
        segment.file.sync_data().expect("sync");
        drop(segment);
        let back = recover(&db).expect("recover");
        assert_eq!(positions(&back), vec![5], "only the record of the segment's current life");
        assert_eq!(back.segments.len(), 1);
        assert_eq!(back.segments[0].0, path);
    }

    #[test]
    fn a_later_segment_voids_the_positions_of_a_failed_batch() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("h.db");
        let folded = Arc::new(Folded::default());
        let (mut log, _) = start(&db, &folded);
        write(&mut log, &[(1, message(1, "a")), (2, message(2, "b"))]);
        // A batch whose sync "failed" (written all the same), then the appender moves on and reuses 3 and 4.
        write(&mut log, &[(3, message(3, "failed")), (4, message(4, "failed")), (5, message(5, "failed"))]);
        log.roll().expect("roll");
        write(&mut log, &[(3, message(3, "c")), (4, message(4, "d"))]);
        log.close();
        drop(log);
        let back = recover(&db).expect("recover");
        assert_eq!(positions(&back), vec![1, 2, 3, 4]);
        assert!(back.records.iter().all(|(_, m)| m.body.get() != "\"failed\""));
        // The earlier segment's last position is the last one still valid in it.
        assert_eq!(back.segments.iter().map(|(_, last)| *last).collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn the_keeper_recycles_folded_segments_in_order_and_keeps_spares() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("h.db");
        let folded = Arc::new(Folded::default());
        let (mut log, _) = start(&db, &folded);
        // About 3 KiB per batch: a 64 KiB segment takes about 20.
        let body = "x".repeat(300);
        let mut pos = 0;
        for _ in 0..100 {
            let rows: Vec<(i64, Message)> = (0..10)
                .map(|_| {
                    pos += 1;
                    (pos, message(pos as u64, &body))
                })
                .collect();
            write(&mut log, &rows);
        }
        folded.advance(pos - 10);
        // The keeper gets to it by itself; wait (bounded) until all but the last segments are gone or spare.
        let mut live = usize::MAX;
        for _ in 0..400 {
            std::thread::sleep(Duration::from_millis(10));
            // The keeper may delete a file while it is being read.
            let Ok(r) = recover(&db) else { continue };
            live = r.segments.iter().filter(|(_, last)| *last > 0).count();
            if live <= 2 {
                break;
            }
        }
        assert!(live <= 2, "folded segments are recycled: {live} still hold records");
        log.close();
        drop(log);
        let back = recover(&db).expect("recover");
        let expected: Vec<i64> = (1..=pos).filter(|p| *p > back.records[0].0 - 1).collect();
        assert_eq!(positions(&back), expected, "what is left is a contiguous end of the log");
        assert!(back.records[0].0 <= pos - 9, "nothing unfolded was recycled");
        assert!(list(&db).expect("list").len() <= 2 + SPARES + 1, "extra segments are deleted");
    }
}
