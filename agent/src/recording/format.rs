//! The recording file format, version 3.
//!
//! ```text
//! file   = preamble header-json chunk*
//! preamble (20 bytes) = "TWTRACE\0" | version u16 | reserved u16 | header length u32 | CRC32 of the JSON u32
//! chunk  = "TWCHUNK\0" | payload length u32 | record count u32 | CRC32 u32 | payload
//! record = tag u8 | length u32 | body
//!          (tags: 1 event, 2 kernel truth, 3 stats, 4 end, 5 kernel-truth delta, 6 kernel-truth base,
//!           7 failed connect()/bind())
//! ```
//!
//! Integers are little-endian; record bodies are fixed-width fields, except the sockets of a
//! kernel-truth record, which use LEB128 varints. A chunk's CRC32 covers its length, count and
//! payload, so a flipped bit anywhere in a chunk is caught; the 8-byte chunk magic lets a reader
//! find the next chunk after a damaged one. Records carry their length, so a reader of this
//! version skips tags it does not know (added later without a version bump); a change to an
//! existing record, or a new one that a reader must not skip, bumps the version, which older
//! readers refuse with a message.
//!
//! **Kernel truth as deltas.** A socket-table dump comes every `--reconcile` seconds and can
//! hold tens of thousands of sockets, most of them the same as in the dump before: it is written
//! in full now and then (tag 2) and otherwise as a delta against the dump before (tag 5). Dumps
//! are numbered, a delta applies only to the dump numbered just before it, and one whose base
//! is missing is dropped and reported, never decoded against another dump. A base (tag 6) is a
//! full dump that is not an item, for the deltas after it. [`super::kernel`] has the layouts.
//!
//! Versions: 1 had only full dumps (tag 2, without the sequence number that now ends it).
//! Version 2 added deltas; a version-1 reader would skip them as unknown tags and silently lose
//! most dumps, hence the bump. Version 3 added network namespaces: an event ends with its
//! namespace (u32), a socket of a dump carries one when its flag byte says so, and an event's
//! attribution may be 4 (accepted); a version-2 reader would refuse those socket flags and
//! attributions mid-file, so the version says it up front. This reader reads all three.
//!
//! Within version 3, an event gained a last byte after its namespace (`EVENT_ORPHAN`: an
//! orphan's FIN_WAIT2 timewait entry, written as TIME_WAIT so that earlier readers, which skip
//! the byte, read it as they always did); a record without it reads as before.
//!
//! **Failed connect() and bind() calls** (tag 7, added within version 3): an event record's full
//! body (its namespace and its last byte included, both always present here) followed by the
//! call (u8: 1 connect, 2 bind) and the errno (u16). Not a version bump, by the rule above: a
//! version-3 reader that predates the tag skips these records and reads every other one as
//! before. It misreads nothing (written as tag-1 events they would read as accepts,
//! `old == new`, hence the tag of their own), and nothing it counts depends on them: a failure
//! changes no socket's state in the model, the transitions the kernel reports around a failed
//! connect() (`CLOSE -> SYN_SENT -> CLOSE`) are ordinary event records. It only cannot show the
//! failures, which it does not know of. A later addition to the event record goes after the
//! errno in a failure record.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use twtrace_ebpf::COMM_LEN;

use super::kernel::{self, KernelDecoder, Table};
use crate::{
    event::{Attribution, Call, Comm, Errno, Family, SyscallFailure, Transition},
    state::{Reset, TcpState},
    stream::{Item, KernelStats, Stats},
};

pub const FILE_MAGIC: &[u8; 8] = b"TWTRACE\0";
pub const CHUNK_MAGIC: &[u8; 8] = b"TWCHUNK\0";
pub const VERSION: u16 = 3;
pub const PREAMBLE_LEN: usize = 20;
pub const CHUNK_HEADER_LEN: usize = 20;
/// A chunk is written once its payload reaches this size (and at least once a second).
pub const CHUNK_TARGET: usize = 64 * 1024;
/// Larger chunks are refused by the reader: a length beyond it is damage, not data. A chunk can
/// exceed `CHUNK_TARGET` only by one record, and the largest record, a socket-table dump, is
/// about 60 bytes per socket (a million sockets: 60 MiB).
pub const MAX_CHUNK: usize = 256 << 20;
/// Larger headers are refused (the JSON is a few hundred bytes).
pub const MAX_HEADER: usize = 1 << 20;

