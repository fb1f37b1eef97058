//! Child processes of the coordinator: the server under test and the load workers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_bench::ProcStatus;
use herald_bench::net::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::phases;
use crate::worker::{Job, Order, Ready, Reply, StepReport};

/// A binary next to this one (`bench-server`, …).
pub(crate) fn sibling(name: &str) -> Result<PathBuf, Error> {
    Ok(std::env::current_exe()?.with_file_name(name))
}

/// A running server under test.
pub(crate) struct ServerProc {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its process id (for `/proc/<pid>/status`).
    pub(crate) pid: u32,
    /// The extra transports it announced before `listening` (`bench-server --quic/--longpoll`).
    pub(crate) extra: Announced,
}

/// What `bench-server` announces about its other transports, one line each before `listening <addr>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Announced {
    /// `quic <udp addr> <certificate sha-256 hex>`: native QUIC and WebTransport.
    pub(crate) quic: Option<(SocketAddr, [u8; 32])>,
    /// `longpoll <addr>`: HTTP long-poll and SSE.
    pub(crate) longpoll: Option<SocketAddr>,
}

impl Announced {
    /// Takes in one stdout line of the server (lines that announce nothing are ignored).
    pub(crate) fn line(&mut self, line: &str) -> Result<(), Error> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("quic") => {
                let addr = words.next().ok_or("quic line without an address")?.parse()?;
                let hex = words.next().ok_or("quic line without a certificate hash")?;
                let hash =
                    herald::quic::CertHash::from_hex(hex).ok_or_else(|| format!("bad certificate hash {hex}"))?;
                self.quic = Some((addr, *hash.as_bytes()));
            }
            Some("longpoll") => self.longpoll = Some(words.next().ok_or("longpoll line without an address")?.parse()?),
            _ => {}
        }
        Ok(())
    }
}

