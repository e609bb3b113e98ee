//! Calibration: how many transitions one generator connection makes, counted by twtrace itself
//! on a short run with a port filter.

use std::{
    fs,
    net::{Ipv4Addr, TcpListener},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    children::{ChildGuard, Scratch, StderrLines, file_stdout},
    measure::{Attach, Bins, DRAIN, SETTLE, run_generator, wait_attached},
    parse::Summary,
};
use crate::shell;

/// Connections of the calibration run: enough to average out, few enough to take well under a
/// second with one client thread.
const CALIBRATION_CONNECTIONS: u64 = 300;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Calibration {
    pub connections: u64,
    /// Lines about the generator's connections.
    pub connection_lines: u64,
    /// Lines about the listener itself (CLOSE -> LISTEN, LISTEN -> CLOSE).
    pub listener_lines: u64,
}

impl Calibration {
    pub fn per_connection(&self) -> f64 {
        if self.connections == 0 {
            return 0.0;
        }
        self.connection_lines as f64 / self.connections as f64
    }

    /// Events `generators` generator processes making `connections` in all should produce:
    /// each one also opens and closes its own listener.
    pub fn expected(&self, connections: u64, generators: usize) -> u64 {
        (connections as f64 * self.per_connection()).round() as u64
            + self.listener_lines * generators as u64
    }
}

/// Counts `twtrace trace --json --port PORT` lines: those of the listener (local port PORT, no
/// remote port) and those of connections (everything else, including `CLOSE -> SYN_SENT`,
/// which has local port 0).
fn count_calibration_lines(jsonl: &str, port: u16) -> Result<(u64, u64)> {
    let (mut connection, mut listener) = (0, 0);
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        let field = |name: &str| value.get(name).and_then(serde_json::Value::as_u64);
        let (Some(lport), Some(rport)) = (field("lport"), field("rport")) else {
            bail!("no lport/rport in {line:?}");
        };
        if lport == u64::from(port) && rport == 0 {
            listener += 1;
        } else {
            connection += 1;
        }
    }
    Ok((connection, listener))
}

/// A port nobody listens on right now, for the calibration run's port filter.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 for a port")?;
    Ok(listener.local_addr().context("local address")?.port())
}

pub fn calibrate(bins: &Bins, scratch: &Scratch) -> Result<Calibration> {
    let port = free_port()?;
    let output = scratch.file("calibration.jsonl");
    let mut cmd = Command::new(&bins.twtrace);
    cmd.args(["trace", "--json", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(file_stdout(&output)?)
        .stderr(Stdio::piped());
    let shown = shell::display(&cmd);
    eprintln!(
        "bench: calibrating: `{shown}` during {CALIBRATION_CONNECTIONS} connections of 1 client \
         and 1 server thread"
    );
    let mut tracer = ChildGuard::spawn("twtrace", &mut cmd)?;
    let mut stderr = StderrLines::follow(&mut tracer)?;
    match wait_attached(&mut tracer, &mut stderr, "twtrace: tracing", None)? {
        Attach::Ready => {}
        Attach::Exited(status) => {
            stderr.finish(Duration::from_secs(2));
            bail!(
                "calibration: `{shown}` exited ({status}): {}",
                stderr.reason()
            );
        }
        Attach::TimedOut => bail!("calibration: `{shown}` did not attach"),
    }
    thread::sleep(SETTLE);
    let port_arg = port.to_string();
    let count = CALIBRATION_CONNECTIONS.to_string();
    let run = run_generator(
        bins,
        scratch,
        &[
            "--port",
            &port_arg,
            "--count",
            &count,
            "--clients",
            "1",
            "--servers",
            "1",
            "--duration",
            "30",
        ],
    )?;
    thread::sleep(DRAIN);
    let (status, killed) = tracer.stop()?;
    stderr.finish(Duration::from_secs(5));
    if killed || !status.success() {
        bail!(
            "calibration: `{shown}` did not stop cleanly ({status}): {}",
            stderr.reason()
        );
    }
    let summary = stderr.seen.iter().rev().find_map(|l| Summary::parse(l));
    if let Some(summary) = &summary
        && summary.lost > 0
    {
        bail!("calibration: twtrace lost {} events", summary.lost);
    }
    let text =
        fs::read_to_string(&output).with_context(|| format!("reading {}", output.display()))?;
    let (connection_lines, listener_lines) = count_calibration_lines(&text, port)?;
    let calibration = Calibration {
        connections: run.connections,
        connection_lines,
        listener_lines,
    };
    if run.connections != CALIBRATION_CONNECTIONS
        || !(1.0..=30.0).contains(&calibration.per_connection())
    {
        bail!(
            "calibration: implausible: {connection_lines} lines for {} connections (wanted {})",
            run.connections,
            CALIBRATION_CONNECTIONS
        );
    }
    Ok(calibration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_lines_split_listener_and_connections() {
        let port = 4000;
        let jsonl = r#"{"lport":4000,"rport":0,"old":"CLOSE","new":"LISTEN"}
{"lport":0,"rport":4000,"old":"CLOSE","new":"SYN_SENT"}
{"lport":50000,"rport":4000,"old":"SYN_SENT","new":"ESTABLISHED"}
{"lport":4000,"rport":50000,"old":"LISTEN","new":"SYN_RECV"}

{"lport":4000,"rport":0,"old":"LISTEN","new":"CLOSE"}
"#;
        assert_eq!(count_calibration_lines(jsonl, port).expect("valid"), (3, 2));
        assert!(count_calibration_lines("not json\n", port).is_err());
        assert!(count_calibration_lines("{\"pid\":1}\n", port).is_err());
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        assert_eq!(cal.per_connection(), 10.0);
        assert_eq!(cal.expected(14_000, 1), 140_002);
        // Four generators, four listeners.
        assert_eq!(cal.expected(32_000, 4), 320_008);
        assert_eq!(Calibration::default().per_connection(), 0.0);
    }
}
