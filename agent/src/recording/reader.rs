//! Reads a recording: the header, then the records chunk by chunk. Damage is survived, never a
//! panic: a chunk with a bad checksum or length is skipped with one warning naming its byte
//! offset and reading resumes at the next chunk magic; a file that ends inside a chunk (killed,
//! disk full) is read up to there and says so.

use std::{
    fs::File,
    io::{self, Read},
    path::Path,
};

use anyhow::{Context as _, bail};

use super::format::{
    CHUNK_HEADER_LEN, CHUNK_MAGIC, Decoder, FILE_MAGIC, FORMAT_NAME, Header, MAX_CHUNK, MAX_HEADER,
    PREAMBLE_LEN, VERSION, chunk_crc,
};
use crate::stream::Item;

/// Something the reader survived, for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Damaged bytes starting at `offset`, skipped up to the next good chunk (or the end).
    Skipped { offset: u64, why: String },
    /// The file ends inside the chunk that starts at `offset`.
    Truncated { offset: u64 },
    /// The file ends after a complete chunk but without the end mark of a clean stop.
    NoEnd,
    /// `dropped` kernel dumps, the first in the chunk at `offset`, were deltas of a dump that
    /// was lost to damage: dropped rather than decoded into a wrong socket table.
    NoBase { offset: u64, dropped: u64 },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Skipped { offset, why } => write!(
                f,
                "damaged data at byte {offset} ({why}): skipped to the next intact chunk"
            ),
            Self::Truncated { offset } => write!(
                f,
                "file ends inside a chunk at byte {offset}: the recording was cut short; \
                 everything before it was read"
            ),
            Self::NoEnd => write!(
                f,
                "the recording has no end mark: twtrace was killed (SIGKILL, a crash, a full \
                 disk) before it stopped; everything up to its last complete chunk was read"
            ),
            Self::NoBase { offset, dropped } => write!(
                f,
                "{dropped} kernel socket-table dump{} from byte {offset} on dropped: stored as \
                 changes to a dump lost in damaged data; the table is known again from the next \
                 full dump",
                if *dropped == 1 { "" } else { "s" }
            ),
        }
    }
}

