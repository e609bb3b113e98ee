//! The flight recorder's memory: the last `--ring` of closed chunks, bounded in bytes, and the
//! capture being written after a trigger (the ring, then `--after` more).
//!
//! Kernel dumps are stored as deltas against the dump before (see `recording::kernel`), so the
//! ring costs what its span of changes costs, not a whole socket table per dump. A chunk the
//! ring forgets may hold the dump the next delta needs: the ring follows the dumps of every
//! chunk it drops (the one full table it keeps decoded), and a capture starts with that table as
//! a base record, so it decodes from its first chunk on, whichever chunks were dropped.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use bytes::Bytes;

use crate::{
    event::Transition,
    recording::{
        Encoder, Header,
        format::{CHUNK_HEADER_LEN, Decoder, encode_header},
        human_size,
        writer::CaptureDir,
    },
    stream::{KernelTruth, Stats},
};

/// A capture being written.
struct Capture {
    file: File,
    path: PathBuf,
    /// Monotonic ns after which the capture is closed.
    until_ns: u64,
    bytes: u64,
}

pub struct Ring {
    enc: Encoder,
    /// Closed chunks, oldest first, with the monotonic time each was closed.
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
    keep_ns: u64,
    max_bytes: usize,
    after_ns: u64,
    dir: CaptureDir,
    header: Header,
    capture: Option<Capture>,
    /// A capture that failed, for the caller to report.
    failed: Option<anyhow::Error>,
    /// Events recorded (into the ring) since start.
    pub events: u64,
    /// The kernel dumps of the chunks dropped so far: the last one is the base of the first
    /// delta still in the ring.
    dropped: Decoder,
    /// The span the ring held when `max_bytes`, not `keep_ns`, first made it drop a chunk.
    cut_short: Option<u64>,
}

/// A capture that was closed: its file and size.
pub struct Finished {
    pub path: PathBuf,
    pub bytes: u64,
}

impl Ring {
    pub fn new(
        dir: CaptureDir,
        header: Header,
        keep_ns: u64,
        max_bytes: usize,
        after_ns: u64,
    ) -> Self {
        Self {
            enc: Encoder::new(),
            chunks: VecDeque::new(),
            bytes: 0,
            keep_ns,
            max_bytes,
            after_ns,
            dir,
            header,
            capture: None,
            failed: None,
            events: 0,
            dropped: Decoder::new(),
            cut_short: None,
        }
    }

    pub fn event(&mut self, t: &Transition, now_ns: u64) -> io::Result<()> {
        self.enc.event(t);
        self.events += 1;
        if self.enc.full() {
            self.flush(now_ns)?;
        }
        Ok(())
    }

    pub fn kernel(&mut self, k: &KernelTruth, now_ns: u64) -> io::Result<()> {
        self.enc.kernel(k);
        self.flush(now_ns)
    }

    pub fn stats(&mut self, s: &Stats) -> io::Result<()> {
        self.enc.stats(s);
        self.flush(s.mono_ns)
    }

    /// Closes the open chunk into the ring (and the capture, if one is being written), then
    /// drops what is older than the ring's span or beyond its byte bound.
    pub fn flush(&mut self, now_ns: u64) -> io::Result<()> {
        let Some(chunk) = self.enc.finish() else {
            return Ok(());
        };
        if let Some(c) = self.capture.as_mut() {
            if let Err(e) = c.file.write_all(&chunk) {
                // The capture is lost, not the flight recorder: the ring goes on.
                let path = c.path.clone();
                self.capture = None;
                self.failed = Some(anyhow::anyhow!(
                    "writing {} failed: {e}; it is readable up to its last complete chunk",
                    path.display()
                ));
            } else {
                c.bytes += chunk.len() as u64;
            }
        }
        self.bytes += chunk.len();
        self.chunks.push_back((now_ns, chunk));
        while let Some((at, front)) = self.chunks.front() {
            let old = now_ns.saturating_sub(*at) > self.keep_ns;
            if !(old || self.bytes > self.max_bytes) || self.chunks.len() == 1 {
                break;
            }
            if !old && self.cut_short.is_none() {
                self.cut_short = Some(now_ns.saturating_sub(*at));
            }
            if self.dropped.follow(&front[CHUNK_HEADER_LEN..]).is_err() {
                // Cannot happen to a chunk the ring encoded itself; if it did, a capture would
                // drop its deltas up to the next full dump, and say so, rather than start from
                // a wrong table.
                self.dropped = Decoder::new();
            }
            self.bytes -= front.len();
            self.chunks.pop_front();
        }
        Ok(())
    }