impl ServerProc {
    /// Starts `program args…` with `env`, and waits (30 s at most) for the line `listening <addr>` on its stdout,
    /// taking in the [`Announced`] lines printed before it and skipping anything else. Its stdin is held open: the bench server stops when it closes.
    pub(crate) async fn start(program: &Path, args: &[String], env: &[String]) -> Result<Self, Error> {
        let _phase = phases::start("server start");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        for kv in env {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("--server-env wants KEY=VALUE, got {kv:?}"))?;
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut extra = Announced::default();
        let listening = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.trim().strip_prefix("listening ") {
                    return Ok(addr.parse::<SocketAddr>()?);
                }
                extra.line(&line)?;
            }
            Err::<_, Error>(format!("{} exited before listening", program.display()).into())
        };
        let addr = tokio::time::timeout(Duration::from_secs(30), listening)
            .await
            .map_err(|_| format!("{} did not start in 30 s", program.display()))??;
        // Keep draining its stdout so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let pid = child.id().ok_or("the server exited")?;
        Ok(Self { child, addr, pid, extra })
    }

    /// Closes its stdin and waits 5 s for it to exit, then kills it. (`bench-server` exits within a second; the
    /// Socket.IO peer, still flushing a backlog to 10,000 sockets after a saturated step, may not see its stdin
    /// close for much longer, and nothing of it is measured after the step.)
    pub(crate) async fn stop(mut self) -> Result<(), Error> {
        let _phase = phases::start("server stop");
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// Samples the process status until it stops changing (three samples 500 ms apart within 0.5 % or 64 KiB), after
/// waiting at least `least`, at most `most` in all.
pub(crate) async fn settled_status(pid: u32, least: Duration, most: Duration) -> Result<ProcStatus, Error> {
    let _phase = phases::start("memory settle");
    tokio::time::sleep(least).await;
    let deadline = Instant::now() + most;
    let mut window: Vec<ProcStatus> = Vec::new();
    loop {
        let s = ProcStatus::read(pid)?;
        window.push(s);
        if window.len() > 3 {
            window.remove(0);
        }
        if window.len() == 3 {
            let (lo, hi) = window.iter().fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.rss), hi.max(s.rss)));
            if hi - lo <= (hi / 200).max(64 * 1024) || Instant::now() >= deadline {
                return Ok(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A worker process (`herald-load worker`) running one [`Job`].
pub(crate) struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    name: String,
}

impl WorkerProc {
    /// Starts a worker with `threads` tokio threads and hands it `job`.
    pub(crate) async fn spawn(name: String, job: &Job, threads: usize) -> Result<Self, Error> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("worker")
            .arg(format!("--threads={threads}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no worker stdin")?;
        let stdout = child.stdout.take().ok_or("no worker stdout")?;
        let mut w = Self { child, stdin, lines: BufReader::new(stdout).lines(), name };
        w.write(&serde_json::to_string(job)?).await?;
        Ok(w)
    }

    async fn write(&mut self, line: &str) -> Result<(), Error> {
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn reply(&mut self, wait: Duration) -> Result<Reply, Error> {
        let line = tokio::time::timeout(wait, self.lines.next_line())
            .await
            .map_err(|_| format!("{}: no answer within {wait:?}", self.name))??
            .ok_or_else(|| format!("{}: exited", self.name))?;
        let reply: Reply =
            serde_json::from_str(&line).map_err(|e| format!("{}: bad line {line:.200}: {e}", self.name))?;
        if let Reply::Failed(e) = reply {
            return Err(format!("{}: {e}", self.name).into());
        }
        Ok(reply)
    }

    /// Its process id (`None` once it exited).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the job's set-up (connections open and subscribed).
    pub(crate) async fn ready(&mut self, wait: Duration) -> Result<Ready, Error> {
        match self.reply(wait).await? {
            Reply::Ready(r) => Ok(r),
            other => Err(format!("{}: expected ready, got {other:?}", self.name).into()),
        }
    }

    /// Sends an order (a step to run).
    pub(crate) async fn order(&mut self, order: &Order) -> Result<(), Error> {
        self.write(&serde_json::to_string(order)?).await
    }

    /// Waits for a step's report.
    pub(crate) async fn done(&mut self, wait: Duration) -> Result<StepReport, Error> {
        match self.reply(wait).await? {
            Reply::Done(r) => Ok(r),
            other => Err(format!("{}: expected a step report, got {other:?}", self.name).into()),
        }
    }

    /// Tells it to close its connections and waits (30 s at most) for it to exit.
    pub(crate) async fn stop(mut self) {
        let _ = self.write(&serde_json::to_string(&Order::Stop).unwrap_or_default()).await;
        // Its stdin is closed too: the worker's runtime cannot shut down while its stdin reader (a blocking
        // thread) still waits for a line, so an open stdin would hold it up until the timeout below.
        let Self { mut child, stdin, .. } = self;
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// Runs `order` on every worker at once and collects their reports.
pub(crate) async fn run_all(
    workers: &mut [WorkerProc],
    order: &Order,
    wait: Duration,
) -> Result<Vec<StepReport>, Error> {
    for w in workers.iter_mut() {
        w.order(order).await?;
    }
    let mut reports = Vec::with_capacity(workers.len());
    for w in workers.iter_mut() {
        reports.push(w.done(wait).await?);
    }
    Ok(reports)
}

/// Waits for every worker's set-up and merges their ready reports.
pub(crate) async fn ready_all(workers: &mut [WorkerProc], wait: Duration) -> Result<Ready, Error> {
    let _phase = phases::start("connect");
    let mut all = Ready::default();
    for w in workers.iter_mut() {
        let r = w.ready(wait).await?;
        all.merge(&r);
    }
    if all.failed > 0 {
        return Err(format!(
            "{} of {} connections failed; first error: {}",
            all.failed,
            all.failed + all.connected,
            all.first_error.as_deref().unwrap_or("?")
        )
        .into());
    }
    Ok(all)
}

/// Stops every worker, all at once.
pub(crate) async fn stop_all(workers: Vec<WorkerProc>) {
    let _phase = phases::start("client stop");
    futures_util::future::join_all(workers.into_iter().map(WorkerProc::stop)).await;
}

/// Splits `total` connections into `ceil(total / per_process)` nearly equal parts: `(first, count)` each.
pub(crate) fn split(total: usize, per_process: usize) -> Vec<(usize, usize)> {
    let procs = total.div_ceil(per_process.max(1)).max(1);
    let base = total / procs;
    let extra = total % procs;
    let mut first = 0;
    (0..procs)
        .map(|i| {
            let count = base + usize::from(i < extra);
            let part = (first, count);
            first += count;
            part
        })
        .collect()
}

/// A minimal HTTP/1.1 client on one kept-alive connection, for the bench server's admin API.
pub(crate) struct Http {
    stream: BufReader<TcpStream>,
    host: SocketAddr,
}

impl Http {
    /// Connects to `addr`.
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream: BufReader::new(stream), host: addr })
    }

    /// `POST path` with a JSON body; returns the status code and the response body.
    pub(crate) async fn post(&mut self, path: &str, body: &str) -> Result<(u16, String), Error> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad HTTP status line {status_line:?}"))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err("HTTP connection closed in the headers".into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut buf = vec![0; length];
        self.stream.read_exact(&mut buf).await?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_announced_transports() {
        let mut a = Announced::default();
        a.line("some log line").expect("ignored");
        a.line(&format!("quic 127.0.0.1:4433 {}", "ab".repeat(32))).expect("quic");
        a.line("longpoll 127.0.0.1:8081").expect("longpoll");
        assert_eq!(a.quic, Some(("127.0.0.1:4433".parse().expect("addr"), [0xab; 32])));
        assert_eq!(a.longpoll, Some("127.0.0.1:8081".parse().expect("addr")));
        assert!(Announced::default().line("quic 127.0.0.1:1 nothex").is_err());
        assert!(Announced::default().line("longpoll").is_err());
    }

    #[test]
    fn splits_connections_evenly() {
        assert_eq!(split(19_000, 10_000), vec![(0, 9_500), (9_500, 9_500)]);
        assert_eq!(split(10_000, 10_000), vec![(0, 10_000)]);
        assert_eq!(split(7, 3), vec![(0, 3), (3, 2), (5, 2)]);
        assert_eq!(split(0, 10), vec![(0, 0)]);
    }
}