const TAG_EVENT: u8 = 1;
pub(super) const TAG_KERNEL: u8 = 2;
const TAG_STATS: u8 = 3;
const TAG_END: u8 = 4;
pub(super) const TAG_KERNEL_DELTA: u8 = 5;
pub(super) const TAG_KERNEL_BASE: u8 = 6;
const TAG_FAILURE: u8 = 7;

/// What a recording says about where and how it was made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// "twtrace-recording", so a header is recognisable on its own.
    pub format: String,
    pub version: u16,
    /// twtrace's version that wrote it.
    pub twtrace: String,
    pub hostname: String,
    /// `uname -r`.
    pub kernel: String,
    /// RFC 3339 UTC wall time when the recording started.
    pub start_time: String,
    /// CLOCK_MONOTONIC ns at the start (events carry CLOCK_MONOTONIC ns).
    pub start_mono_ns: u64,
    /// Wall time = monotonic + this (ns since the Unix epoch at monotonic 0).
    pub mono_to_wall_ns: i64,
    /// net.ipv4.* sysctls, by name, as read (absent when unreadable).
    pub sysctls: Vec<(String, String)>,
    pub command_line: Vec<String>,
    pub filters: Filters,
    /// Why this file exists when it is not a plain recording (a flight-recorder capture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    /// `--netns` (added with version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// `--cgroup`: the cgroup's path in the v2 hierarchy. The recording holds only that
    /// cgroup's sockets (and those below it) whose owner was known. Added within version 3:
    /// absent means none, and a reader that predates it ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// `--lport`, `--rport`: local and remote ports (added within version 3, as `cgroup`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rports: Vec<u16>,
    /// `-4` or `-6`: 4 or 6 (added within version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<u8>,
}

pub const FORMAT_NAME: &str = "twtrace-recording";

/// Why a record's bytes could not be decoded (inside a chunk whose checksum was right: a bug or
/// a writer of another version).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record cut short")]
    Short,
    #[error("bad value {value} for {what}")]
    Value { what: &'static str, value: u64 },
}

pub(super) fn bad(what: &'static str, value: impl Into<u64>) -> RecordError {
    RecordError::Value {
        what,
        value: value.into(),
    }
}

// ---- encoding -------------------------------------------------------------------------------

/// The preamble and JSON header that start a file.
pub fn encode_header(header: &Header) -> Vec<u8> {
    // Serialising plain strings and numbers cannot fail.
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(PREAMBLE_LEN + json.len());
    out.extend_from_slice(FILE_MAGIC);
    out.put_u16_le(VERSION);
    out.put_u16_le(0);
    out.put_u32_le(json.len() as u32);
    out.put_u32_le(crc32fast::hash(&json));
    out.extend_from_slice(&json);
    out
}

/// Appends one record, tag and length first; kernel truth as a lone full dump (numbered 0).
/// Allocates nothing when `out` has room. A recording's dumps go through a [`KernelEncoder`].
pub fn encode(out: &mut BytesMut, record: &Item) {
    match record {
        Item::Event(t) => encode_event(out, t),
        Item::Kernel(k) => kernel::encode_full(out, TAG_KERNEL, k, 0),
        Item::Stats(s) => encode_stats(out, s),
        Item::End { mono_ns } => encode_end(out, *mono_ns),
    }
}

pub fn encode_end(out: &mut BytesMut, mono_ns: u64) {
    let at = begin_record(out, TAG_END);
    out.put_u64_le(mono_ns);
    end_record(out, at);
}

/// Writes a record's tag and a placeholder length; [`end_record`] fills the length in.
pub(super) fn begin_record(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32_le(0);
    at
}

