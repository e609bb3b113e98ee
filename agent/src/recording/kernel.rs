//! Kernel truth in a recording: full dumps, deltas against the dump before, and bases.
//!
//! A socket-table dump comes every `--reconcile` seconds and can hold tens of thousands of
//! sockets, most of them the same as in the dump before. So a dump is written in full (tag 2)
//! at the start and at least every [`FULL_DUMP_EVERY_NS`] of dump time, and otherwise as a delta
//! (tag 5) against the dump written just before it, when that saves at least an eighth (less
//! is not worth giving up a full dump, where a reader can start). Every dump carries
//! a sequence number; a delta names its base by it (its own number minus one), and a reader
//! whose base is missing (lost to a damaged chunk) drops deltas until the next full dump and
//! says so, rather than build a wrong table.
//!
//! ```text
//! full   = dump_ns u64 | timewait_kernel (flag u8, u64) | socket count u32 | socket*
//!          | owner count u32 | owner* | seq varint        (version 1: without seq)
//! socket = state and flags u8 | local addr | remote addr | cookie varint | inode varint
//!          | timer varint (ms when a whole number of them, else ns)
//!          | netns varint (version 3, when the flags say so: namespace 0 is left out)
//! owner  = inode u64 | pid u32 | comm [u8; 16]
//! delta  = dump_ns u64 | timewait_kernel (flag u8, u64) | seq varint
//!          | socket count varint | op* | owner count varint | op*
//! op     = varint (n << 2 | kind), then by kind:
//!          0: copy n from the base at cursor + gap        gap: zigzag varint
//!          1: the same with a new timer shift             gap, then the change: zigzag varint
//!          2: n literal sockets (or owners), as in a full dump
//! ```
//!
//! A delta lists the dump's sockets in their order. A copy starts at `cursor + gap` in the base
//! and leaves the cursor after its last element: sockets gone since the base cost only the gap
//! of the next run, unchanged ones nothing. The timer is what moves in an unchanged socket:
//! sock_diag reports the time *left*, which shrinks by the time between the dumps. A run adds
//! its shift to each copied timer (clamped at 0, what the kernel reports for a timer already
//! due); the shift starts at `base dump_ns - dump_ns`, which keeps a deadline where it was, and
//! a run that needs another (the kernel's jiffies ticked during the dump, a timer was re-armed)
//! gives its change from the run before. So timers decode exactly as given, to the nanosecond,
//! as in a full dump. A socket whose state, inode or anything else but its timer changed is a
//! literal, as is a new one. Owners (inode, pid, comm) use the same runs, without shifts.
//!
//! A base (tag 6) is laid out as a full dump but is not an item: the flight recorder starts a
//! capture with one, the last dump of the chunks it has forgotten, so the capture's first delta
//! decodes.

use std::{
    hash::{BuildHasher, Hash, RandomState},
    net::{IpAddr, SocketAddr},
};

use bytes::{Buf, BufMut, BytesMut};
use twtrace_ebpf::COMM_LEN;

use super::format::{
    MIN_SOCKET_LEN, OWNER_LEN, RecordError, SOCK_EXPIRES_MS, SOCK_NETNS, SOCK_STATE, SOCK_TIMEWAIT,
    TAG_KERNEL, TAG_KERNEL_BASE, TAG_KERNEL_DELTA, bad, begin_record, comm_bytes, end_record,
    get_addr, get_comm, get_opt, get_u8, get_u32, get_u64, get_varint, put_addr, put_opt,
    put_varint, state_code,
};
use crate::{event::Comm, model::KernelSocket, state::TcpState, stream::KernelTruth};

/// A kernel dump is written in full at least this often (of the dumps' own time), so a reader
/// that lost a dump to a damaged chunk has the kernel's table again within this long.
pub const FULL_DUMP_EVERY_NS: u64 = 60_000_000_000;

/// A full dump: every socket and owner, then (since version 2) the dump's sequence number.
pub(super) fn encode_full(out: &mut BytesMut, tag: u8, k: &KernelTruth, seq: u64) {
    let at = begin_record(out, tag);
    out.put_u64_le(k.dump_ns);
    put_opt(out, k.timewait_kernel);
    out.put_u32_le(k.sockets.len() as u32);
    for s in &k.sockets {
        s.put(out);
    }
    out.put_u32_le(k.owners.len() as u32);
    for o in &k.owners {
        o.put(out);
    }
    // At the end: up to here the record is laid out as in version 1.
    put_varint(out, seq);
    end_record(out, at);
}

/// The length [`encode_full`] gives `k`, record header included, without writing it.
fn full_len(k: &KernelTruth, seq: u64) -> usize {
    5 + 8
        + 9
        + 4
        + k.sockets.iter().map(Element::len).sum::<usize>()
        + 4
        + k.owners.len() * OWNER_LEN
        + varint_len(seq)
}

/// A flight-recorder capture's first record: the dump `seq` as a base for the deltas after it
/// (laid out as a full dump, not an item).
pub fn encode_base(out: &mut BytesMut, table: &Table, seq: u64) {
    let at = begin_record(out, TAG_KERNEL_BASE);
    out.put_u64_le(table.dump_ns);
    put_opt(out, table.timewait_kernel);
    out.put_u32_le(table.starts.len() as u32);
    // The table holds its sockets as a full dump encodes them.
    out.put_slice(&table.sockets);
    out.put_u32_le(table.owners.len() as u32);
    for o in &table.owners {
        o.put(out);
    }
    put_varint(out, seq);
    end_record(out, at);
}

/// A dump kept as the base of the next delta: its sockets as a full dump encodes them, about
/// 22 bytes each where a `KernelSocket` takes 96, and where each starts. The writer keeps the
/// last dump it wrote in one, the reader the last it read, the flight recorder the last it
/// dropped: tens of thousands of sockets each.
#[derive(Default)]
pub struct Table {
    dump_ns: u64,
    timewait_kernel: Option<u64>,
    sockets: BytesMut,
    starts: Vec<u32>,
    owners: Vec<(u64, u32, Comm)>,
    /// Its sockets took more than 4 GiB (never, with sock_diag's tables): it is no base.
    overflow: bool,
}

