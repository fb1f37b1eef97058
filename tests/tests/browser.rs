//! A real browser against the reference server: headless Chromium opens the demo page, which talks to the
//! server over WebSocket **and** WebTransport (pinning the development certificate with
//! `serverCertificateHashes`) and exchanges messages between the two; the test asserts what the page reports.
//!
//! Needs Debian's `chromium`, Node.js and `tests/browser/node_modules` (`.ci/browser-setup.sh` installs all
//! three). Without them the test is skipped loudly, or fails when `HERALD_REQUIRE_SERVICES=1`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use herald::core::auth::{TokenClaims, mint_hs256};
use serde_json::{Value, json};

const SECRET: &str = "a-browser-test-secret-of-at-least-32-bytes";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// What is missing to run the test, if anything.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !chromium().is_file() {
        missing.push(format!("chromium at {} (apt-get install chromium, or set CHROMIUM)", chromium().display()));
    }
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing.push("node (Node.js 18+)".into());
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        missing.push(format!("playwright-core (npm ci in {})", browser_dir().display()));
    }
    missing
}

/// Builds the `herald-server` binary into this test's target directory (a no-op when it is up to date) and
/// returns its path. A package cannot depend on a binary, so this is how an end-to-end test gets it.
fn herald_server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/<profile>/deps/browser-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "herald-server", "--bin", "herald-server", "--target-dir"]).arg(target_dir);
    if profile != "debug" {
        cmd.args(["--profile", profile]);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building herald-server failed");
    let bin = profile_dir.join(format!("herald-server{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

fn token(user: &str) -> String {
    let exp = herald::core::model::now_millis() / 1000 + 3600;
    mint_hs256(SECRET.as_bytes(), &TokenClaims { sub: user.into(), exp: Some(exp), ..TokenClaims::default() })
        .expect("mint")
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server with QUIC and the demo page; returns it and its HTTP address.
fn start_server(bin: &Path) -> (Running, String) {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_AUTH__JWT_HS256_SECRET", SECRET)
        .env("HERALD_QUIC__ENABLED", "true")
        .env("HERALD_QUIC__LISTEN", "127.0.0.1:0")
        .env("HERALD_LONGPOLL__ENABLED", "false")
        .env("HERALD_QUIC__DEMO_PAGE", "true")
        // A fresh SQLite data directory per run, outside the repository: the page's sends use fixed client
        // ids, which a database kept from an earlier run would answer as duplicates (stored, not delivered).
        .env("HERALD_DATA_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{}", std::process::id())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn herald-server");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut quic = false;
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the server prints its addresses");
        quic |= line.starts_with("quic listening on ");
        if let Some(addr) = line.strip_prefix("listening on ") {
            assert!(quic, "the server started without QUIC");
            return (running, addr.trim().to_owned());
        }
    }
}

/// Runs the page in headless Chromium; returns what it reported.
fn run_page(url: &str) -> Value {
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("herald-demo.png");
    let mut child = Command::new("node")
        .arg("run.mjs")
        .arg(url)
        .arg(&screenshot)
        .current_dir(browser_dir())
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let Ok(text) = rx.recv_timeout(Duration::from_secs(120)) else {
        let _ = child.kill();
        panic!("the browser run did not finish within 120 s");
    };
    let status = child.wait().expect("wait for node");
    assert!(status.success(), "the browser run failed ({status}); its output: {text}");
    eprintln!("browser screenshot: {}", screenshot.display());
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("the page's result is not JSON ({e}): {text}"))
}

#[test]
fn chromium_talks_to_the_server_over_websocket_and_webtransport() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let message = format!("browser test prerequisites missing: {}; run .ci/browser-setup.sh", missing.join(", "));
        if std::env::var("HERALD_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("{message}");
        }
        eprintln!("SKIPPED chromium_talks_to_the_server_over_websocket_and_webtransport: {message}");
        return;
    }
    let bin = herald_server_binary();
    let (_server, addr) = start_server(&bin);
    let url =
        format!("http://{addr}/demo/?ws_user=alice&ws_token={}&wt_user=bob&wt_token={}", token("alice"), token("bob"));
    let result = run_page(&url);
    assert_eq!(result["ok"], json!(true), "the page failed: {result}");
    assert_eq!(result["ws_user"], json!("alice"), "{result}");
    assert_eq!(result["wt_user"], json!("bob"), "{result}");
    assert_eq!(result["received_over_webtransport"], json!("hello from WebSocket"), "{result}");
    assert_eq!(result["received_over_websocket"], json!("hello from WebTransport"), "{result}");
    assert_eq!(result["sent_seqs"], json!([1, 2]), "{result}");
}