pub(super) fn end_record(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// An event record, or for a failed connect()/bind() a failure record (tag 7: the same body,
/// then the call and the errno).
pub fn encode_event(out: &mut BytesMut, t: &Transition) {
    let tag = if t.failure.is_some() {
        TAG_FAILURE
    } else {
        TAG_EVENT
    };
    let at = begin_record(out, tag);
    out.put_u64_le(t.mono_ns);
    out.put_u64_le(t.skaddr);
    let mut flags = 0u8;
    if t.cookie.is_some() {
        flags |= 1;
    }
    out.put_u8(flags);
    out.put_u64_le(t.cookie.unwrap_or(0));
    out.put_u32_le(t.pid);
    out.put_slice(&comm_bytes(&t.comm));
    out.put_u64_le(t.cgroup_id);
    out.put_u8(match t.attribution {
        Attribution::Owner => 0,
        Attribution::Listener => 1,
        Attribution::Unknown => 2,
        // Recorders store events as the kernel sent them, so this is not written today; it is
        // decoded all the same, so a file that has it reads.
        Attribution::Inherited => 3,
        Attribution::Accepted => 4,
    });
    out.put_u32_le(t.current_pid);
    out.put_u8(match t.family {
        Family::Ipv4 => 4,
        Family::Ipv6 => 6,
    });
    put_addr(out, t.local);
    put_addr(out, t.remote);
    out.put_u8(state_code(t.old));
    // An orphan's FIN_WAIT2 timewait entry is written as the TIME_WAIT entry it was before
    // twtrace told them apart, and told by the byte at the end: a reader that predates it
    // reads a TIME_WAIT entry (never a `FIN_WAIT2 -> FIN_WAIT2`, which it would take for an
    // accept), as it did then.
    out.put_u8(state_code(if t.orphan {
        TcpState::TimeWait
    } else {
        t.new
    }));
    out.put_u8(match t.reset {
        None => 0,
        Some(Reset::Received) => 1,
        Some(Reset::Sent) => 2,
    });
    // Since version 3; a record of an older file ends before it (namespace 0, not known).
    out.put_u32_le(t.netns);
    // Added within version 3, at the end, where a reader that predates it ignores it (it
    // reads a record's fields and skips the rest of its length): `EVENT_ORPHAN`.
    out.put_u8(if t.orphan { EVENT_ORPHAN } else { 0 });
    // A failure record: the whole event body above (the orphan byte included, so a reader
    // finds the call and errno at a fixed place after it), then the call and the errno.
    if let Some(f) = t.failure {
        out.put_u8(match f.call {
            Call::Connect => 1,
            Call::Bind => 2,
        });
        out.put_u16_le(f.errno.0);
    }
    end_record(out, at);
}

/// A bit of the event record's last byte (added within version 3): this `FIN_WAIT2 ->
/// TIME_WAIT` entry left the connection in a timewait socket in the FIN_WAIT2 substate
/// (`Transition::orphan`). The other bits are for later additions a reader may ignore, as
/// this one is ignored by readers that predate it; one that must not be ignored bumps the
/// version.
const EVENT_ORPHAN: u8 = 1;

pub fn encode_stats(out: &mut BytesMut, s: &Stats) {
    let at = begin_record(out, TAG_STATS);
    out.put_u64_le(s.mono_ns);
    let k = &s.kernel;
    for v in [
        k.events,
        k.lost,
        k.table_full,
        k.unattributed,
        k.listener_miss,
        k.filtered,
    ] {
        out.put_u64_le(v);
    }
    put_opt(out, s.timewait_kernel);
    // Added after version 1 was out: at the end, where a reader of the first release of
    // version 1 ignores it (it reads a record's fields and skips the rest of its length).
    out.put_u64_le(k.skipped);
    // Version 3.
    out.put_u64_le(k.accept_miss);
    put_opt(out, s.namespaces.map(u64::from));
    end_record(out, at);
}

/// LEB128: 7 bits a byte, low first (1 byte below 128, at most 10).
pub(super) fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

pub(super) fn get_varint(b: &mut &[u8]) -> Result<u64, RecordError> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = get_u8(b)?;
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err(bad("varint", byte));
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint", 10u8))
}