impl Table {
    fn reset(&mut self, dump_ns: u64, timewait_kernel: Option<u64>) {
        self.dump_ns = dump_ns;
        self.timewait_kernel = timewait_kernel;
        self.sockets.clear();
        self.starts.clear();
        self.owners.clear();
        self.overflow = false;
    }

    /// Becomes `k`, reusing its buffers.
    fn fill(&mut self, k: &KernelTruth) {
        self.reset(k.dump_ns, k.timewait_kernel);
        self.starts.reserve_exact(k.sockets.len());
        for s in &k.sockets {
            self.push(s);
        }
        self.owners.extend_from_slice(&k.owners);
    }

    fn push(&mut self, s: &KernelSocket) {
        self.start();
        s.put(&mut self.sockets);
    }

    /// A socket as a full dump or a delta's literal encodes it.
    fn push_encoded(&mut self, raw: &[u8]) {
        self.start();
        self.sockets.extend_from_slice(raw);
    }

    fn start(&mut self) {
        match u32::try_from(self.sockets.len()) {
            Ok(at) => self.starts.push(at),
            Err(_) => {
                self.overflow = true;
                self.starts.push(0);
            }
        }
    }

    fn socket(&self, i: usize) -> Option<KernelSocket> {
        let start = *self.starts.get(i)? as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.sockets.len(), |&e| e as usize);
        KernelSocket::get(&mut self.sockets.get(start..end)?).ok()
    }

    /// Sockets in the table.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

/// What [`KernelEncoder::encode`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Full,
    Delta,
}

/// Writes a recording's kernel dumps: in full now and then, otherwise as deltas against the
/// dump before (see the module comment). Keeps that dump, in a [`Table`].
pub struct KernelEncoder {
    /// The last dump written and its number; None when the next one must be full.
    prev: Option<(u64, Table)>,
    next_seq: u64,
    /// `dump_ns` of the last full dump.
    last_full_ns: u64,
    full_every_ns: u64,
}

impl Default for KernelEncoder {
    fn default() -> Self {
        Self::new(FULL_DUMP_EVERY_NS)
    }
}

impl KernelEncoder {
    pub fn new(full_every_ns: u64) -> Self {
        Self {
            prev: None,
            next_seq: 0,
            last_full_ns: 0,
            full_every_ns,
        }
    }

    /// The next dump is written in full (the last one written was taken back).
    pub fn forget(&mut self) {
        self.prev = None;
    }

    /// Appends `k` as a full dump or as a delta, whichever the policy and the sizes say.
    pub fn encode(&mut self, out: &mut BytesMut, k: &KernelTruth) -> Written {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let mut written = Written::Full;
        if let Some((_, base)) = self.prev.as_ref().filter(|(_, t)| !t.overflow) {
            let due = k.dump_ns < self.last_full_ns
                || k.dump_ns - self.last_full_ns >= self.full_every_ns;
            if !due {
                let start = out.len();
                encode_delta(out, base, k, seq);
                if (out.len() - start) * 8 < full_len(k, seq) * 7 {
                    written = Written::Delta;
                } else {
                    // Most of the table changed (a port range cycled within one interval): the
                    // full dump is hardly larger, and a reader can start at it.
                    out.truncate(start);
                }
            }
        }
        if written == Written::Full {
            encode_full(out, TAG_KERNEL, k, seq);
            self.last_full_ns = k.dump_ns;
        }
        let (prev_seq, table) = self.prev.get_or_insert_with(Default::default);
        *prev_seq = seq;
        table.fill(k);
        written
    }
}

fn encode_delta(out: &mut BytesMut, base: &Table, k: &KernelTruth, seq: u64) {
    let at = begin_record(out, TAG_KERNEL_DELTA);
    out.put_u64_le(k.dump_ns);
    put_opt(out, k.timewait_kernel);
    put_varint(out, seq);
    put_varint(out, k.sockets.len() as u64);
    put_ops(
        out,
        base,
        &k.sockets,
        i128::from(base.dump_ns) - i128::from(k.dump_ns),
    );
    put_varint(out, k.owners.len() as u64);
    put_ops(out, base.owners.as_slice(), &k.owners, 0);
    end_record(out, at);
}

/// What a delta's runs copy: sockets (with timers that shift) and owners.
trait Element: Sized {
    /// Everything the encoding keeps except the timer: a copied element has the same key.
    type Key: Hash + Eq;
    fn key(&self) -> Self::Key;
    /// `self` as a copy in a run with timer shift `shift` gives it; None when the timer would
    /// overflow.
    fn shifted(&self, shift: i128) -> Option<Self>;
    /// The shift that turns base element `self` into `new` (`last` when that does); None when
    /// they are not the same element.
    fn shift_to(&self, new: &Self, last: i128) -> Option<i128>;
    /// Shifts are allowed (op kind 1).
    const SHIFTS: bool;
    fn put(&self, out: &mut BytesMut);
    fn len(&self) -> usize;
    fn get(b: &mut &[u8]) -> Result<Self, RecordError>;
}

/// What a delta's runs copy from: the sockets of a [`Table`], or owners.
trait Base<T> {
    fn count(&self) -> usize;
    /// Element `i`; None past the end (or when a table's bytes do not decode, which its own
    /// encoding never gives).
    fn at(&self, i: usize) -> Option<T>;
}

impl<T: Copy> Base<T> for [T] {
    fn count(&self) -> usize {
        self.len()
    }

    fn at(&self, i: usize) -> Option<T> {
        self.get(i).copied()
    }
}

impl Base<KernelSocket> for Table {
    fn count(&self) -> usize {
        self.len()
    }

    fn at(&self, i: usize) -> Option<KernelSocket> {
        self.socket(i)
    }
}

