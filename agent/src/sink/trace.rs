//! The `trace` view: one line per transition, as text for people or JSON Lines for jq.

use std::{
    borrow::Cow,
    io::{self, Write},
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
        }
    }

    /// Names each owner's container from its cgroup (live only: see `cgroups`).
    pub fn with_containers(mut self, cgroups: CgroupPaths) -> Self {
        self.cgroups = Some(cgroups);
        self
    }

    fn container(&mut self, t: &Transition) -> Option<Container> {
        if t.cgroup_id == 0 {
            return None;
        }
        self.cgroups.as_mut()?.container(t.cgroup_id)
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
    fn json(&mut self, t: &Transition) -> io::Result<()> {
        let time = self.wall_time(t)?;
        let container = self.container(t);
        let out = &mut self.out;
        // RFC 3339 in UTC to the microsecond, the rest cut off.
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
            // Not a state change: the process took the socket with accept() (old == new).
            write!(out, ",\"accept\":true")?;
        }
        if let Some(f) = t.failure {
            // Not a state change either: a failed connect() or bind() (old == new == CLOSE).
            write!(
                out,
                ",\"failure\":{{\"call\":\"{}\",\"errno\":\"{}\"}}",
                f.call.name(),
                f.errno.name()
            )?;
        }
        if t.orphan {
            // FIN_WAIT2 -> FIN_WAIT2: now in a timewait socket in the FIN_WAIT2 substate.
            write!(out, ",\"orphan\":true")?;
        }
        // Container ids and pod UIDs are hex digits and dashes (the parser accepts no other).
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
    use crate::event::{from_wire, tests::wire};

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