pub(super) fn put_opt(out: &mut BytesMut, v: Option<u64>) {
    out.put_u8(u8::from(v.is_some()));
    out.put_u64_le(v.unwrap_or(0));
}

/// 4 or 6, then the address bytes, then the port.
pub(super) fn put_addr(out: &mut BytesMut, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(v4) => {
            out.put_u8(4);
            out.put_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.put_u8(6);
            out.put_slice(&v6.octets());
        }
    }
    out.put_u16_le(a.port());
}

/// A comm as its kernel form: the name, NUL-padded to 16 bytes (what the kernel hands over:
/// `__set_task_comm()` pads with `strscpy_pad`).
pub(super) fn comm_bytes(c: &Comm) -> [u8; COMM_LEN] {
    let mut raw = [0; COMM_LEN];
    let name = c.as_bytes();
    raw[..name.len()].copy_from_slice(name);
    raw
}

/// The kernel's number for a state (include/net/tcp_states.h).
pub fn state_code(s: TcpState) -> u8 {
    match s {
        TcpState::Established => 1,
        TcpState::SynSent => 2,
        TcpState::SynRecv => 3,
        TcpState::FinWait1 => 4,
        TcpState::FinWait2 => 5,
        TcpState::TimeWait => 6,
        TcpState::Close => 7,
        TcpState::CloseWait => 8,
        TcpState::LastAck => 9,
        TcpState::Listen => 10,
        TcpState::Closing => 11,
        TcpState::NewSynRecv => 12,
        TcpState::BoundInactive => 13,
    }
}

// ---- decoding -------------------------------------------------------------------------------

/// Decodes records chunk after chunk. It keeps the last kernel dump, which the next delta
/// needs; a delta without it is dropped and counted (see [`Decoder::take_dropped`]).
#[derive(Default)]
pub struct Decoder {
    kernel: KernelDecoder,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the records of one chunk payload, appending them to `out`. Unknown tags are
    /// skipped. On an error, the records before it are kept.
    pub fn decode_items(&mut self, payload: &[u8], out: &mut Vec<Item>) -> Result<(), RecordError> {
        self.walk(payload, Some(out))
    }

    /// Follows the kernel dumps of one chunk payload without handing anything out: the flight
    /// recorder does this with the chunks it forgets, so it can start a capture with their last
    /// dump as a base.
    pub fn follow(&mut self, payload: &[u8]) -> Result<(), RecordError> {
        self.walk(payload, None)
    }

    /// The last dump decoded, and its number.
    pub fn base(&self) -> Option<(u64, &Table)> {
        self.kernel.base()
    }

    /// Deltas dropped since the last call because their base was missing.
    pub fn take_dropped(&mut self) -> u64 {
        self.kernel.take_dropped()
    }

    /// Deltas are being dropped: one was, and no full dump has come since.
    pub fn lost(&self) -> bool {
        self.kernel.lost()
    }

    fn walk(
        &mut self,
        mut payload: &[u8],
        mut out: Option<&mut Vec<Item>>,
    ) -> Result<(), RecordError> {
        while payload.has_remaining() {
            if payload.remaining() < 5 {
                return Err(RecordError::Short);
            }
            let tag = payload.get_u8();
            let len = payload.get_u32_le() as usize;
            if payload.remaining() < len {
                return Err(RecordError::Short);
            }
            let mut body = &payload[..len];
            payload.advance(len);
            let record = match tag {
                TAG_KERNEL | TAG_KERNEL_BASE | TAG_KERNEL_DELTA => {
                    // A base is not an item; following, nothing is.
                    let item = tag != TAG_KERNEL_BASE && out.is_some();
                    match self.kernel.decode(tag, &mut body, item)? {
                        Some(k) => Item::Kernel(k),
                        None => continue,
                    }
                }
                // Following only the kernel dumps: nothing else needs decoding.
                _ if out.is_none() => continue,
                TAG_EVENT => Item::Event(decode_event(&mut body)?),
                TAG_FAILURE => Item::Event(decode_failure(&mut body)?),
                TAG_STATS => Item::Stats(decode_stats(&mut body)?),
                TAG_END => Item::End {
                    mono_ns: get_u64(&mut body)?,
                },
                _ => continue,
            };
            if let Some(out) = &mut out {
                out.push(record);
            }
        }
        Ok(())
    }
}