/// A timer `shift` later (or earlier), as sock_diag would report it: never below 0.
fn shift_timer(expires_ns: u64, shift: i128) -> Option<u64> {
    let v = i128::from(expires_ns) + shift;
    if v < 0 {
        Some(0)
    } else {
        u64::try_from(v).ok()
    }
}

/// Addresses as the encoding keeps them: IP and port (an IPv6 flow label or scope is not
/// recorded).
type AddrKey = (IpAddr, u16);

fn addr_key(a: SocketAddr) -> AddrKey {
    (a.ip(), a.port())
}

impl Element for KernelSocket {
    type Key = (u8, AddrKey, AddrKey, u64, u64, u32);

    fn key(&self) -> Self::Key {
        (
            state_code(self.state) | if self.timewait { SOCK_TIMEWAIT } else { 0 },
            addr_key(self.local),
            addr_key(self.remote),
            self.cookie,
            self.inode,
            self.netns,
        )
    }

    fn shifted(&self, shift: i128) -> Option<Self> {
        Some(Self {
            expires_ns: shift_timer(self.expires_ns, shift)?,
            ..*self
        })
    }

    fn shift_to(&self, new: &Self, last: i128) -> Option<i128> {
        if self.key() != new.key() {
            return None;
        }
        if shift_timer(self.expires_ns, last) == Some(new.expires_ns) {
            return Some(last);
        }
        Some(i128::from(new.expires_ns) - i128::from(self.expires_ns))
    }

    const SHIFTS: bool = true;

    /// One byte of state and flags, the addresses, varints for the counters, and the timer in
    /// milliseconds (what sock_diag reports) when it is a whole number of them.
    fn put(&self, out: &mut BytesMut) {
        let ms = self.expires_ns.is_multiple_of(1_000_000);
        out.put_u8(
            state_code(self.state)
                | if self.timewait { SOCK_TIMEWAIT } else { 0 }
                | if ms { SOCK_EXPIRES_MS } else { 0 }
                | if self.netns != 0 { SOCK_NETNS } else { 0 },
        );
        put_addr(out, self.local);
        put_addr(out, self.remote);
        put_varint(out, self.cookie);
        put_varint(out, self.inode);
        put_varint(out, timer_field(self.expires_ns));
        if self.netns != 0 {
            put_varint(out, u64::from(self.netns));
        }
    }

    fn len(&self) -> usize {
        1 + addr_len(self.local)
            + addr_len(self.remote)
            + varint_len(self.cookie)
            + varint_len(self.inode)
            + varint_len(timer_field(self.expires_ns))
            + if self.netns != 0 {
                varint_len(u64::from(self.netns))
            } else {
                0
            }
    }

    fn get(b: &mut &[u8]) -> Result<Self, RecordError> {
        let flags = get_u8(b)?;
        if flags & !(SOCK_STATE | SOCK_TIMEWAIT | SOCK_EXPIRES_MS | SOCK_NETNS) != 0 {
            return Err(bad("socket flags", flags));
        }
        let code = flags & SOCK_STATE;
        let state = TcpState::try_from(u32::from(code)).map_err(|_| bad("TCP state", code))?;
        let local = get_addr(b)?;
        let remote = get_addr(b)?;
        let cookie = get_varint(b)?;
        let inode = get_varint(b)?;
        let expires = get_varint(b)?;
        let expires_ns = if flags & SOCK_EXPIRES_MS != 0 {
            expires
                .checked_mul(1_000_000)
                .ok_or(bad("socket timer", expires))?
        } else {
            expires
        };
        let netns = if flags & SOCK_NETNS != 0 {
            let v = get_varint(b)?;
            u32::try_from(v).map_err(|_| bad("network namespace", v))?
        } else {
            0
        };
        Ok(KernelSocket {
            state,
            timewait: flags & SOCK_TIMEWAIT != 0,
            local,
            remote,
            cookie,
            inode,
            expires_ns,
            netns,
        })
    }
}

/// A socket's timer as written: in milliseconds when it is a whole number of them.
fn timer_field(expires_ns: u64) -> u64 {
    if expires_ns.is_multiple_of(1_000_000) {
        expires_ns / 1_000_000
    } else {
        expires_ns
    }
}

impl Element for (u64, u32, Comm) {
    type Key = (u64, u32, [u8; COMM_LEN]);

    fn key(&self) -> Self::Key {
        (self.0, self.1, comm_bytes(&self.2))
    }

    fn shifted(&self, _shift: i128) -> Option<Self> {
        Some(*self)
    }

    fn shift_to(&self, new: &Self, last: i128) -> Option<i128> {
        (self.key() == new.key()).then_some(last)
    }

    const SHIFTS: bool = false;

    fn put(&self, out: &mut BytesMut) {
        out.put_u64_le(self.0);
        out.put_u32_le(self.1);
        out.put_slice(&comm_bytes(&self.2));
    }

    fn len(&self) -> usize {
        OWNER_LEN
    }

    fn get(b: &mut &[u8]) -> Result<Self, RecordError> {
        Ok((get_u64(b)?, get_u32(b)?, get_comm(b)?))
    }
}

const OP_COPY: u64 = 0;
const OP_COPY_SHIFT: u64 = 1;
const OP_LITERAL: u64 = 2;

