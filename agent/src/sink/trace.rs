//! The `trace` view: one line per transition, as text for people or JSON Lines for jq.

use std::{
    borrow::Cow,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr},
};

use jiff::Timestamp;

use super::{End, Sink};
use crate::{
    clock::WallClock,
    container::{CgroupPaths, Container},
    event::{Call, Transition},
    model::snapshot::SCHEMA,
    stream::{Stats, Tally},
    text::{escape, write_json},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Writes transitions to `out`. Write errors are kept (the closure that feeds the printer cannot
/// return them) and surface through [`Printer::flush`].
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    clock: WallClock,
    header_done: bool,
    error: Option<io::Error>,
    /// Live: the owners' cgroups, to name their containers. A recording's cgroup ids belong
    /// to the machine it was made on, so a replay names none.
    cgroups: Option<CgroupPaths>,
    /// The JSON line being built: cleared per line, its capacity kept, so a line costs no
    /// allocation in steady state and reaches `out` in one `write_all`.
    line: Vec<u8>,
    /// The date and time of day of the last whole second printed in JSON.
    second: SecondText,
}

/// `YYYY-MM-DDTHH:MM:SS` of one Unix second, as jiff prints it: formatted once per second of
/// event time rather than per event (jiff's `{:.6}` was a visible part of the `--json` profile
/// at ~400,000 events/s).
#[derive(Default)]
struct SecondText {
    /// The Unix second `text` is of; `None` before the first.
    second: Option<u64>,
    text: Vec<u8>,
}

impl SecondText {
    /// The text of `second`, formatted by jiff when it differs from the last one asked for.
    /// An error (a time out of jiff's range) as the `Timestamp` conversion gives it.
    fn get(&mut self, second: u64) -> io::Result<&[u8]> {
        if self.second != Some(second) {
            self.second = None;
            let secs = i64::try_from(second).map_err(io::Error::other)?;
            let time = Timestamp::from_second(secs).map_err(io::Error::other)?;
            self.text.clear();
            // What `{time:.6}` prints at a whole second, the microseconds cut off again, so the
            // date and time are jiff's own to the byte.
            write!(self.text, "{time:.6}")?;
            let len = self
                .text
                .strip_suffix(b".000000Z")
                .map(<[u8]>::len)
                .ok_or_else(|| {
                    let text = String::from_utf8_lossy(&self.text);
                    io::Error::other(format!("unexpected time {text:?}"))
                })?;
            self.text.truncate(len);
            self.second = Some(second);
        }
        Ok(&self.text)
    }
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format, clock: WallClock) -> Self {
        Self {
            out,
            format,
            clock,
            header_done: false,
            error: None,
            cgroups: None,
            line: Vec::with_capacity(512),
            second: SecondText::default(),
        }
    }

    /// Names each owner's container from its cgroup (live only: see `cgroups`).
    pub fn with_containers(mut self, cgroups: CgroupPaths) -> Self {
        self.cgroups = Some(cgroups);
        self
    }

    pub fn print(&mut self, t: &Transition) {
        if self.error.is_some() {
            return;
        }
        let result = match self.format {
            Format::Json => self.json(t),
            Format::Text => self.text(t),
        };
        if let Err(e) = result {
            self.error = Some(e);
        }
    }

    /// Flushes what was printed. Called once per batch of events, so a pipe sees each batch as it
    /// arrives (`| jq` works live) without a write per line at 100,000 events/s.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn wall_time(&self, t: &Transition) -> io::Result<Timestamp> {
        Timestamp::try_from(self.clock.to_system_time(t.mono_ns)).map_err(io::Error::other)
    }

    /// One JSON object per line, fields in the documented order. Written directly rather than
    /// through a derived `Serialize`: at peak this runs ~400,000 times a second, and serde's map
    /// machinery (keys, per-field calls, a String for the time) was a third of the trace view's
    /// CPU (perf, one churn generator). Every value but the name is a number, an address or one
    /// of twtrace's own ASCII words, so only the name goes through the escaping serializer.
    ///
    /// Nor through `write!`: the `io::Write` adapter, `pad_integral` and the integers' `Display`
    /// then led the profile. The line is built in [`Printer::line`] (integers by `itoa`, IPv4
    /// addresses by hand, the time from the second's cached text, see [`SecondText`]) and goes
    /// to `out` in one `write_all`. The output is the same to the byte (tested against the
    /// `write!` version).
    fn json(&mut self, t: &Transition) -> io::Result<()> {
        // Lent out of `self` for the line, so the container is borrowed, not copied.
        let mut cgroups = self.cgroups.take();
        let container = match cgroups.as_mut() {
            Some(paths) if t.cgroup_id != 0 => paths.container_ref(t.cgroup_id),
            _ => None,
        };
        let built = self.json_line(t, container);
        self.cgroups = cgroups;
        built?;
        self.out.write_all(&self.line)
    }

    /// Builds `t`'s JSON line, newline included, in [`Printer::line`].
    fn json_line(&mut self, t: &Transition, container: Option<&Container>) -> io::Result<()> {
        // RFC 3339 in UTC to the microsecond, the rest cut off (what jiff's `{:.6}` prints).
        let ns = self.clock.to_unix_ns(t.mono_ns);
        let micros = (ns % 1_000_000_000) / 1_000;
        let date_time = self.second.get(ns / 1_000_000_000)?;
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(b"{\"schema\":");
        push_int(line, SCHEMA);
        line.extend_from_slice(b",\"time\":\"");
        line.extend_from_slice(date_time);
        line.push(b'.');
        push_micros(line, micros);
        line.extend_from_slice(b"Z\",\"pid\":");
        push_int(line, t.pid);
        line.extend_from_slice(b",\"comm\":");
        write_json(&mut *line, t.comm.to_str().as_ref())?;
        line.extend_from_slice(b",\"family\":\"");
        line.extend_from_slice(t.family.name().as_bytes());
        line.extend_from_slice(b"\",\"laddr\":\"");
        push_ip(line, t.local.ip())?;
        line.extend_from_slice(b"\",\"lport\":");
        push_int(line, t.local.port());
        line.extend_from_slice(b",\"raddr\":\"");
        push_ip(line, t.remote.ip())?;
        line.extend_from_slice(b"\",\"rport\":");
        push_int(line, t.remote.port());
        line.extend_from_slice(b",\"old\":\"");
        line.extend_from_slice(t.old.name().as_bytes());
        line.extend_from_slice(b"\",\"new\":\"");
        line.extend_from_slice(t.new.name().as_bytes());
        line.extend_from_slice(b"\",\"attribution\":\"");
        line.extend_from_slice(t.attribution.name().as_bytes());
        line.push(b'"');
        if let Some(cookie) = t.cookie {
            line.extend_from_slice(b",\"cookie\":");
            push_int(line, cookie);
        }
        if let Some(reset) = t.reset {
            line.extend_from_slice(b",\"reset\":\"");
            line.extend_from_slice(reset.name().as_bytes());
            line.push(b'"');
        }
        if t.is_accept() {
            // Not a state change: the process took the socket with accept() (old == new).
            line.extend_from_slice(b",\"accept\":true");
        }
        if let Some(f) = t.failure {
            // Not a state change either: a failed connect() or bind() (old == new == CLOSE).
            line.extend_from_slice(b",\"failure\":{\"call\":\"");
            line.extend_from_slice(f.call.name().as_bytes());
            line.extend_from_slice(b"\",\"errno\":\"");
            line.extend_from_slice(f.errno.name().as_bytes());
            line.extend_from_slice(b"\"}");
        }
        if t.orphan {
            // FIN_WAIT2 -> FIN_WAIT2: now in a timewait socket in the FIN_WAIT2 substate.
            line.extend_from_slice(b",\"orphan\":true");
        }
        // Container ids and pod UIDs are hex digits and dashes (the parser accepts no other).
        if let Some(c) = container {
            line.extend_from_slice(b",\"container\":\"");
            line.extend_from_slice(c.id.as_bytes());
            line.extend_from_slice(b"\",\"runtime\":\"");
            line.extend_from_slice(c.runtime.name().as_bytes());
            line.push(b'"');
            if let Some(pod) = &c.pod_uid {
                line.extend_from_slice(b",\"pod_uid\":\"");
                line.extend_from_slice(pod.as_bytes());
                line.push(b'"');
            }
        }
        line.extend_from_slice(b",\"current_pid\":");
        push_int(line, t.current_pid);
        line.extend_from_slice(b",\"cgroup_id\":");
        push_int(line, t.cgroup_id);
        line.extend_from_slice(b",\"netns\":");
        push_int(line, t.netns);
        line.extend_from_slice(b"}\n");
        Ok(())
    }

    fn text(&mut self, t: &Transition) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:<15} {:>7} {:<15} {:<45} {:<25} OWNER FROM",
                "TIME(UTC)", "PID", "COMM", "LOCAL -> REMOTE", "OLD -> NEW"
            )?;
        }
        // The time of day in UTC to the microsecond (15 characters, the column's width): the
        // date is noise in a live stream.
        let time = self.wall_time(t)?.strftime("%H:%M:%S%.6f");
        let pid = if t.pid == 0 {
            "?".to_owned()
        } else {
            t.pid.to_string()
        };
        // Names are the processes' own choice: escaped, so none can move the cursor or fake a
        // line (an escaped name may be wider than its column; the row then shifts, all of it).
        let name = t.comm.to_str();
        let comm = if t.pid == 0 {
            Cow::Borrowed("-")
        } else {
            escape(&name)
        };
        if let Some(f) = t.failure {
            // One sentence instead of the columns: what failed, why, and toward what.
            let (call, target) = match f.call {
                Call::Connect => ("connect()", format!("-> {}", t.remote)),
                Call::Bind => ("bind()", format!("on {}", t.local)),
            };
            return writeln!(
                self.out,
                "{time} {pid:>7} {comm:<15} {call} failed: {} {target}",
                f.errno
            );
        }
        let peers = format!("{} -> {}", t.local, t.remote);
        let states = if t.is_accept() {
            format!("accept() in {}", t.new)
        } else {
            format!("{} -> {}", t.old, t.new)
        };
        let mut by = t.attribution.name().to_owned();
        if t.orphan {
            // As `ss` shows it: FIN-WAIT-2 with a timewait timer, its process gone.
            by.push_str(", orphan (timewait)");
        }
        if let Some(r) = t.reset {
            by.push_str(", reset ");
            by.push_str(r.name());
        }
        writeln!(
            self.out,
            "{time} {pid:>7} {comm:<15} {peers:<45} {states:<25} {by}"
        )
    }
}