/// Decodes one chunk payload on its own (a kernel delta in it has no base): for tests and
/// tools that look at single records.
pub fn decode_items(payload: &[u8], out: &mut Vec<Item>) -> Result<(), RecordError> {
    Decoder::new().decode_items(payload, out)
}

fn need(b: &[u8], n: usize) -> Result<(), RecordError> {
    if b.remaining() < n {
        Err(RecordError::Short)
    } else {
        Ok(())
    }
}

pub(super) fn get_u8(b: &mut &[u8]) -> Result<u8, RecordError> {
    need(b, 1)?;
    Ok(b.get_u8())
}

fn get_u16(b: &mut &[u8]) -> Result<u16, RecordError> {
    need(b, 2)?;
    Ok(b.get_u16_le())
}

pub(super) fn get_u32(b: &mut &[u8]) -> Result<u32, RecordError> {
    need(b, 4)?;
    Ok(b.get_u32_le())
}

pub(super) fn get_u64(b: &mut &[u8]) -> Result<u64, RecordError> {
    need(b, 8)?;
    Ok(b.get_u64_le())
}

pub(super) fn get_comm(b: &mut &[u8]) -> Result<Comm, RecordError> {
    need(b, COMM_LEN)?;
    let mut raw = [0; COMM_LEN];
    b.copy_to_slice(&mut raw);
    Ok(Comm::new(raw))
}

pub(super) fn get_opt(b: &mut &[u8]) -> Result<Option<u64>, RecordError> {
    let present = get_u8(b)?;
    let v = get_u64(b)?;
    match present {
        0 => Ok(None),
        1 => Ok(Some(v)),
        other => Err(bad("option flag", other)),
    }
}