    /// Once, when the byte bound first dropped a chunk younger than the duration asked for: a
    /// line saying so, with the memory the whole duration would take at this rate (a ring's
    /// memory follows from its duration and the event rate; `--ring-max` only caps it).
    pub fn take_cut_short(&mut self) -> Option<String> {
        let span = self.cut_short.filter(|&s| s > 0)?;
        self.cut_short = Some(0);
        let needed: u64 = (self.max_bytes as u128 * u128::from(self.keep_ns) / u128::from(span))
            .try_into()
            .unwrap_or(u64::MAX);
        let secs = |ns: u64| std::time::Duration::from_secs(ns / 1_000_000_000);
        Some(format!(
            "twtrace: flight recorder: at this rate --ring-max {} holds only the last {}, not \
             the {} asked for; keeping all of it would take about {} (--ring-max)",
            human_size(self.max_bytes as u64),
            humantime::format_duration(secs(span)),
            humantime::format_duration(secs(self.keep_ns)),
            human_size(needed)
        ))
    }

    /// Bytes held, and the span of time they cover.
    pub fn held(&self, now_ns: u64) -> (usize, u64) {
        let span = self
            .chunks
            .front()
            .map_or(0, |(at, _)| now_ns.saturating_sub(*at));
        (self.bytes, span)
    }

    /// A capture that could not be written (taken once).
    pub fn take_failure(&mut self) -> Option<anyhow::Error> {
        self.failed.take()
    }

    pub fn capturing(&self) -> Option<&Path> {
        self.capture.as_ref().map(|c| c.path.as_path())
    }

    /// Starts a capture: a new file in the directory with the ring's chunks, then everything
    /// until `--after` from now. A trigger during a capture changes nothing.
    pub fn trigger(&mut self, why: &str, now_ns: u64) -> anyhow::Result<Option<PathBuf>> {
        if self.capture.is_some() {
            return Ok(None);
        }
        self.flush(now_ns)?;
        let (file, path) = self.new_file()?;
        let mut header = self.header.clone();
        header.note = Some(format!(
            "flight recorder capture: {why} at {}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        ));
        let mut c = Capture {
            file,
            path: path.clone(),
            until_ns: now_ns.saturating_add(self.after_ns),
            bytes: 0,
        };
        let head = encode_header(&header);
        // The last dump the ring forgot, which the first delta in it (or after it) is taken
        // against. Written even when a full dump comes first: it costs one table, once.
        let base = self
            .dropped
            .base()
            .and_then(|(seq, k)| Encoder::base_chunk(k, seq));
        let mut write = || -> io::Result<()> {
            c.file.write_all(&head)?;
            c.bytes += head.len() as u64;
            for chunk in base
                .iter()
                .chain(self.chunks.iter().map(|(_, chunk)| chunk))
            {
                c.file.write_all(chunk)?;
                c.bytes += chunk.len() as u64;
            }
            Ok(())
        };
        write().map_err(|e| {
            anyhow::anyhow!(
                "writing {} failed: {e}; it is readable up to its last complete chunk",
                path.display()
            )
        })?;
        self.capture = Some(c);
        Ok(Some(path))
    }

    /// Closes the capture once its `--after` has passed (or at once with `force`).
    pub fn finish_capture(&mut self, now_ns: u64, force: bool) -> io::Result<Option<Finished>> {
        let due = self
            .capture
            .as_ref()
            .is_some_and(|c| force || now_ns >= c.until_ns);
        if !due {
            return Ok(None);
        }
        self.flush(now_ns)?;
        let Some(mut c) = self.capture.take() else {
            return Ok(None);
        };
        let mut end = Encoder::new();
        end.end(now_ns);
        if let Some(chunk) = end.finish() {
            c.file.write_all(&chunk)?;
            c.bytes += chunk.len() as u64;
        }
        c.file.flush()?;
        Ok(Some(Finished {
            path: c.path,
            bytes: c.bytes,
        }))
    }

    /// A new capture file: created in the directory opened at start (never through a link,
    /// never over an existing name), mode 0600.
    fn new_file(&self) -> anyhow::Result<(File, PathBuf)> {
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace([':', '-'], "");
        for n in 0..100 {
            let name = if n == 0 {
                format!("twtrace-{stamp}.twr")
            } else {
                format!("twtrace-{stamp}-{n}.twr")
            };
            let path = self.dir.path().join(&name);
            match self.dir.create_new(&name) {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("creating {}", path.display()))
                    );
                }
            }
        }
        anyhow::bail!(
            "cannot find a free file name in {}",
            self.dir.path().display()
        )
    }
}

