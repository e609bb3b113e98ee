//! `twtrace serve` against real traffic: the exporter's counter for a known client process is
//! exactly its TIME_WAIT entries, /healthz answers 200, `promtool check metrics` accepts the
//! exposition, and a real Prometheus (Debian's package, which `cargo xtask setup` installs)
//! scraping it every second gets the same number through its query API. A port already taken
//! is refused with one line and exit status 1.
//!
//! Needs root for the tracing (without it those tests print `SKIPPED`). Without Prometheus the
//! Prometheus part prints `SKIPPED` too, unless TWTRACE_REQUIRE_EBPF=1 (set by
//! `cargo xtask test`), where it is a failure.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use twtrace_tests::{Attached, ChildGuard, Mode, Traffic, skip_unless_root, twtrace_bin};

const TEST: &str = "serve";

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// A loopback port nobody listens on now (the kernel's pick for port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One HTTP GET; returns the status, the headers (lowercased names) and the body.
fn get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {response:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// The value of the series of `name` whose labels start with `comm="<comm>"`, in the Prometheus
/// text format.
fn sample(body: &str, name: &str, comm: &str) -> Option<f64> {
    let prefix = format!("{name}{{comm=\"{comm}\",");
    body.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn plain(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Scrapes until `want` holds, or panics with the last body after `timeout`.
fn scrape_until(port: u16, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok((200, _, body)) = get(port, "/metrics", None) {
            if want(&body) {
                return body;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{TEST}: /metrics never matched within {timeout:?}; last:\n{last}");
}

fn strict() -> bool {
    std::env::var_os("TWTRACE_REQUIRE_EBPF").is_some_and(|v| v == "1")
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Prometheus's `promtool` and server, or None (said loudly) when missing and not strict.
fn prometheus() -> Option<(PathBuf, PathBuf)> {
    match (find_program("prometheus"), find_program("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ => {
            let why = "prometheus is not installed (`cargo xtask setup` installs Debian's package)";
            assert!(!strict(), "{TEST}: {why}");
            eprintln!("SKIPPED: {TEST}: the Prometheus checks: {why}");
            None
        }
    }
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn exporter_counts_a_known_client_exactly() {
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 40;
    const CLIENT: &str = "twc-serve";
    const SERVER: &str = "tws-serve";
    let port = free_port();
    let traffic = Traffic::new(driver(), Mode::ClientFirst, N, SERVER, CLIENT);
    let (mut peers, twtrace) = traffic.start(|server_port| {
        Attached::start(&[
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--port".into(),
            server_port.to_string(),
        ])
    });
    peers.wait();
    let name = "twtrace_timewait_entered_total";
    let body = scrape_until(port, Duration::from_secs(15), |b| {
        sample(b, name, CLIENT) == Some(N as f64)
    });
    // Nothing more arrives later: the count is exact, not a lower bound.
    std::thread::sleep(Duration::from_millis(2500));
    let started = Instant::now();
    let (status, head, body2) = get(port, "/metrics", None).expect("scrape");
    let scrape_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(sample(&body2, name, CLIENT), Some(N as f64), "{body2}");
    assert_eq!(
        sample(&body2, "twtrace_opens_total", CLIENT),
        Some(N as f64)
    );
    assert_eq!(
        sample(&body2, "twtrace_closes_total", CLIENT),
        Some(N as f64)
    );
    assert_eq!(
        sample(&body2, "twtrace_opens_total", SERVER),
        Some(N as f64)
    );
    assert_eq!(
        sample(&body2, name, SERVER),
        None,
        "the server made no TIME_WAIT"
    );
    assert_eq!(
        sample(&body2, "twtrace_timewait_sockets", CLIENT),
        Some(N as f64)
    );
    assert_eq!(sample(&body2, name, "other"), Some(0.0));
    assert_eq!(plain(&body2, "twtrace_events_lost_total"), Some(0.0));
    let rss = plain(&body2, "twtrace_agent_resident_memory_bytes").expect("RSS");
    eprintln!(
        "[{TEST}] scrape took {scrape_ms:.1} ms, {} bytes; twtrace RSS {:.1} MB",
        body2.len(),
        rss / 1e6
    );
    drop(body);

    let (status, _, health) = get(port, "/healthz", None).expect("healthz");
    assert_eq!((status, health.as_str()), (200, "ok\n"));
    let (status, head, om) = get(
        port,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0,text/plain;q=0.5"),
    )
    .expect("scrape");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"));

    if let Some((prometheus, promtool)) = prometheus() {
        promtool_accepts(&promtool, &body2);
        prometheus_gets(&prometheus, port, CLIENT, N);
    }

    let stopped = twtrace.stop_after(Duration::ZERO);
    assert!(
        stopped.status.success(),
        "twtrace serve exited with {}; stderr: {:#?}",
        stopped.status,
        stopped.stderr
    );
}

/// `promtool check metrics` reads the exposition on stdin and lints it.
fn promtool_accepts(promtool: &Path, body: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus scraping twtrace every second, asked through its HTTP API for the client's
/// counter until it has the exact value.
fn prometheus_gets(prometheus: &Path, port: u16, client: &str, n: usize) {
    let dir = std::env::temp_dir().join(format!("twtrace-serve-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: twtrace\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("write the config");
    let web = free_port();
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log file"));
    let guard = ChildGuard::spawn("prometheus", &mut cmd);
    let query = format!("twtrace_timewait_entered_total{{comm=\"{client}\"}}");
    let path = format!("/api/v1/query?query={}", encode(&query));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    let got = loop {
        if let Ok((200, _, body)) = get(web, &path, None) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let value = v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned);
            last = body;
            if value.is_some() {
                break value;
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    drop(guard);
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        got.as_deref(),
        Some(n.to_string().as_str()),
        "Prometheus's answer to {query}: {last}\nits log:\n{log}"
    );
    eprintln!("[{TEST}] Prometheus has {query} = {n}");
}

#[test]
fn a_taken_port_is_refused_in_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address");
    let out = Command::new(twtrace_bin())
        .args(["serve", "--listen", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run twtrace serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "twtrace: --listen {addr}: the address is already in use"
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