/// Writes `new` as runs copied from `base` and literals; `shift` is the timer shift an
/// unchanged deadline needs. The runs copy at most `base.count()` elements in all, which bounds
/// what a reader allocates.
fn put_ops<T: Element, B: Base<T> + ?Sized>(
    out: &mut BytesMut,
    base: &B,
    new: &[T],
    mut shift: i128,
) {
    let hasher = RandomState::new();
    // (hash of the key, index) of the base's elements, sorted: built at the first element not
    // found at the cursor (a table that only grew never needs it). A sorted list rather than a
    // map: half the memory, for a table of tens of thousands of sockets.
    let mut index: Option<Vec<(u64, u32)>> = None;
    let mut find = |e: &T, shift: i128| -> Option<(usize, i128)> {
        let index = index.get_or_insert_with(|| {
            let mut index: Vec<(u64, u32)> = (0..base.count())
                .filter_map(|i| Some((hasher.hash_one(base.at(i)?.key()), u32::try_from(i).ok()?)))
                .collect();
            index.sort_unstable();
            index
        });
        let h = hasher.hash_one(e.key());
        let first = index.partition_point(|&(x, _)| x < h);
        index[first..]
            .iter()
            .take_while(|&&(x, _)| x == h)
            .find_map(|&(_, j)| {
                let j = j as usize;
                Some((j, base.at(j)?.shift_to(e, shift)?))
            })
    };
    let mut cursor = 0usize;
    let mut copied = 0usize;
    // Where the literals not written yet start in `new`.
    let mut literal_from = 0usize;
    let mut i = 0usize;
    while i < new.len() {
        let e = &new[i];
        let found = match base.at(cursor).and_then(|b| b.shift_to(e, shift)) {
            Some(d) => Some((cursor, d)),
            None => find(e, shift),
        };
        let change = found.and_then(|(_, d)| i64::try_from(d - shift).ok());
        let (Some((j, d)), Some(change)) = (found, change) else {
            i += 1;
            continue;
        };
        if copied >= base.count() {
            i += 1;
            continue;
        }
        put_literals(out, &new[literal_from..i]);
        let mut len = 1;
        while i + len < new.len()
            && copied + len < base.count()
            && base.at(j + len).and_then(|b| b.shift_to(&new[i + len], d)) == Some(d)
        {
            len += 1;
        }
        let kind = if change == 0 { OP_COPY } else { OP_COPY_SHIFT };
        put_varint(out, (len as u64) << 2 | kind);
        put_varint(out, zigzag(j as i64 - cursor as i64));
        if change != 0 {
            put_varint(out, zigzag(change));
        }
        shift = d;
        cursor = j + len;
        copied += len;
        i += len;
        literal_from = i;
    }
    put_literals(out, &new[literal_from..]);
}

fn put_literals<T: Element>(out: &mut BytesMut, literals: &[T]) {
    if literals.is_empty() {
        return;
    }
    put_varint(out, (literals.len() as u64) << 2 | OP_LITERAL);
    for e in literals {
        e.put(out);
    }
}

/// Reads what [`put_ops`] wrote: `count` elements, each handed to `push` with, for a literal,
/// its encoding (a table keeps it as it is).
fn get_ops<T: Element, B: Base<T> + ?Sized>(
    b: &mut &[u8],
    base: &B,
    count: usize,
    mut shift: i128,
    mut push: impl FnMut(T, Option<&[u8]>),
) -> Result<(), RecordError> {
    let mut cursor = 0usize;
    let mut copied = 0usize;
    let mut done = 0usize;
    while done < count {
        let op = get_varint(b)?;
        let n = op >> 2;
        if n == 0 || n > (count - done) as u64 {
            return Err(bad("run length", n));
        }
        // Below `count`, which fits in memory.
        let n = n as usize;
        match op & 3 {
            OP_COPY | OP_COPY_SHIFT => {
                let gap = unzigzag(get_varint(b)?);
                let start = i128::from(cursor as u64) + i128::from(gap);
                let end = start + n as i128;
                if start < 0 || end > base.count() as i128 || copied + n > base.count() {
                    return Err(bad("run start", start.unsigned_abs() as u64));
                }
                if op & 3 == OP_COPY_SHIFT {
                    if !T::SHIFTS {
                        return Err(bad("run kind", op & 3));
                    }
                    shift += i128::from(unzigzag(get_varint(b)?));
                }
                for j in start as usize..end as usize {
                    let e = base
                        .at(j)
                        .and_then(|e| e.shifted(shift))
                        .ok_or(bad("timer shift", shift.unsigned_abs() as u64))?;
                    push(e, None);
                }
                cursor = end as usize;
                copied += n;
            }
            OP_LITERAL => {
                for _ in 0..n {
                    let raw = *b;
                    let e = T::get(b)?;
                    push(e, Some(&raw[..raw.len() - b.len()]));
                }
            }
            other => return Err(bad("run kind", other)),
        }
        done += n;
    }
    Ok(())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn addr_len(a: SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 7,
        SocketAddr::V6(_) => 19,
    }
}

// ---- decoding -------------------------------------------------------------------------------

/// The kernel side of a [`super::format::Decoder`]: the last dump, for the next delta.
#[derive(Default)]
pub struct KernelDecoder {
    /// The last dump decoded and its number.
    base: Option<(u64, Table)>,
    /// Deltas dropped since the last [`KernelDecoder::take_dropped`].
    dropped: u64,
    /// A delta was dropped and no full dump has come since.
    lost: bool,
}

