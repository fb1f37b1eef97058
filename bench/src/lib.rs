//! Herald's load tools and benchmarks.
//!
//! - `bench-server`: the server under test (a [`Hub`](herald::Hub) over the memory store, test-token auth and the
//!   WebSocket transport, plus native QUIC / WebTransport and long-poll / SSE on request), started as a child
//!   process by the load tool.
//! - `herald-load`: the scenarios (idle connections, 1:1 messaging, group fan-out, broadcast, store appends,
//!   and peers — Mosquitto, Socket.IO — driven by the same harness), an open-loop load generator whose
//!   latencies are measured from each message's intended send time, spread over worker processes when one
//!   process cannot hold the connections, `--transport` for the idle and 1:1 scenarios (WebSocket, QUIC,
//!   WebTransport, long-poll, SSE), and `herald-load all`, which runs everything and rewrites the tables of
//!   `docs/benchmarks.md`.
//! - `herald-floor`: the kernel floor of B, C and D — the same shapes over loopback TCP with plain `epoll` and no
//!   protocol, to tell Herald's costs from the kernel's.
//! - `benches/fanout.rs`: criterion benchmarks of fan-out through the real hub and of the codec.
//!
//! The library holds the parts that are worth testing on their own: [`schedule`] (intended send times and the
//! pacer), [`hist`] (HDR histograms and their merge across processes), [`scan`] (finding the marks in a frame
//! without parsing it), [`sio`] (the Socket.IO client codec), [`report`] (spreads, checks, rewriting the
//! markdown between markers), [`store`] (`--store` by name), [`net`] (client sockets) and [`wsread`] (the
//! receivers' frame parser).
//!
//! ```
//! use herald_bench::schedule::Schedule;
//! // 50,000 messages per second over 1,000 senders: every message's send time is known before the run.
//! let s = Schedule { start_ns: 0, rate: 50_000.0, count: 100_000, senders: 1_000 };
//! assert_eq!(s.intended_ns(1), 20_000);
//! assert_eq!(s.count_of(0), 100);
//! ```
//!
//! See `docs/benchmarks.md` for the figures and the exact commands that produced them.

pub mod hist;
pub mod net;
pub mod report;
pub mod scan;
pub mod schedule;
pub mod sio;
pub mod store;
pub mod wsread;

use std::path::Path;

/// Memory and thread figures of one process, read from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Resident set size (`VmRSS`), bytes.
    pub rss: u64,
    /// Resident anonymous memory (`RssAnon`): the heap and stacks, without mapped files. Bytes.
    pub rss_anon: u64,
    /// Number of threads (`Threads`).
    pub threads: u64,
}

impl ProcStatus {
    /// Reads the status of process `pid`.
    pub fn read(pid: u32) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
        Ok(Self::parse(&text))
    }

    /// Parses the text of a `/proc/<pid>/status` file (missing fields read as 0).
    pub fn parse(text: &str) -> Self {
        let mut s = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let mut words = value.split_whitespace();
            let number = words.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            let scale = if words.next() == Some("kB") { 1024 } else { 1 };
            match key {
                "VmRSS" => s.rss = number * scale,
                "RssAnon" => s.rss_anon = number * scale,
                "Threads" => s.threads = number,
                _ => {}
            }
        }
        s
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` CPU times (`USER_HZ`, 100 on Linux for x86 and arm).
pub const USER_HZ: f64 = 100.0;

/// The CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))?;
    let ticks = parse_stat_cpu_ticks(&text)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable /proc/<pid>/stat"))?;
    Ok(ticks as f64 / USER_HZ)
}

/// `utime + stime` (fields 14 and 15, clock ticks) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so field n is at index n - 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The kernel's count of UDP datagrams dropped because a socket's receive buffer was full (`RcvbufErrors` of
/// `/proc/net/snmp`, all sockets of the machine), if readable.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    parse_udp_rcvbuf_errors(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

/// `RcvbufErrors` from the text of `/proc/net/snmp` (a `Udp:` header line, then a `Udp:` value line).
pub fn parse_udp_rcvbuf_errors(text: &str) -> Option<u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The soft limit on open files of this process (`Max open files` in `/proc/self/limits`), if readable.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// The median of `values` (the mean of the two middle values for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The user id of the `i`-th load-test connection (shared by the load tool and the server's group setup).
pub fn user_name(i: usize) -> String {
    format!("u{i}")
}

/// The group every load-test user belongs to when the server is started with `--group-members`.
pub const BENCH_GROUP: &str = "group:bench";

/// The topic every load-test user may read when the server is started with `--topic-members`.
pub const BENCH_TOPIC: &str = "topic:bench";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tx\nVmRSS:\t  2048 kB\nRssAnon:\t    1024 kB\nThreads:\t3\n";
        assert_eq!(ProcStatus::parse(text), ProcStatus { rss: 2048 * 1024, rss_anon: 1024 * 1024, threads: 3 });
    }

    #[test]
    fn parses_cpu_ticks_of_proc_stat() {
        let line = "4242 (bench (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 1000 200\n";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
        assert_eq!(parse_stat_cpu_ticks("4242 (short) S 1"), None);
        assert!(cpu_seconds(std::process::id()).is_ok());
    }

    #[test]
    fn parses_udp_receive_buffer_drops() {
        let text = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 2020458 47766 477602 2551238 477601 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_udp_rcvbuf_errors(text), Some(477_601));
        assert_eq!(parse_udp_rcvbuf_errors("Udp: InDatagrams\n"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn reads_own_status() {
        let s = ProcStatus::read(std::process::id()).unwrap_or_default();
        assert!(s.rss > 0 && s.threads > 0);
    }
}
