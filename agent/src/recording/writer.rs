//! Writes a recording: the header, then chunks of records. Records are encoded into one
//! reusable buffer (no allocation per event); a chunk is closed when it reaches
//! [`CHUNK_TARGET`] or when the caller flushes (once a second), and written with one `write`, so
//! a kill or a full disk loses at most the chunk being written.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};

use super::format::{
    CHUNK_HEADER_LEN, CHUNK_TARGET, Header, chunk_header, encode_event, encode_header,
    encode_kernel, encode_stats,
};
use crate::{
    event::Transition,
    stream::{Item, KernelTruth, Stats},
};

/// Builds chunks in memory.
pub struct Encoder {
    /// `CHUNK_HEADER_LEN` reserved bytes, then the payload.
    buf: BytesMut,
    count: u32,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(CHUNK_TARGET + 4096);
        buf.resize(CHUNK_HEADER_LEN, 0);
        Self { buf, count: 0 }
    }

    pub fn event(&mut self, t: &Transition) {
        encode_event(&mut self.buf, t);
        self.count += 1;
    }

    pub fn kernel(&mut self, k: &KernelTruth) {
        encode_kernel(&mut self.buf, k);
        self.count += 1;
    }

    pub fn stats(&mut self, s: &Stats) {
        encode_stats(&mut self.buf, s);
        self.count += 1;
    }

    pub fn record(&mut self, r: &Item) {
        match r {
            Item::Event(t) => self.event(t),
            Item::Kernel(k) => self.kernel(k),
            Item::Stats(s) => self.stats(s),
            Item::End { mono_ns } => self.end(*mono_ns),
        }
    }

    pub fn end(&mut self, mono_ns: u64) {
        super::format::encode_end(&mut self.buf, mono_ns);
        self.count += 1;
    }

    /// The open chunk's size so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Takes back the last record, which started at `len` (a [`Encoder::len`] taken before it).
    fn undo(&mut self, len: usize) {
        if len < self.buf.len() && self.count > 0 {
            self.buf.truncate(len);
            self.count -= 1;
        }
    }

    /// Records in the open chunk.
    pub fn pending(&self) -> u32 {
        self.count
    }

    /// The open chunk has reached its target size.
    pub fn full(&self) -> bool {
        self.buf.len() >= CHUNK_HEADER_LEN + CHUNK_TARGET
    }

    /// Closes the open chunk: its bytes, header included; `None` when it holds no record.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        let header = chunk_header(&self.buf[CHUNK_HEADER_LEN..], self.count);
        self.buf[..CHUNK_HEADER_LEN].copy_from_slice(&header);
        // A copy of exactly the chunk's size: the buffer is reused for the next one, and a chunk
        // kept in the flight recorder's ring holds no more memory than its length.
        let chunk = Bytes::copy_from_slice(&self.buf);
        self.count = 0;
        self.buf.truncate(CHUNK_HEADER_LEN);
        Some(chunk)
    }
}

/// Creates `path` with mode 0600 (a recording names processes and peers); refuses to replace
/// an existing file unless `force`.
pub fn create_file(path: &Path, force: bool) -> anyhow::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists (use --force to overwrite it)",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating {}", path.display()))
        }
    })
}

/// Bytes kept free under a size limit for the final chunk holding the end mark.
const END_RESERVE: u64 = (CHUNK_HEADER_LEN + 16) as u64;

/// A recording being written to `W`.
pub struct Writer<W: Write> {
    out: W,
    enc: Encoder,
    /// Bytes written so far, header included.
    written: u64,
    /// Refuse chunks that would take the file beyond this many bytes.
    limit: Option<u64>,
    /// A chunk was refused because of `limit`.
    limit_hit: bool,
    /// Events written (in chunks that reached `out`).
    events: u64,
    events_pending: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the header at once, so even a recording killed in its first second says what it is.
    pub fn new(mut out: W, header: &Header, limit: Option<u64>) -> anyhow::Result<Self> {
        let head = encode_header(header);
        out.write_all(&head)
            .and_then(|()| out.flush())
            .context("writing the recording's header")?;
        Ok(Self {
            out,
            enc: Encoder::new(),
            written: head.len() as u64,
            limit,
            limit_hit: false,
            events: 0,
            events_pending: 0,
        })
    }

    /// Adds an event; writes the chunk once it is full.
    pub fn event(&mut self, t: &Transition) -> io::Result<()> {
        if self.limit_hit {
            return Ok(());
        }
        let before = self.enc.len();
        self.enc.event(t);
        if self.added(before)? {
            self.events_pending += 1;
        }
        Ok(())
    }

    pub fn kernel(&mut self, k: &KernelTruth) -> io::Result<()> {
        if self.limit_hit {
            return Ok(());
        }
        let before = self.enc.len();
        self.enc.kernel(k);
        self.added(before).map(drop)
    }

    pub fn stats(&mut self, s: &Stats) -> io::Result<()> {
        if self.limit_hit {
            return Ok(());
        }
        let before = self.enc.len();
        self.enc.stats(s);
        self.added(before).map(drop)
    }

    /// After a record was encoded: under a size limit, a record that would take the file past
    /// it (less the room kept for the end mark) is taken back, what fits is written and the
    /// recording is full. Otherwise a full chunk is written. False when the record was dropped.
    fn added(&mut self, before: usize) -> io::Result<bool> {
        let over = self
            .limit
            .is_some_and(|max| self.written + self.enc.len() as u64 + END_RESERVE > max);
        if over {
            self.enc.undo(before);
            self.flush()?;
            self.limit_hit = true;
            return Ok(false);
        }
        if self.enc.full() {
            self.flush()?;
        }
        Ok(true)
    }

    /// Any record (tests, replays into a new file).
    pub fn record(&mut self, r: &Item) -> io::Result<()> {
        match r {
            Item::Event(t) => self.event(t),
            Item::Kernel(k) => self.kernel(k),
            Item::Stats(s) => self.stats(s),
            Item::End { mono_ns } => self.end(*mono_ns),
        }
    }

    /// Marks a clean stop and writes the last chunk. Room for it is kept under a size limit.
    pub fn end(&mut self, mono_ns: u64) -> io::Result<()> {
        if self.limit_hit {
            // What did not fit was dropped; the end mark alone goes into the reserve.
            self.enc = Encoder::new();
            self.events_pending = 0;
        }
        self.enc.end(mono_ns);
        self.write_chunk(0)
    }

    /// Writes the open chunk, if any. With a size limit, a chunk that does not fit (leaving room
    /// for the end mark) is dropped and [`Writer::limit_reached`] turns true.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_chunk(END_RESERVE)
    }

    fn write_chunk(&mut self, reserve: u64) -> io::Result<()> {
        let pending = std::mem::take(&mut self.events_pending);
        let Some(chunk) = self.enc.finish() else {
            return Ok(());
        };
        let too_big = self
            .limit
            .is_some_and(|max| self.written + chunk.len() as u64 + reserve > max);
        if too_big || (self.limit_hit && reserve > 0) {
            self.limit_hit = true;
            return Ok(());
        }
        self.out.write_all(&chunk)?;
        self.out.flush()?;
        self.written += chunk.len() as u64;
        self.events += pending;
        Ok(())
    }

    pub fn limit_reached(&self) -> bool {
        self.limit_hit
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    pub fn events_written(&self) -> u64 {
        self.events
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}