impl KernelDecoder {
    pub fn base(&self) -> Option<(u64, &Table)> {
        self.base
            .as_ref()
            .filter(|(_, t)| !t.overflow)
            .map(|(seq, t)| (*seq, t))
    }

    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Decodes a record with one of the kernel tags. Returns the dump when `item` (None for a
    /// delta dropped for want of its base); without `item` it only keeps the table. After an
    /// error no delta applies until the next full dump.
    pub fn decode(
        &mut self,
        tag: u8,
        b: &mut &[u8],
        item: bool,
    ) -> Result<Option<KernelTruth>, RecordError> {
        let decoded = if tag == TAG_KERNEL_DELTA {
            self.delta(b, item)
        } else {
            self.full(b, item)
        };
        decoded.inspect_err(|_| self.base = None)
    }

    /// An empty table for the dump being decoded. (Not the buffers of the one before: the
    /// flight recorder would keep a second table for them all the time.)
    fn fresh(dump_ns: u64, timewait_kernel: Option<u64>) -> Table {
        Table {
            dump_ns,
            timewait_kernel,
            ..Table::default()
        }
    }

    /// A full dump (or base): it becomes the base. Version 1 wrote no number: no delta follows.
    fn full(&mut self, b: &mut &[u8], item: bool) -> Result<Option<KernelTruth>, RecordError> {
        let dump_ns = get_u64(b)?;
        let timewait_kernel = get_opt(b)?;
        let n = get_u32(b)? as usize;
        if n > b.remaining() / MIN_SOCKET_LEN {
            return Err(bad("socket count", n as u64));
        }
        // Freed before the new one grows.
        self.base = None;
        let mut table = Self::fresh(dump_ns, timewait_kernel);
        // The table is the record's sockets as they are: no room to spare (it stays).
        table.sockets.reserve(b.remaining());
        table.starts.reserve_exact(n);
        let mut sockets = Vec::with_capacity(if item { n } else { 0 });
        for _ in 0..n {
            let raw = *b;
            let s = KernelSocket::get(b)?;
            table.push_encoded(&raw[..raw.len() - b.len()]);
            if item {
                sockets.push(s);
            }
        }
        let n = get_u32(b)? as usize;
        if n > b.remaining() / OWNER_LEN {
            return Err(bad("owner count", n as u64));
        }
        for _ in 0..n {
            table.owners.push(<(u64, u32, Comm)>::get(b)?);
        }
        let seq = if b.has_remaining() {
            get_varint(b)?
        } else {
            // Version 1: nothing refers to it, but it is the latest dump all the same.
            u64::MAX
        };
        self.lost = false;
        let k = item.then(|| KernelTruth {
            dump_ns,
            sockets,
            owners: table.owners.clone(),
            timewait_kernel,
            // Not recorded: a replay takes the header's (see `Core::set_port_fallback`).
            port_settings: Vec::new(),
        });
        self.base = Some((seq, table));
        Ok(k)
    }

    /// A delta: applied to the base when the base is the dump before it; otherwise dropped.
    fn delta(&mut self, b: &mut &[u8], item: bool) -> Result<Option<KernelTruth>, RecordError> {
        let dump_ns = get_u64(b)?;
        let timewait_kernel = get_opt(b)?;
        let seq = get_varint(b)?;
        let base = match self.base.take() {
            Some((base_seq, base)) if base_seq.checked_add(1) == Some(seq) && !base.overflow => {
                base
            }
            _ => {
                self.dropped += 1;
                self.lost = true;
                return Ok(None);
            }
        };
        let n = get_varint(b)?;
        if n > (base.len() + b.remaining() / MIN_SOCKET_LEN) as u64 {
            return Err(bad("socket count", n));
        }
        let mut table = Self::fresh(dump_ns, timewait_kernel);
        table.sockets.reserve(base.sockets.len() + b.remaining());
        table.starts.reserve_exact(n as usize);
        let mut sockets = Vec::with_capacity(if item { n as usize } else { 0 });
        let shift = i128::from(base.dump_ns) - i128::from(dump_ns);
        get_ops(b, &base, n as usize, shift, |s, raw| {
            match raw {
                Some(raw) => table.push_encoded(raw),
                None => table.push(&s),
            }
            if item {
                sockets.push(s);
            }
        })?;
        let n = get_varint(b)?;
        if n > (base.owners.len() + b.remaining() / OWNER_LEN) as u64 {
            return Err(bad("owner count", n));
        }
        table.owners.reserve(n as usize);
        get_ops(b, base.owners.as_slice(), n as usize, 0, |o, _| {
            table.owners.push(o)
        })?;
        let k = item.then(|| KernelTruth {
            dump_ns,
            sockets,
            owners: table.owners.clone(),
            timewait_kernel,
            // Not recorded: a replay takes the header's (see `Core::set_port_fallback`).
            port_settings: Vec::new(),
        });
        drop(base);
        self.base = Some((seq, table));
        Ok(k)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;
    use crate::{
        recording::{
            Problem, Writer,
            format::{CHUNK_HEADER_LEN, PREAMBLE_LEN},
            tests::{event, header, read_all},
        },
        stream::Item,
    };

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    /// A table of `n` TIME_WAIT sockets as sock_diag gives them, dumped at `dump_ns`: timers in
    /// whole milliseconds, one socket closing every 3 ms.
    pub(crate) fn tw_table(n: usize, dump_ns: u64) -> KernelTruth {
        KernelTruth {
            dump_ns,
            sockets: (0..n as u64)
                .map(|i| tw_socket(i, 60_000 - (i * 3) % 60_000))
                .collect(),
            owners: vec![(99, 4242, Comm::from("java"))],
            timewait_kernel: Some(n as u64),
            port_settings: Vec::new(),
        }
    }

    fn tw_socket(id: u64, expires_ms: u64) -> KernelSocket {
        KernelSocket {
            netns: 0,
            state: TcpState::TimeWait,
            local: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                20_000 + (id % 40_000) as u16,
            ),
            remote: "127.0.0.1:8080".parse().expect("addr"),
            cookie: 0x10_0000 + id,
            inode: 0,
            timewait: true,
            expires_ns: expires_ms * MS,
        }
    }

    /// The dump `dt_ns` after `prev`, as the kernel would give it: every deadline where it was
    /// (sockets whose timer ran out are gone), every `gone_every`-th other socket gone too
    /// (its port reused), `added` new sockets spread through the table (hash order), and the
    /// kernel's jiffies ticking once during the dump, so the sockets from `tick_at` on report
    /// 4 ms less. `fresh` numbers the new sockets.
    pub(crate) fn next_dump(
        prev: &KernelTruth,
        dt_ns: u64,
        gone_every: usize,
        added: usize,
        tick_at: usize,
        fresh: &mut u64,
    ) -> KernelTruth {
        let mut sockets: Vec<KernelSocket> = prev
            .sockets
            .iter()
            .enumerate()
            .filter(|&(i, s)| s.expires_ns > dt_ns && (gone_every == 0 || i % gone_every != 1))
            .map(|(_, s)| KernelSocket {
                expires_ns: s.expires_ns - dt_ns,
                ..*s
            })
            .collect();
        let stride = (sockets.len() / added.max(1)).max(1);
        for k in 0..added {
            *fresh += 1;
            let at = (k * stride + k).min(sockets.len());
            sockets.insert(at, tw_socket(100_000 + *fresh, 60_000));
        }
        for s in sockets.iter_mut().skip(tick_at) {
            s.expires_ns = s.expires_ns.saturating_sub(4 * MS);
        }
        KernelTruth {
            dump_ns: prev.dump_ns + dt_ns,
            timewait_kernel: Some(sockets.len() as u64),
            sockets,
            owners: prev.owners.clone(),
            port_settings: Vec::new(),
        }
    }

    /// The (tag, length) of every record in an intact file, in order.
    fn records_of(file: &[u8]) -> Vec<(u8, usize)> {
        let header_len = u32::from_le_bytes(file[12..16].try_into().expect("4 bytes")) as usize;
        let mut at = PREAMBLE_LEN + header_len;
        let mut out = Vec::new();
        while at < file.len() {
            let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().expect("4")) as usize;
            let mut payload = &file[at + CHUNK_HEADER_LEN..at + CHUNK_HEADER_LEN + len];
            while !payload.is_empty() {
                let n = u32::from_le_bytes(payload[1..5].try_into().expect("4")) as usize;
                out.push((payload[0], 5 + n));
                payload = &payload[5 + n..];
            }
            at += CHUNK_HEADER_LEN + len;
        }
        out
    }