/// `ring 12.3 MiB (45 s)` for the progress line.
pub fn describe(bytes: usize, span_ns: u64) -> String {
    format!(
        "ring {} ({} s)",
        human_size(bytes as u64),
        span_ns / 1_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::{
        recording::{
            Reader,
            kernel::tests::{next_dump, tw_table},
            tests::{event, header, read_all},
        },
        stream::Item,
    };

    #[test]
    fn the_ring_keeps_its_span_and_its_byte_bound_and_captures_it_plus_what_follows() {
        let dir = std::env::temp_dir().join(format!("twtrace-ring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let sec = 1_000_000_000u64;
        // 10 s of ring, 2 s after a trigger.
        let open = || CaptureDir::open(&dir).expect("open");
        let mut ring = Ring::new(open(), header(), 10 * sec, 1 << 30, 2 * sec);
        for s in 0..30u64 {
            let now = s * sec;
            ring.event(&event(s), now).expect("ring");
            ring.flush(now).expect("ring");
        }
        // Chunks older than 10 s are gone: 0..=18 dropped, 19..=29 kept.
        let (bytes, span) = ring.held(29 * sec);
        assert_eq!(span, 10 * sec);
        assert!(bytes > 0);
        let path = ring
            .trigger("test", 29 * sec)
            .expect("capture")
            .expect("a new capture");
        assert!(ring.trigger("again", 29 * sec).expect("ok").is_none());
        ring.event(&event(30), 30 * sec).expect("ring");
        ring.flush(30 * sec).expect("ring");
        assert!(ring.finish_capture(30 * sec, false).expect("ok").is_none());
        ring.event(&event(31), 31 * sec).expect("ring");
        let done = ring
            .finish_capture(31 * sec, false)
            .expect("ok")
            .expect("after 2 s");
        assert_eq!(done.path, path);
        assert!(ring.capturing().is_none());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("capture").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let bytes = std::fs::read(&path).expect("capture");
        let (records, problems) = read_all(&bytes).expect("reads");
        assert!(problems.is_empty(), "{problems:?}");
        let mut want: Vec<Item> = (19..32).map(|i| Item::Event(event(i))).collect();
        want.push(Item::End { mono_ns: 31 * sec });
        assert_eq!(records, want);
        let r = Reader::new(Cursor::new(&bytes)).expect("header");
        assert!(
            r.header()
                .note
                .as_deref()
                .is_some_and(|n| n.contains("test"))
        );

        // A capture that cannot be created (its directory was removed) is an error for the
        // caller; the ring goes on.
        let gone = dir.join("gone");
        let mut lost = Ring::new(
            CaptureDir::open(&gone).expect("open"),
            header(),
            10 * sec,
            1 << 30,
            sec,
        );
        std::fs::remove_dir(&gone).expect("rmdir");
        lost.event(&event(1), sec).expect("ring");
        assert!(lost.trigger("test", sec).is_err());
        assert!(lost.capturing().is_none());
        lost.event(&event(2), 2 * sec).expect("ring");
        lost.flush(2 * sec).expect("ring");

        // The byte bound wins over the span.
        let mut small = Ring::new(open(), header(), 1000 * sec, 300, sec);
        for s in 0..20u64 {
            small.event(&event(s), s).expect("ring");
            small.flush(s).expect("ring");
        }
        assert!(small.held(20).0 <= 300);
        assert!(
            ring.take_cut_short().is_none(),
            "the first ring was bound by its span"
        );

        // Said once when the byte bound cuts the span short, with what the span would need.
        let mut cut = Ring::new(open(), header(), 100 * sec, 300, sec);
        for s in 0..20u64 {
            cut.event(&event(s), s * sec).expect("ring");
            cut.flush(s * sec).expect("ring");
        }
        let line = cut.take_cut_short().expect("cut short");
        assert!(
            line.contains("--ring-max 300 B holds only the last"),
            "{line}"
        );
        assert!(line.contains("not the 1m 40s asked for"), "{line}");
        assert!(cut.take_cut_short().is_none(), "said once");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A socket table of 2,000 TIME_WAIT sockets that changes a little every 2 s, events every
    /// half second, the counters (and a chunk) every second: what the flight recorder holds
    /// and what its captures hold.
    fn feed(ring: &mut Ring, from_s: u64, to_s: u64, fed: &mut Vec<Item>, table: &mut Table) {
        let sec = 1_000_000_000u64;
        for half in from_s * 2..to_s * 2 {
            let now = half * sec / 2;
            let mut e = event(half);
            e.mono_ns = now;
            ring.event(&e, now).expect("ring");
            fed.push(Item::Event(e));
            if half % 4 == 0 {
                let k = table.next(now);
                ring.kernel(&k, now).expect("ring");
                fed.push(Item::Kernel(k));
            }
            if half % 2 == 1 {
                let s = Stats {
                    mono_ns: now,
                    ..Stats::default()
                };
                ring.stats(&s).expect("ring");
                fed.push(Item::Stats(s));
            }
        }
    }

    struct Table {
        last: Option<KernelTruth>,
        fresh: u64,
    }

    impl Table {
        fn next(&mut self, now: u64) -> KernelTruth {
            let k = match &self.last {
                None => tw_table(2_000, now),
                Some(prev) => next_dump(prev, now - prev.dump_ns, 40, 30, 700, &mut self.fresh),
            };
            self.last = Some(k.clone());
            k
        }
    }

    #[test]
    fn captures_decode_from_their_first_chunk_whatever_the_ring_dropped() {
        /// Removes the directory also when an assertion fails.
        struct Scratch(std::path::PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let scratch = Scratch(
            std::env::temp_dir().join(format!("twtrace-ring-delta-{}", std::process::id())),
        );
        let dir = &scratch.0;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("mkdir");
        let sec = 1_000_000_000u64;
        let full = {
            let mut b = bytes::BytesMut::new();
            crate::recording::format::encode(&mut b, &Item::Kernel(tw_table(2_000, 0)));
            b.len()
        };
        // Triggers before anything was dropped, with the last full dump dropped (the first
        // dump of the capture a delta), right after the full dump of the minute, and later.
        for trigger_s in [5, 13, 31, 50, 61, 75] {
            let open = CaptureDir::open(dir).expect("open");
            let mut ring = Ring::new(open, header(), 10 * sec, 1 << 30, 2 * sec);
            let mut fed = Vec::new();
            let mut table = Table {
                last: None,
                fresh: 0,
            };
            feed(&mut ring, 0, trigger_s, &mut fed, &mut table);
            let (held, _) = ring.held(trigger_s * sec);
            if (13..60).contains(&trigger_s) {
                // 10 s of changes, no whole table: with every dump in full, five tables.
                assert!(held < full, "{held} bytes held, a full dump is {full}");
            }
            let path = ring
                .trigger("test", trigger_s * sec)
                .expect("capture")
                .expect("a new capture");
            feed(&mut ring, trigger_s, trigger_s + 2, &mut fed, &mut table);
            let end = (trigger_s + 2) * sec;
            ring.finish_capture(end, true).expect("ok").expect("closed");
            let bytes = std::fs::read(&path).expect("capture");
            let (mut records, problems) = read_all(&bytes).expect("reads");
            assert!(
                problems.is_empty(),
                "trigger at {trigger_s} s: {problems:?}"
            );
            assert_eq!(records.pop(), Some(Item::End { mono_ns: end }));
            // The capture is the end of what was fed, dumps included, exactly.
            let from = fed.len() - records.len();
            assert_eq!(records, fed[from..], "trigger at {trigger_s} s");
            assert!(
                records
                    .iter()
                    .filter(|r| matches!(r, Item::Kernel(_)))
                    .count()
                    >= 4,
                "trigger at {trigger_s} s"
            );
            if trigger_s > 10 {
                assert!(from > 0, "the ring dropped its oldest chunks");
            }
            std::fs::remove_file(&path).expect("rm");
        }
    }
}
