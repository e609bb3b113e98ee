//! The exporter's HTTP/1.1 server: GET /metrics and GET /healthz, one request per connection.
//!
//! Written on tokio's sockets rather than with an HTTP crate: a scraper sends one small GET and
//! reads one response, so reading the request head and answering with `Connection: close` is
//! all the protocol needed, and the agent keeps its dependencies (and build time) small.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{Shared, exposition, lock, own_usage};

/// The largest request head read: a scraper's is a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// A connection that has not sent its request (or read its answer) by then is dropped, so idle
/// or slow clients cannot pile up.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the runtime stops; each is answered in a task of its own.
pub async fn run(listener: TcpListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &shared)).await;
                });
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                log::warn!("twtrace serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A parsed request: its method, path (query string removed) and whether the client asked for
/// OpenMetrics.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub openmetrics: bool,
}

/// Parses a request head (up to the blank line).
pub fn parse(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n").flat_map(|l| l.split('\n'));
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?;
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value
                    .to_ascii_lowercase()
                    .contains("application/openmetrics-text")
        })
    });
    Some(Request {
        method,
        path,
        openmetrics,
    })
}

/// The status, content type and body answering `req`.
pub fn respond(req: &Request, shared: &Shared) -> (u16, &'static str, String) {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method != "GET" && req.method != "HEAD" {
        return (405, PLAIN, "only GET\n".to_owned());
    }
    match req.path.as_str() {
        "/metrics" => {
            // Read before the lock: the lock is the pipeline's too.
            let own = own_usage();
            let state = lock(shared);
            match exposition(&state, own, req.openmetrics) {
                Ok((body, content_type)) => (200, content_type, body),
                Err(e) => (500, PLAIN, format!("encoding the metrics: {e}\n")),
            }
        }
        "/healthz" => match lock(shared).unhealthy(Instant::now()) {
            None => (200, PLAIN, "ok\n".to_owned()),
            Some(why) => (503, PLAIN, format!("{why}\n")),
        },
        "/" => (
            200,
            PLAIN,
            "twtrace exporter: /metrics, /healthz\n".to_owned(),
        ),
        _ => (
            404,
            PLAIN,
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_HEAD {
            return reply(
                &mut stream,
                431,
                "text/plain",
                "request head too large\n",
                false,
            )
            .await;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let Some(req) = parse(&text) else {
        return reply(&mut stream, 400, "text/plain", "bad request\n", false).await;
    };
    let (status, content_type, body) = respond(&req, shared);
    reply(
        &mut stream,
        status,
        content_type,
        &body,
        req.method == "HEAD",
    )
    .await
}

async fn reply(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}