pub(super) fn get_addr(b: &mut &[u8]) -> Result<SocketAddr, RecordError> {
    let ip = match get_u8(b)? {
        4 => {
            need(b, 4)?;
            let mut o = [0; 4];
            b.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            need(b, 16)?;
            let mut o = [0; 16];
            b.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        other => return Err(bad("address kind", other)),
    };
    Ok(SocketAddr::new(ip, get_u16(b)?))
}

fn get_state(b: &mut &[u8]) -> Result<TcpState, RecordError> {
    let v = get_u8(b)?;
    TcpState::try_from(u32::from(v)).map_err(|_| bad("TCP state", v))
}

fn decode_event(b: &mut &[u8]) -> Result<Transition, RecordError> {
    let mono_ns = get_u64(b)?;
    let skaddr = get_u64(b)?;
    let flags = get_u8(b)?;
    let cookie = get_u64(b)?;
    if flags > 1 {
        return Err(bad("event flags", flags));
    }
    let pid = get_u32(b)?;
    let comm = get_comm(b)?;
    let cgroup_id = get_u64(b)?;
    let attribution = match get_u8(b)? {
        0 => Attribution::Owner,
        1 => Attribution::Listener,
        2 => Attribution::Unknown,
        3 => Attribution::Inherited,
        4 => Attribution::Accepted,
        other => return Err(bad("attribution", other)),
    };
    let current_pid = get_u32(b)?;
    let family = match get_u8(b)? {
        4 => Family::Ipv4,
        6 => Family::Ipv6,
        other => return Err(bad("family", other)),
    };
    let local = get_addr(b)?;
    let remote = get_addr(b)?;
    let old = get_state(b)?;
    let new = get_state(b)?;
    let reset = match get_u8(b)? {
        0 => None,
        1 => Some(Reset::Received),
        2 => Some(Reset::Sent),
        other => return Err(bad("reset", other)),
    };
    let netns = if b.is_empty() { 0 } else { get_u32(b)? };
    // Absent in records written before it was added: a TIME_WAIT entry, as it was then.
    let more = if b.is_empty() { 0 } else { get_u8(b)? };
    let orphan = more & EVENT_ORPHAN != 0;
    if orphan && (old, new) != (TcpState::FinWait2, TcpState::TimeWait) {
        return Err(bad("orphan flag after state", state_code(old)));
    }
    let new = if orphan { TcpState::FinWait2 } else { new };
    Ok(Transition {
        mono_ns,
        skaddr,
        cookie: (flags & 1 == 1).then_some(cookie),
        pid,
        comm,
        cgroup_id,
        attribution,
        current_pid,
        netns,
        family,
        local,
        remote,
        old,
        new,
        reset,
        orphan,
        failure: None,
    })
}

/// A failure record (tag 7): an event's full body, its namespace and its last byte (the
/// `EVENT_ORPHAN` bits) included, as [`encode_event`] writes them, then the call and the errno.
/// Both optional fields of the body are always there (tag 7 came after them), so
/// [`decode_event`] reads them and leaves exactly the call and the errno.
fn decode_failure(b: &mut &[u8]) -> Result<Transition, RecordError> {
    let t = decode_event(b)?;
    let call = match get_u8(b)? {
        1 => Call::Connect,
        2 => Call::Bind,
        other => return Err(bad("failed call", other)),
    };
    let errno = Errno(get_u16(b)?);
    Ok(Transition {
        failure: Some(SyscallFailure { call, errno }),
        ..t
    })
}

/// The smallest encoding of a socket and of an owner, to bound a count by the bytes left
/// before allocating for it.
pub(super) const MIN_SOCKET_LEN: usize = 1 + 7 + 7 + 3;

/// A socket's first byte in a dump: the state's number (1 to 13) and two flags.
pub(super) const SOCK_STATE: u8 = 0x0f;
pub(super) const SOCK_TIMEWAIT: u8 = 0x10;
pub(super) const SOCK_EXPIRES_MS: u8 = 0x20;
/// Since version 3: the socket's network namespace follows its timer, as a varint.
pub(super) const SOCK_NETNS: u8 = 0x40;
pub(super) const OWNER_LEN: usize = 12 + COMM_LEN;

fn decode_stats(b: &mut &[u8]) -> Result<Stats, RecordError> {
    let mono_ns = get_u64(b)?;
    let kernel = KernelStats {
        events: get_u64(b)?,
        lost: get_u64(b)?,
        table_full: get_u64(b)?,
        unattributed: get_u64(b)?,
        listener_miss: get_u64(b)?,
        filtered: get_u64(b)?,
        skipped: 0,
        accept_miss: 0,
    };
    let timewait_kernel = get_opt(b)?;
    // Absent in recordings made before it was added.
    let skipped = if b.remaining() >= 8 { get_u64(b)? } else { 0 };
    // Absent before version 3.
    let accept_miss = if b.remaining() >= 8 { get_u64(b)? } else { 0 };
    let namespaces = if b.is_empty() {
        None
    } else {
        let v = get_opt(b)?;
        v.map(|n| u32::try_from(n).map_err(|_| bad("namespace count", n)))
            .transpose()?
    };
    Ok(Stats {
        mono_ns,
        kernel: KernelStats {
            skipped,
            accept_miss,
            ..kernel
        },
        timewait_kernel,
        namespaces,
    })
}

/// A chunk's header for `payload`: magic, length, count, CRC32 over the three.
pub fn chunk_header(payload: &[u8], count: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[..8].copy_from_slice(CHUNK_MAGIC);
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&count.to_le_bytes());
    let crc = chunk_crc(&h[8..16], payload);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

pub fn chunk_crc(len_and_count: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_and_count);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::Filters;

    #[test]
    fn a_cgroup_filter_is_written_only_when_given_and_read_back() {
        let none = Filters {
            pids: vec![1],
            ..Filters::default()
        };
        let json = serde_json::to_string(&none).unwrap();
        assert!(!json.contains("cgroup"), "{json}");
        let with = Filters {
            cgroup: Some("/kubepods/burstable".into()),
            ..none
        };
        let json = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<Filters>(&json).unwrap(), with);
        // A header written before the field existed.
        let old: Filters = serde_json::from_str(r#"{"pids":[],"ports":[80]}"#).unwrap();
        assert_eq!(old.cgroup, None);
    }
}