pub struct Reader<R> {
    src: R,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..]`; `buf[start]` is at file offset `offset`.
    start: usize,
    offset: u64,
    eof: bool,
    header: Header,
    /// Records of the current chunk, handed out from the back.
    pending: Vec<Item>,
    /// Inside a damaged stretch already warned about: further bad bytes are part of it.
    in_damage: bool,
    done: bool,
    /// The last record read was the end mark.
    ended: bool,
    problems: Vec<Problem>,
    /// Problems not yet taken by [`Reader::take_problems`].
    new_problems: usize,
    records: u64,
    decoder: Decoder,
    /// Kernel deltas being dropped for want of their base: where the first was, and how many.
    /// Reported as one problem once a full dump (or the end) comes.
    no_base: Option<(u64, u64)>,
}

impl Reader<io::BufReader<File>> {
    /// Opens a recording, with errors that say what the file is instead.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            bail!(
                "{} is a directory, not a twtrace recording (record with `twtrace record -o FILE`)",
                path.display()
            );
        }
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Reader::new(io::BufReader::with_capacity(256 * 1024, file))
            .with_context(|| format!("{}", path.display()))
    }
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    pub fn new(src: R) -> anyhow::Result<Self> {
        let mut r = Self {
            src,
            buf: Vec::new(),
            start: 0,
            offset: 0,
            eof: false,
            header: Header::default(),
            pending: Vec::new(),
            in_damage: false,
            done: false,
            ended: false,
            problems: Vec::new(),
            new_problems: 0,
            records: 0,
            decoder: Decoder::new(),
            no_base: None,
        };
        r.read_header()?;
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Everything survived so far.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Problems found since the last call, to warn about as they happen.
    pub fn take_problems(&mut self) -> &[Problem] {
        let new = &self.problems[self.problems.len() - self.new_problems..];
        self.new_problems = 0;
        new
    }

    /// Records handed out so far.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    fn read_header(&mut self) -> anyhow::Result<()> {
        self.fill(PREAMBLE_LEN)?;
        let have = self.avail();
        if have == 0 {
            bail!("the file is empty: not a twtrace recording");
        }
        let magic_len = have.min(FILE_MAGIC.len());
        if self.rest()[..magic_len] != FILE_MAGIC[..magic_len] {
            bail!("not a twtrace recording (no TWTRACE magic at its start)");
        }
        if have < PREAMBLE_LEN {
            bail!("the recording ends inside its header ({have} bytes): nothing to read");
        }
        let p = &self.rest()[..PREAMBLE_LEN];
        let version = u16::from_le_bytes([p[8], p[9]]);
        let len = u32::from_le_bytes([p[12], p[13], p[14], p[15]]) as usize;
        let crc = u32::from_le_bytes([p[16], p[17], p[18], p[19]]);
        if version > VERSION {
            bail!(
                "recording format version {version} is newer than this twtrace reads \
                 (version {VERSION}); read it with a newer twtrace"
            );
        }
        if version == 0 {
            bail!("recording format version 0 does not exist: the header is damaged");
        }
        if len > MAX_HEADER {
            bail!("the header claims {len} bytes: damaged");
        }
        self.fill(PREAMBLE_LEN + len)?;
        if self.avail() < PREAMBLE_LEN + len {
            bail!("the recording ends inside its header: nothing to read");
        }
        let json = &self.rest()[PREAMBLE_LEN..PREAMBLE_LEN + len];
        if crc32fast::hash(json) != crc {
            bail!("the recording's header is damaged (checksum mismatch)");
        }
        let header: Header = serde_json::from_slice(json)
            .map_err(|e| anyhow::anyhow!("the recording's header is damaged: {e}"))?;
        if header.format != FORMAT_NAME {
            bail!(
                "not a twtrace recording (header format {:?})",
                header.format
            );
        }
        self.header = header;
        self.consume(PREAMBLE_LEN + len);
        Ok(())
    }

    fn avail(&self) -> usize {
        self.buf.len() - self.start
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
    }

    /// Makes at least `n` bytes available unless the file ends first.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.avail() < n && !self.eof {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let want = (n - self.buf.len()).max(64 * 1024);
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            let got = loop {
                match self.src.read(&mut self.buf[old..]) {
                    Ok(got) => break got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(old);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(old + got);
            if got == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    fn damage(&mut self, offset: u64, why: String) {
        if !self.in_damage {
            self.in_damage = true;
            self.problems.push(Problem::Skipped { offset, why });
            self.new_problems += 1;
        }
    }

    /// Skips to the next chunk magic after the current position (or to the end). True when
    /// one was found.
    fn resync(&mut self) -> io::Result<bool> {
        self.consume(1.min(self.avail()));
        loop {
            if let Some(at) = find(self.rest(), CHUNK_MAGIC) {
                self.consume(at);
                return Ok(true);
            }
            if self.eof {
                let n = self.avail();
                self.consume(n);
                return Ok(false);
            }
            // Keep a possible magic prefix at the end of the buffer.
            let keep = (CHUNK_MAGIC.len() - 1).min(self.avail());
            let n = self.avail() - keep;
            self.consume(n);
            self.fill(keep + 64 * 1024)?;
        }
    }

    /// Reads the next intact chunk into `pending`. False at the end.
    fn next_chunk(&mut self) -> io::Result<bool> {
        loop {
            self.fill(CHUNK_HEADER_LEN)?;
            let at = self.offset;
            let have = self.avail();
            if have == 0 {
                return Ok(false);
            }
            if have < CHUNK_HEADER_LEN {
                let rest = self.rest();
                if rest[..rest.len().min(8)] == CHUNK_MAGIC[..rest.len().min(8)] {
                    self.truncated(at);
                } else {
                    self.damage(at, "unrecognised bytes at the end".into());
                }
                let n = self.avail();
                self.consume(n);
                return Ok(false);
            }
            let h = &self.rest()[..CHUNK_HEADER_LEN];
            if h[..8] != CHUNK_MAGIC[..] {
                self.damage(at, "no chunk magic".into());
                if !self.resync()? {
                    return Ok(false);
                }
                continue;
            }
            let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
            let count = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
            let crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
            if len > MAX_CHUNK {
                self.damage(at, format!("chunk length {len} is impossible"));
                if !self.resync()? {
                    return Ok(false);
                }
                continue;
            }
            self.fill(CHUNK_HEADER_LEN + len)?;
            if self.avail() < CHUNK_HEADER_LEN + len {
                // Either the last chunk was cut short, or a damaged length points past the end:
                // another chunk after this one tells them apart.
                if find(&self.rest()[8..], CHUNK_MAGIC).is_some() {
                    self.damage(
                        at,
                        format!("chunk length {len} runs past the end of the file"),
                    );
                    if !self.resync()? {
                        return Ok(false);
                    }
                    continue;
                }
                self.truncated(at);
                let n = self.avail();
                self.consume(n);
                return Ok(false);
            }
            let rest = &self.buf[self.start..];
            let payload = &rest[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + len];
            if chunk_crc(&rest[8..16], payload) != crc {
                self.damage(at, "checksum mismatch".into());
                if !self.resync()? {
                    return Ok(false);
                }
                continue;
            }
            let mut records = Vec::with_capacity((count as usize).min(len / 5 + 1));
            let decoded = self.decoder.decode_items(payload, &mut records);
            self.consume(CHUNK_HEADER_LEN + len);
            self.in_damage = false;
            if let Err(e) = decoded {
                // The checksum was right, so the writer wrote this: keep what decoded.
                self.problems.push(Problem::Skipped {
                    offset: at,
                    why: format!("a record in this chunk does not decode: {e}"),
                });
                self.new_problems += 1;
            }
            let dropped = self.decoder.take_dropped();
            if dropped > 0 {
                self.no_base.get_or_insert((at, 0)).1 += dropped;
            }
            if !self.decoder.lost() {
                self.report_no_base();
            }
            if records.is_empty() {
                continue;
            }
            records.reverse();
            self.pending = records;
            return Ok(true);
        }
    }

    /// The stretch of dropped deltas is over (a full dump came, or the end).
    fn report_no_base(&mut self) {
        if let Some((offset, dropped)) = self.no_base.take() {
            self.problems.push(Problem::NoBase { offset, dropped });
            self.new_problems += 1;
        }
    }

    fn truncated(&mut self, offset: u64) {
        self.problems.push(Problem::Truncated { offset });
        self.new_problems += 1;
    }

    /// The next record; `Ok(None)` at the end. An error only for a failing read (I/O).
    pub fn next_record(&mut self) -> io::Result<Option<Item>> {
        loop {
            if let Some(r) = self.pending.pop() {
                self.records += 1;
                self.ended = matches!(r, Item::End { .. });
                return Ok(Some(r));
            }
            if self.done {
                return Ok(None);
            }
            if !self.next_chunk()? {
                self.done = true;
                self.report_no_base();
                let cut = self
                    .problems
                    .iter()
                    .any(|p| matches!(p, Problem::Truncated { .. }));
                if !self.ended && !cut {
                    self.problems.push(Problem::NoEnd);
                    self.new_problems += 1;
                }
                return Ok(None);
            }
        }
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = io::Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