    /// A recording of `items`, each in a chunk of its own, and where each chunk starts.
    fn one_per_chunk(items: &[Item]) -> (Vec<u8>, Vec<usize>) {
        let mut w = Writer::new(Vec::new(), &header(), None).expect("header");
        let mut starts = Vec::new();
        for item in items {
            starts.push(w.bytes_written() as usize);
            w.record(item).expect("vec write");
            w.flush().expect("vec write");
        }
        (w.into_inner(), starts)
    }

    fn kernel_tags(file: &[u8]) -> Vec<u8> {
        records_of(file)
            .into_iter()
            .map(|(tag, _)| tag)
            .filter(|&t| t != TAG_KERNEL_BASE && (t == TAG_KERNEL || t == TAG_KERNEL_DELTA))
            .collect()
    }

    #[test]
    fn unchanged_sockets_cost_nothing_and_gone_ones_next_to_nothing() {
        let first = tw_table(10_000, 100 * SEC);
        let mut fresh = 0;
        // 2 s later, the same sockets with the same deadlines, reported in one jiffy.
        let same = next_dump(&first, 2 * SEC, 0, 0, usize::MAX, &mut fresh);
        // The same with a jiffy tick half-way through the dump.
        let ticked = next_dump(&first, 2 * SEC, 0, 0, 5_000, &mut fresh);
        // A tenth of the sockets gone (their ports reused), 200 new ones.
        let churned = next_dump(&first, 2 * SEC, 10, 200, 5_000, &mut fresh);
        // And a dump 2.0004 s later: the timers shift by no whole number of milliseconds.
        let mut odd = same.clone();
        odd.dump_ns += 400_000;
        for s in &mut odd.sockets {
            s.expires_ns -= 400_000;
        }
        let mut sizes = Vec::new();
        for next in [&same, &ticked, &churned, &odd] {
            let items = [Item::Kernel(first.clone()), Item::Kernel(next.clone())];
            let (file, _) = one_per_chunk(&items);
            let (read, problems) = read_all(&file).expect("reads");
            assert!(
                problems.iter().all(|p| *p == Problem::NoEnd),
                "{problems:?}"
            );
            assert_eq!(read, items, "exactly the dumps given");
            let records = records_of(&file);
            assert_eq!(records[0].0, TAG_KERNEL);
            assert_eq!(records[1].0, TAG_KERNEL_DELTA);
            sizes.push((records[0].1, records[1].1));
        }
        let (full, same_len) = sizes[0];
        assert!(
            full > 10_000 * 18,
            "{full} bytes for 10,000 sockets in full"
        );
        assert!(same_len <= 40, "an unchanged table: {same_len} bytes");
        assert!(sizes[1].1 <= 45, "one tick: {} bytes", sizes[1].1);
        assert!(sizes[3].1 <= 45, "an odd interval: {} bytes", sizes[3].1);
        // 1,000 gone at 1 to 3 bytes each (the run after the gap), 200 new at ~24 bytes each.
        let churn_len = sizes[2].1;
        assert!(
            churn_len <= 1_000 * 4 + 200 * 26,
            "a tenth gone and 200 new: {churn_len} bytes"
        );
    }