/// `n` in decimal, as `Display` writes it (`itoa`: no `core::fmt` on the `--json` hot path).
fn push_int(line: &mut Vec<u8>, n: impl itoa::Integer) {
    line.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `micros` (below 1,000,000) as exactly six digits, zeros in front.
fn push_micros(line: &mut Vec<u8>, micros: u64) {
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        // A remainder by 10 fits a byte.
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    line.extend_from_slice(&digits);
}

/// `ip` as its `Display` writes it: IPv4 by hand (almost every event), IPv6 through `Display`
/// (its `::` compression and embedded-IPv4 forms are not worth redoing).
fn push_ip(line: &mut Vec<u8>, ip: IpAddr) -> io::Result<()> {
    match ip {
        IpAddr::V4(v4) => {
            push_ipv4(line, v4);
            Ok(())
        }
        IpAddr::V6(v6) => write!(line, "{v6}"),
    }
}

/// `a.b.c.d`, each octet in decimal.
fn push_ipv4(line: &mut Vec<u8>, ip: Ipv4Addr) {
    let [a, b, c, d] = ip.octets();
    push_int(line, a);
    line.push(b'.');
    push_int(line, b);
    line.push(b'.');
    push_int(line, c);
    line.push(b'.');
    push_int(line, d);
}

/// The trace view as a sink: every selected event printed, flushed per batch.
pub struct TraceSink<W: Write> {
    printer: Printer<W>,
    /// Announce losses as they happen (live), not only in the summary.
    announce_losses: bool,
    lost_shown: u64,
    skipped_shown: u64,
}

impl<W: Write> TraceSink<W> {
    pub fn new(printer: Printer<W>, announce_losses: bool) -> Self {
        Self {
            printer,
            announce_losses,
            lost_shown: 0,
            skipped_shown: 0,
        }
    }
}

impl<W: Write> Sink for TraceSink<W> {
    /// The model knows which sockets an exited owner left to another process, so the trace
    /// can name the process that holds them now (`attribution: inherited`).
    fn wants_model(&self) -> bool {
        true
    }

    fn event(&mut self, t: &Transition) -> anyhow::Result<()> {
        self.printer.print(t);
        Ok(())
    }

    fn stats(&mut self, _s: &Stats, tally: &Tally) -> anyhow::Result<()> {
        let (lost, skipped) = (tally.kernel.lost, tally.kernel.skipped);
        if !self.announce_losses {
            return Ok(());
        }
        // stderr may be closed; the summary says it again.
        if lost > self.lost_shown {
            self.lost_shown = lost;
            let _ = writeln!(
                io::stderr(),
                "twtrace: {lost} events lost so far (ring buffer full: the output cannot keep up; \
                 narrow with --pid/--port or write to a file)"
            );
        }
        if skipped > self.skipped_shown {
            self.skipped_shown = skipped;
            let _ = writeln!(
                io::stderr(),
                "twtrace: {skipped} events skipped by the kernel so far (another BPF program was \
                 running on that CPU when they happened)"
            );
        }
        Ok(())
    }

    fn batch_done(&mut self) -> anyhow::Result<()> {
        Ok(self.printer.flush()?)
    }

    fn end(&mut self, _end: &End) -> anyhow::Result<()> {
        Ok(self.printer.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use twtrace_ebpf::{flags, tcp_state};

    use super::*;
    use crate::{
        container::Runtime,
        event::{Attribution, Call, Errno, Family, SyscallFailure, from_wire, tests::wire},
        state::{Reset, TcpState},
    };

    fn render(format: Format, events: &[twtrace_ebpf::Event]) -> String {
        // 2026-11-25T00:00:00Z at monotonic zero.
        render_at(1_795_564_800_000_000_000, format, events)
    }

    fn render_at(epoch_ns: i128, format: Format, events: &[twtrace_ebpf::Event]) -> String {
        let clock = WallClock::with_offset(epoch_ns);
        let mut p = Printer::new(Vec::new(), format, clock);
        for ev in events {
            p.print(&from_wire(ev).expect("valid"));
        }
        p.flush().expect("flush");
        String::from_utf8(p.into_inner()).expect("utf8")
    }

    #[test]
    fn json_line_has_the_documented_fields() {
        let mut ev = wire(tcp_state::FIN_WAIT2, tcp_state::CLOSE);
        ev.flags = flags::DESTROYED;
        ev.cookie = 77;
        let out = render(Format::Json, &[ev]);
        assert_eq!(out.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["time"], "2026-11-25T00:00:05.000000Z");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["laddr"], "127.0.0.1");
        assert_eq!(v["lport"], 51000);
        assert_eq!(v["raddr"], "10.1.2.3");
        assert_eq!(v["rport"], 8080);
        assert_eq!(v["old"], "FIN_WAIT2");
        assert_eq!(v["new"], "TIME_WAIT");
        assert_eq!(v["attribution"], "owner");
        assert_eq!(v["cookie"], 77);
        assert_eq!(v["current_pid"], 99);
        assert!(v.get("reset").is_none());
    }

    #[test]
    fn an_orphan_entry_stays_fin_wait2_and_says_so() {
        let mut ev = wire(tcp_state::FIN_WAIT2, tcp_state::CLOSE);
        ev.flags = flags::DESTROYED | flags::ORPHAN_FIN_WAIT2;
        let v: serde_json::Value =
            serde_json::from_str(render(Format::Json, &[ev]).trim()).expect("json");
        assert_eq!(
            (&v["old"], &v["new"]),
            (&"FIN_WAIT2".into(), &"FIN_WAIT2".into())
        );
        assert_eq!(v["orphan"], true);
        assert!(v.get("accept").is_none());
        let text = render(Format::Text, &[ev]);
        let line = text.lines().nth(1).expect("line");
        assert!(line.contains("FIN_WAIT2 -> FIN_WAIT2"), "{line}");
        assert!(line.ends_with("owner, orphan (timewait)"), "{line}");
        // Without the flag: TIME_WAIT, no orphan field.
        ev.flags = flags::DESTROYED;
        let v: serde_json::Value =
            serde_json::from_str(render(Format::Json, &[ev]).trim()).expect("json");
        assert_eq!(v["new"], "TIME_WAIT");
        assert!(v.get("orphan").is_none());
    }

    #[test]
    fn json_omits_unknown_cookie_and_names_resets() {
        let mut ev = wire(tcp_state::ESTABLISHED, tcp_state::CLOSE);
        ev.flags = flags::RESET_RECEIVED;
        let v: serde_json::Value =
            serde_json::from_str(render(Format::Json, &[ev]).trim()).expect("json");
        assert!(v.get("cookie").is_none());
        assert_eq!(v["new"], "CLOSE");
        assert_eq!(v["reset"], "received");
    }

    #[test]
    fn text_has_one_header_and_one_line_per_event() {
        let a = wire(tcp_state::CLOSE, tcp_state::SYN_SENT);
        let mut b = wire(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT);
        b.owner.tgid = 0;
        b.owner.how = twtrace_ebpf::how::UNKNOWN;
        let out = render(Format::Text, &[a, b]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("TIME(UTC)"));
        assert!(lines[1].starts_with("00:00:05.000000"), "{}", lines[1]);
        assert!(lines[1].contains("4242 curl"), "{}", lines[1]);
        assert!(lines[1].contains("127.0.0.1:51000 -> 10.1.2.3:8080"));
        assert!(lines[1].contains("CLOSE -> SYN_SENT"));
        assert!(lines[2].contains("      ? -"), "{}", lines[2]);
        assert!(lines[2].ends_with("unknown"));
    }

    #[test]
    fn a_failed_connect_is_one_line_naming_errno_and_destination() {
        use crate::event::tests::failed_connect;
        let mut bind = failed_connect();
        bind.call = twtrace_ebpf::call::BIND;
        bind.errno = twtrace_ebpf::errno::EADDRINUSE;
        bind.ends.sport = 8080;
        bind.ends.dport = 0;
        bind.ends.daddr = [0; 16];
        let out = render(Format::Text, &[failed_connect(), bind]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(
            lines[1],
            "00:00:05.000000    4242 curl            connect() failed: EADDRNOTAVAIL (Cannot \
             assign requested address) -> 10.1.2.3:8080"
        );
        assert_eq!(
            lines[2],
            "00:00:05.000000    4242 curl            bind() failed: EADDRINUSE (Address already \
             in use) on 0.0.0.0:8080"
        );

        let out = render(Format::Json, &[failed_connect(), bind]);
        let v: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(
            v[0]["failure"],
            serde_json::json!({"call": "connect", "errno": "EADDRNOTAVAIL"})
        );
        assert_eq!(
            (&v[0]["raddr"], &v[0]["rport"]),
            (&"10.1.2.3".into(), &8080.into())
        );
        assert_eq!(
            (&v[0]["old"], &v[0]["new"]),
            (&"CLOSE".into(), &"CLOSE".into())
        );
        assert!(v[0].get("accept").is_none(), "{}", v[0]);
        assert_eq!(
            v[1]["failure"],
            serde_json::json!({"call": "bind", "errno": "EADDRINUSE"})
        );
        assert_eq!(v[1]["lport"], 8080);
        // A transition has none.
        let plain = render(Format::Json, &[wire(tcp_state::CLOSE, tcp_state::SYN_SENT)]);
        assert!(!plain.contains("failure"), "{plain}");
    }

    #[test]
    fn times_are_cut_to_the_microsecond() {
        // 999.9996 ms past the second: cut, not rounded up to the next second.
        let epoch_ns = 1_795_564_800_999_999_600;
        let ev = wire(tcp_state::CLOSE, tcp_state::SYN_SENT);
        let v: serde_json::Value =
            serde_json::from_str(render_at(epoch_ns, Format::Json, &[ev]).trim()).expect("json");
        assert_eq!(v["time"], "2026-11-25T00:00:05.999999Z");
        let text = render_at(epoch_ns, Format::Text, &[ev]);
        let line = text.lines().nth(1).expect("line");
        assert!(line.starts_with("00:00:05.999999    4242 curl"), "{line}");
    }

    /// What a process can name itself (15 bytes at most): clear the screen, home the cursor,
    /// start a line of its own; then the 8-bit CSI (UTF-8) and a backslash.
    const HOSTILE: &[u8] = b"\x1b[2J\x1b[H\nFAK\r\xc2\x9b\\";

    fn hostile() -> twtrace_ebpf::Event {
        let mut ev = wire(tcp_state::CLOSE, tcp_state::SYN_SENT);
        ev.owner.comm = [0; 16];
        ev.owner.comm[..HOSTILE.len()].copy_from_slice(HOSTILE);
        ev
    }

    #[test]
    fn text_escapes_a_hostile_name_and_keeps_one_line_per_event() {
        let out = render(Format::Text, &[hostile(), hostile()]);
        assert!(
            !out.trim_end_matches('\n')
                .contains(|c: char| c.is_control() && c != '\n'),
            "{out:?}"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out:?}");
        for line in &lines[1..] {
            assert!(
                line.contains(
                    r"4242 \x1b[2J\x1b[H\nFAK\r\u{9b}\\ 127.0.0.1:51000 -> 10.1.2.3:8080"
                ),
                "{line}"
            );
            assert!(line.ends_with("owner"), "{line}");
        }
    }

    #[test]
    fn json_keeps_a_hostile_name_exact() {
        let out = render(Format::Json, &[hostile()]);
        assert_eq!(out.lines().count(), 1, "{out:?}");
        assert!(!out.trim_end().contains(char::is_control), "{out:?}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["comm"], "\x1b[2J\x1b[H\nFAK\r\u{9b}\\");
    }

    /// The `write!` version of [`Printer::json`] this file had before the line buffer, kept
    /// as the reference the fast one must match to the byte.
    fn json_reference<W: Write>(
        out: &mut W,
        clock: WallClock,
        container: Option<&Container>,
        t: &Transition,
    ) -> io::Result<()> {
        let time =
            Timestamp::try_from(clock.to_system_time(t.mono_ns)).map_err(io::Error::other)?;
        write!(
            out,
            "{{\"schema\":{SCHEMA},\"time\":\"{time:.6}\",\"pid\":{},\"comm\":",
            t.pid
        )?;
        write_json(&mut *out, t.comm.to_str().as_ref())?;
        write!(
            out,
            ",\"family\":\"{}\",\"laddr\":\"{}\",\"lport\":{},\"raddr\":\"{}\",\"rport\":{},\
             \"old\":\"{}\",\"new\":\"{}\",\"attribution\":\"{}\"",
            t.family.name(),
            t.local.ip(),
            t.local.port(),
            t.remote.ip(),
            t.remote.port(),
            t.old.name(),
            t.new.name(),
            t.attribution.name(),
        )?;
        if let Some(cookie) = t.cookie {
            write!(out, ",\"cookie\":{cookie}")?;
        }
        if let Some(reset) = t.reset {
            write!(out, ",\"reset\":\"{}\"", reset.name())?;
        }
        if t.is_accept() {
            write!(out, ",\"accept\":true")?;
        }
        if let Some(f) = t.failure {
            write!(
                out,
                ",\"failure\":{{\"call\":\"{}\",\"errno\":\"{}\"}}",
                f.call.name(),
                f.errno.name()
            )?;
        }
        if t.orphan {
            write!(out, ",\"orphan\":true")?;
        }
        if let Some(c) = container {
            write!(
                out,
                ",\"container\":\"{}\",\"runtime\":\"{}\"",
                c.id,
                c.runtime.name()
            )?;
            if let Some(pod) = &c.pod_uid {
                write!(out, ",\"pod_uid\":\"{pod}\"")?;
            }
        }
        writeln!(
            out,
            ",\"current_pid\":{},\"cgroup_id\":{},\"netns\":{}}}",
            t.current_pid, t.cgroup_id, t.netns
        )
    }

    /// A small deterministic generator (xorshift64*), so the cases are the same every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    const ADDRS: &[&str] = &[
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "10.1.2.3",
        "192.168.100.9",
        "1.20.255.0",
        "::",
        "::1",
        "2001:db8::1",
        "fe80::1ff:fe23:4567:890a",
        "::ffff:10.1.2.3",
        "2001:db8:85a3:0:0:8a2e:370:7334",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::127.0.0.1",
    ];

    const STATES: &[TcpState] = &[
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    /// Event `i` of a varied stream: every optional field on and off, both families, names
    /// plain and hostile, the integers from 0 to their maximum.
    fn varied(rng: &mut Rng, i: u64) -> Transition {
        let mut t = crate::recording::tests::event(i);
        // Times: whole seconds (0 microseconds), whole microseconds, anything.
        t.mono_ns = match i % 4 {
            0 => i * 1_000_000_000,
            1 => rng.next() % (1 << 50) / 1_000 * 1_000,
            _ => rng.next() % (1 << 50),
        };
        let ints = [
            0,
            1,
            9,
            10,
            99,
            100,
            65_535,
            65_536,
            4_294_967_295,
            u64::MAX,
        ];
        t.pid = rng.pick(&ints) as u32;
        t.current_pid = rng.next() as u32;
        t.cgroup_id = rng.pick(&ints);
        t.netns = rng.pick(&ints) as u32;
        t.cookie = match i % 3 {
            0 => None,
            1 => Some(rng.pick(&ints)),
            _ => Some(rng.next()),
        };
        let ip = |rng: &mut Rng| rng.pick(ADDRS).parse::<IpAddr>().expect("ip");
        t.local = std::net::SocketAddr::new(ip(rng), rng.next() as u16);
        t.remote = std::net::SocketAddr::new(ip(rng), rng.pick(&ints) as u16);
        t.family = if t.local.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        };
        t.old = rng.pick(STATES);
        t.new = if i.is_multiple_of(5) {
            t.old
        } else {
            rng.pick(STATES)
        };
        t.attribution = rng.pick(&[
            Attribution::Owner,
            Attribution::Listener,
            Attribution::Accepted,
            Attribution::Unknown,
            Attribution::Inherited,
        ]);
        t.reset = rng.pick(&[None, Some(Reset::Received), Some(Reset::Sent)]);
        t.orphan = i.is_multiple_of(7);
        t.failure = i.is_multiple_of(6).then(|| SyscallFailure {
            call: rng.pick(&[Call::Connect, Call::Bind]),
            errno: rng.pick(&[Errno::EADDRNOTAVAIL, Errno::EADDRINUSE, Errno(42), Errno(0)]),
        });
        let names: [&[u8]; 7] = [
            b"curl",
            b"",
            b"java-worker-123",
            HOSTILE,
            b"\"quoted\"\x7f\x01\t",
            "naïve café".as_bytes(),
            b"\xff\xfebroken\xc2",
        ];
        let name = rng.pick(&names);
        let mut raw = [0; 16];
        raw[..name.len()].copy_from_slice(name);
        t.comm = crate::event::Comm::new(raw);
        t
    }

    fn containers() -> [Option<Container>; 4] {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        [
            None,
            Some(Container {
                runtime: Runtime::Docker,
                id: id.to_owned(),
                pod_uid: None,
            }),
            Some(Container {
                runtime: Runtime::Containerd,
                id: id.to_owned(),
                pod_uid: Some("5f2c1a8e-0b7d-4c3e-9a61-2d4f8e7b6c10".to_owned()),
            }),
            Some(Container {
                runtime: Runtime::Crio,
                id: id.to_owned(),
                pod_uid: Some("0123456789abcdef0123456789abcdef".to_owned()),
            }),
        ]
    }

    #[test]
    fn json_lines_match_the_write_macro_version_to_the_byte() {
        let containers = containers();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for epoch_ns in [
            0,
            1_795_564_800_000_000_000,
            1_795_564_800_999_999_600,
            -5_000_000_000,
            1_000_000_000_000_000_000,
        ] {
            let clock = WallClock::with_offset(epoch_ns);
            let mut p = Printer::new(Vec::new(), Format::Json, clock);
            for i in 0..20_000 {
                let t = varied(&mut rng, i);
                let container = containers[(i % 4) as usize].as_ref();
                let mut want = Vec::new();
                json_reference(&mut want, clock, container, &t).expect("reference");
                p.json_line(&t, container).expect("line");
                assert_eq!(
                    String::from_utf8_lossy(&p.line),
                    String::from_utf8_lossy(&want),
                    "{t:?}"
                );
            }
        }
        // Back and forth across seconds: the cached date follows.
        let clock = WallClock::with_offset(1_795_564_799_999_999_999);
        let mut p = Printer::new(Vec::new(), Format::Json, clock);
        for mono_ns in [0, 1, 0, 2_000_000_001, 1, 86_400_000_000_000, 999_999] {
            let mut t = crate::recording::tests::event(1);
            t.mono_ns = mono_ns;
            let mut want = Vec::new();
            json_reference(&mut want, clock, None, &t).expect("reference");
            p.json_line(&t, None).expect("line");
            assert_eq!(p.line, want, "{mono_ns}");
        }
    }

    #[test]
    fn the_json_time_has_six_digits_at_a_whole_second() {
        let ev = wire(tcp_state::CLOSE, tcp_state::SYN_SENT);
        let out = render_at(1_795_564_800_000_000_000, Format::Json, &[ev]);
        assert!(
            out.contains(r#""time":"2026-11-25T00:00:05.000000Z""#),
            "{out}"
        );
        // As jiff prints it.
        let time = Timestamp::from_second(1_795_564_805).expect("time");
        assert_eq!(format!("{time:.6}"), "2026-11-25T00:00:05.000000Z");
        let mut second = SecondText::default();
        assert_eq!(
            second.get(1_795_564_805).expect("text"),
            b"2026-11-25T00:00:05"
        );
        // Before the epoch is the epoch, as before.
        let out = render_at(-10_000_000_000, Format::Json, &[ev]);
        assert!(
            out.contains(r#""time":"1970-01-01T00:00:00.000000Z""#),
            "{out}"
        );
    }

    #[test]
    fn a_second_past_jiffs_range_is_an_error() {
        let last = u64::try_from(Timestamp::MAX.as_second()).expect("positive");
        let mut second = SecondText::default();
        let want = format!(
            "{:.6}",
            Timestamp::from_second(Timestamp::MAX.as_second()).expect("max")
        );
        assert_eq!(
            second.get(last).map(<[u8]>::to_vec).expect("last second"),
            want.as_bytes()[..want.len() - ".000000Z".len()]
        );
        // Then an error, not the last good text.
        assert!(second.get(last + 1).is_err());
        assert!(second.get(u64::MAX).is_err());
        assert!(second.get(last).is_ok());
    }

    #[test]
    fn the_line_buffer_is_reused() {
        let mut p = Printer::new(Vec::new(), Format::Json, WallClock::with_offset(0));
        let t = crate::recording::tests::event(3);
        p.print(&t);
        let capacity = p.line.capacity();
        let at = p.line.as_ptr();
        for i in 0..1000 {
            p.print(&crate::recording::tests::event(i));
        }
        assert_eq!((p.line.capacity(), p.line.as_ptr()), (capacity, at));
        let out = p.into_inner();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1001);
    }

    /// Old (`write!`) against new (line buffer) per event, on a stream like the peak's: IPv4,
    /// one clock, times a microsecond apart. `cargo test --release -p twtrace json_speed --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn json_speed() {
        use std::time::Instant;
        const N: u64 = 1_000_000;
        let clock = WallClock::with_offset(1_795_564_800_000_000_000);
        let events: Vec<Transition> = (0..1000)
            .map(|i| {
                let mut t = crate::recording::tests::event(i);
                t.local = std::net::SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(10, 1, (i / 256) as u8, i as u8)),
                    40_000 + i as u16,
                );
                t
            })
            .collect();
        // Both into a 64 KiB BufWriter as `trace` has (its stdout here a sink).
        let round = |new: bool| {
            let buffered = || io::BufWriter::with_capacity(64 * 1024, io::sink());
            let mut old_out = buffered();
            let mut p = Printer::new(buffered(), Format::Json, clock);
            let start = Instant::now();
            for i in 0..N {
                let mut t = events[(i % 1000) as usize];
                t.mono_ns = 1_000_000_000 + i * 2_500;
                if new {
                    p.print(&t);
                } else {
                    json_reference(&mut old_out, clock, None, &t).expect("reference");
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / N as f64;
            p.flush().expect("flush");
            ns
        };
        // Warm up, then measure each three times.
        round(false);
        round(true);
        for _ in 0..3 {
            let (old, new) = (round(false), round(true));
            println!(
                "json per event: write! {old:.1} ns, line buffer {new:.1} ns ({:.1}x)",
                old / new
            );
        }
    }

    #[test]
    fn write_errors_surface_on_flush() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut p = Printer::new(Broken, Format::Json, WallClock::with_offset(0));
        p.print(&from_wire(&wire(tcp_state::CLOSE, tcp_state::SYN_SENT)).expect("valid"));
        assert_eq!(
            p.flush().map_err(|e| e.kind()),
            Err(io::ErrorKind::BrokenPipe)
        );
    }
}