    #[test]
    fn full_dumps_come_first_every_minute_and_when_smaller_than_the_delta() {
        let mut fresh = 0;
        let mut dumps = vec![tw_table(500, 10 * SEC)];
        for _ in 0..70 {
            let prev = dumps.last().expect("one");
            dumps.push(next_dump(prev, 2 * SEC, 50, 10, 100, &mut fresh));
        }
        // A table that changed entirely (all ports reused within the interval).
        let mut fresh_table = tw_table(500, dumps[70].dump_ns + 2 * SEC);
        for s in &mut fresh_table.sockets {
            s.cookie += 1 << 40;
        }
        dumps.push(fresh_table);
        let items: Vec<Item> = dumps.iter().cloned().map(Item::Kernel).collect();
        let (file, _) = one_per_chunk(&items);
        let (read, _) = read_all(&file).expect("reads");
        assert_eq!(read, items);
        let full_at: Vec<usize> = kernel_tags(&file)
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == TAG_KERNEL)
            .map(|(i, _)| i)
            .collect();
        // Dumps 2 s apart: full at 0 s, 60 s, 120 s, and the table that changed entirely.
        assert_eq!(full_at, [0, 30, 60, 71]);
    }

    #[test]
    fn a_delta_without_its_base_is_dropped_and_reported_until_the_next_full_dump() {
        let mut fresh = 0;
        let mut items = vec![Item::Kernel(tw_table(300, 10 * SEC))];
        for i in 0..40u64 {
            let Some(Item::Kernel(prev)) =
                items.iter().rev().find(|i| matches!(i, Item::Kernel(_)))
            else {
                unreachable!("a dump is there");
            };
            let next = next_dump(prev, 2 * SEC, 30, 5, 100, &mut fresh);
            items.push(Item::Event(event(i)));
            items.push(Item::Kernel(next));
        }
        let (file, starts) = one_per_chunk(&items);
        let tags = kernel_tags(&file);
        assert_eq!(tags[0], TAG_KERNEL);
        assert_eq!(tags[30], TAG_KERNEL, "the full dump 60 s in");
        assert!(tags[1..30].iter().all(|&t| t == TAG_KERNEL_DELTA));
        // Damage the chunk of dump 2 (item 4): dumps 3 to 29 have no base.
        let mut damaged = file.clone();
        damaged[starts[4] + CHUNK_HEADER_LEN + 9] ^= 0x10;
        let (read, problems) = read_all(&damaged).expect("reads");
        let kernel_index = |item: usize| item / 2;
        let want: Vec<Item> = items
            .iter()
            .enumerate()
            .filter(|&(i, item)| {
                i != 4 && !(matches!(item, Item::Kernel(_)) && (3..30).contains(&kernel_index(i)))
            })
            .map(|(_, item)| item.clone())
            .collect();
        assert_eq!(
            read, want,
            "events all read, no dump wrong, deltas dropped up to the full"
        );
        assert_eq!(
            problems,
            [
                Problem::Skipped {
                    offset: starts[4] as u64,
                    why: "checksum mismatch".into()
                },
                Problem::NoBase {
                    offset: starts[6] as u64,
                    dropped: 27
                },
                Problem::NoEnd,
            ]
        );
        assert_eq!(
            problems[1].to_string(),
            format!(
                "27 kernel socket-table dumps from byte {} on dropped: stored as changes to a \
                 dump lost in damaged data; the table is known again from the next full dump",
                starts[6]
            )
        );
        // No full dump after the damage: reported at the end.
        let mut damaged = file.clone();
        damaged[starts[64] + CHUNK_HEADER_LEN + 9] ^= 0x10;
        let (read, problems) = read_all(&damaged).expect("reads");
        assert_eq!(read.len(), items.len() - 1 - 8);
        assert_eq!(
            problems[1],
            Problem::NoBase {
                offset: starts[66] as u64,
                dropped: 8
            }
        );
    }

    // ---- property tests ---------------------------------------------------------------------

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(o, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), p)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(o, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), p)),
        ]
    }

    fn arb_timer() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0u64..120_000).prop_map(|ms| ms * MS),
            0u64..3 * SEC,
            Just(0),
            any::<u64>(),
        ]
    }

    fn arb_socket() -> impl Strategy<Value = KernelSocket> {
        (
            (1u32..=13).prop_map(|n| TcpState::try_from(n).expect("valid")),
            arb_addr(),
            arb_addr(),
            prop_oneof![0u64..64, any::<u64>()],
            prop_oneof![Just(0u64), any::<u64>()],
            any::<bool>(),
            arb_timer(),
        )
            .prop_map(
                |(state, local, remote, cookie, inode, timewait, expires_ns)| KernelSocket {
                    netns: 0,
                    state,
                    local,
                    remote,
                    cookie,
                    inode,
                    timewait,
                    expires_ns,
                },
            )
    }

    fn arb_owner() -> impl Strategy<Value = (u64, u32, Comm)> {
        (0u64..64, 0u32..4, "[a-z]{0,15}").prop_map(|(i, p, c)| (i, p, Comm::from(c.as_str())))
    }

    /// How one dump follows the one before.
    #[derive(Clone, Debug)]
    struct Step {
        /// Time between the dumps: usually forward by up to 10 s, now and then anything (a
        /// clock that wrapped, a dump out of order).
        dt: u64,
        /// Which sockets stay, cycled over the table.
        keep: Vec<bool>,
        /// (index, change): from the index on, timers move by this much more (jiffies ticking
        /// during the dump, a re-armed timer).
        ticks: Vec<(usize, i64)>,
        /// (index, timer): one socket's timer set to anything.
        rearm: Vec<(usize, u64)>,
        /// (index, state): one socket in another state.
        changed: Vec<(usize, u32)>,
        /// (index, socket): a new socket there.
        added: Vec<(usize, KernelSocket)>,
        /// (from, to): a copy of a socket elsewhere (sock_diag never repeats one, but nothing
        /// here may depend on it).
        duplicated: Vec<(usize, usize)>,
        /// Two sockets swap places (order is the kernel's hash order, stable but not promised).
        swap: Option<(usize, usize)>,
        owners_keep: Vec<bool>,
        owners_added: Vec<(usize, (u64, u32, Comm))>,
        timewait_kernel: Option<u64>,
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        (
            (
                prop_oneof![9 => 0u64..10 * SEC, 1 => any::<u64>()],
                prop::collection::vec(prop::bool::weighted(0.8), 1..8),
                prop::collection::vec((any::<usize>(), -10_000_000i64..10_000_000), 0..3),
                prop::collection::vec((any::<usize>(), arb_timer()), 0..2),
                prop::collection::vec((any::<usize>(), 1u32..=13), 0..2),
            ),
            (
                prop::collection::vec((any::<usize>(), arb_socket()), 0..4),
                prop::collection::vec((any::<usize>(), any::<usize>()), 0..2),
                proptest::option::weighted(0.1, (any::<usize>(), any::<usize>())),
                prop::collection::vec(prop::bool::weighted(0.8), 1..4),
                prop::collection::vec((any::<usize>(), arb_owner()), 0..2),
                any::<Option<u64>>(),
            ),
        )
            .prop_map(
                |(
                    (dt, keep, ticks, rearm, changed),
                    (added, duplicated, swap, owners_keep, owners_added, timewait_kernel),
                )| Step {
                    dt,
                    keep,
                    ticks,
                    rearm,
                    changed,
                    added,
                    duplicated,
                    swap,
                    owners_keep,
                    owners_added,
                    timewait_kernel,
                },
            )
    }

    fn evolve(prev: &KernelTruth, step: &Step) -> KernelTruth {
        let dump_ns = prev.dump_ns.wrapping_add(step.dt);
        let unchanged = i128::from(prev.dump_ns) - i128::from(dump_ns);
        let mut sockets: Vec<KernelSocket> = prev
            .sockets
            .iter()
            .enumerate()
            .filter(|&(i, _)| step.keep[i % step.keep.len()])
            .map(|(_, s)| *s)
            .collect();
        let mut extra = 0i128;
        for (i, s) in sockets.iter_mut().enumerate() {
            extra += step
                .ticks
                .iter()
                .filter(|&&(at, _)| at % (i + 1) == 0 && at % 7 == i % 7)
                .map(|&(_, change)| i128::from(change))
                .sum::<i128>();
            let v = i128::from(s.expires_ns) + unchanged + extra;
            s.expires_ns = u64::try_from(v.max(0)).unwrap_or(u64::MAX);
        }
        let n = sockets.len();
        if n > 0 {
            for &(i, timer) in &step.rearm {
                sockets[i % n].expires_ns = timer;
            }
            for &(i, state) in &step.changed {
                sockets[i % n].state = TcpState::try_from(state).expect("valid");
            }
            if let Some((a, b)) = step.swap {
                sockets.swap(a % n, b % n);
            }
            for &(from, to) in &step.duplicated {
                let s = sockets[from % n];
                sockets.insert(to % (n + 1), s);
            }
        }
        for (at, s) in &step.added {
            let at = at % (sockets.len() + 1);
            sockets.insert(at, *s);
        }
        let mut owners: Vec<(u64, u32, Comm)> = prev
            .owners
            .iter()
            .enumerate()
            .filter(|&(i, _)| step.owners_keep[i % step.owners_keep.len()])
            .map(|(_, o)| *o)
            .collect();
        for (at, o) in &step.owners_added {
            let at = at % (owners.len() + 1);
            owners.insert(at, *o);
        }
        KernelTruth {
            dump_ns,
            sockets,
            owners,
            timewait_kernel: step.timewait_kernel,
            port_settings: Vec::new(),
        }
    }

    /// Sequences of dumps, each mostly the one before with some changes, as the kernel makes
    /// them; now and then one unrelated to the one before.
    pub(crate) fn arb_dumps(max: usize) -> impl Strategy<Value = Vec<KernelTruth>> {
        let first = (
            any::<u64>(),
            prop::collection::vec(arb_socket(), 0..24),
            prop::collection::vec(arb_owner(), 0..6),
        )
            .prop_map(|(dump_ns, sockets, owners)| KernelTruth {
                dump_ns,
                sockets,
                owners,
                timewait_kernel: None,
                port_settings: Vec::new(),
            });
        (
            first,
            prop::collection::vec(
                prop_oneof![20 => arb_step().prop_map(Some), 1 => Just(None)],
                0..max,
            ),
            prop::collection::vec(arb_socket(), 0..24),
        )
            .prop_map(|(first, steps, unrelated)| {
                let mut dumps = vec![first];
                for step in steps {
                    let prev = dumps.last().expect("the first");
                    let next = match step {
                        Some(step) => evolve(prev, &step),
                        None => KernelTruth {
                            dump_ns: prev.dump_ns.wrapping_add(SEC),
                            sockets: unrelated.clone(),
                            owners: Vec::new(),
                            timewait_kernel: Some(7),
                            port_settings: Vec::new(),
                        },
                    };
                    dumps.push(next);
                }
                dumps
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Decoding gives back every dump exactly, whichever were written as deltas, with
        /// events between them and chunks closed anywhere.
        #[test]
        fn sequences_of_dumps_round_trip(
            dumps in arb_dumps(16),
            flush_after in prop::collection::vec(any::<bool>(), 1..8),
            full_every in prop_oneof![Just(FULL_DUMP_EVERY_NS), 1u64..30 * SEC],
        ) {
            let mut items = Vec::new();
            for (i, k) in dumps.iter().enumerate() {
                items.push(Item::Kernel(k.clone()));
                if i % 3 == 0 {
                    items.push(Item::Event(event(i as u64)));
                }
            }
            let mut w = Writer::new(Vec::new(), &header(), None).expect("header");
            w.set_full_dump_every(full_every);
            for (i, item) in items.iter().enumerate() {
                w.record(item).expect("vec write");
                if flush_after[i % flush_after.len()] {
                    w.flush().expect("vec write");
                }
            }
            w.end(1).expect("vec write");
            let file = w.into_inner();
            let (read, problems) = read_all(&file).expect("reads");
            prop_assert!(problems.is_empty(), "{:?}", problems);
            items.push(Item::End { mono_ns: 1 });
            prop_assert_eq!(read, items);
        }
    }

    /// Deltas are not only correct but written: a realistic sequence is mostly deltas.
    #[test]
    fn a_table_that_changes_a_little_is_written_as_deltas() {
        let mut fresh = 0;
        let mut dumps = vec![tw_table(2_000, SEC)];
        for _ in 0..20 {
            let prev = dumps.last().expect("one");
            dumps.push(next_dump(prev, 2 * SEC, 40, 30, 700, &mut fresh));
        }
        let items: Vec<Item> = dumps.into_iter().map(Item::Kernel).collect();
        let (file, _) = one_per_chunk(&items);
        let tags = kernel_tags(&file);
        assert_eq!(tags[0], TAG_KERNEL);
        assert!(tags[1..].iter().all(|&t| t == TAG_KERNEL_DELTA), "{tags:?}");
    }
}
