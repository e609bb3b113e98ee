//! The kernel side of twtrace: classic tracepoints only, because this kernel refuses fentry,
//! fexit and tp_btf (see docs/kernel.md).
//!
//! `sock:inet_sock_set_state` fires in whatever context changed the state. For transitions driven
//! by an incoming packet that is softirq, and the current task is whoever happened to run on that
//! CPU (on loopback, the peer). So the owner is remembered per socket (keyed by skaddr) at the
//! transitions the owner makes itself, and every event carries that owner.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use twtrace_ebpf::{
    AF_INET, AF_INET6, COMM_LEN, CachedOwner, CallArgs, Event, IPPROTO_TCP, ListenerEntry,
    ListenerKey, MAX_CALLS, MAX_CGROUP_FILTER, MAX_PID_FILTER, MAX_PORT_FILTER, MAX_RINGS, Owner,
    SOCK_STREAM, SockEntry, call, errno, flags, globals, how, offsets, stat, tcp_state,
};

/// The event rings, one per CPU up to [`twtrace_ebpf::MAX_RINGS`] (see there, and `emit`).
/// Sized by the agent at load time (`ring_bytes` in agent/src/kernel/tracer.rs); rings it does
/// not use get one page. The size here is a fallback.
#[map]
static EVENTS0: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static EVENTS1: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static EVENTS2: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static EVENTS3: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static EVENTS4: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static EVENTS5: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static EVENTS6: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static EVENTS7: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Rings in use minus one; set by the agent (`globals::RING_MASK`).
#[unsafe(no_mangle)]
static RING_MASK: Global<u32> = Global::new(0);

/// Recently seen threads' comm and cgroup, per CPU, by thread id modulo `OWNER_SLOTS` (see
/// `fill_current_owner`).
#[map]
static OWNERS: PerCpuArray<CachedOwner> = PerCpuArray::with_max_entries(OWNER_SLOTS, 0);
/// Slots per CPU: a power of two, room for the threads that take turns on one CPU.
const OWNER_SLOTS: u32 = 64;
/// How long a cached comm and cgroup are used: 100 ms. A thread in a connect/close loop comes
/// back within microseconds; one that connects less than ten times a second costs little
/// either way.
const OWNER_CACHE_NS: u64 = 100_000_000;

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Live sockets: owner, reset flags and a close held back until destruction. Entries are removed
/// at `tcp:tcp_destroy_sock`, so the table holds only sockets alive now; a plain (not LRU) hash so
/// that running out of room is seen and counted (`stat::TABLE_FULL`) instead of silently evicting.
#[map]
static SOCKETS: HashMap<u64, SockEntry> = HashMap::with_max_entries(262_144, 0);

/// Listening sockets by network namespace and local port: the best owner of an accepted socket
/// until a process accept()s it. Listeners sharing a port in one namespace (SO_REUSEPORT, a
/// pre-fork server) share an entry (see `ListenerKey`).
#[map]
static LISTENERS: HashMap<ListenerKey, ListenerEntry> = HashMap::with_max_entries(16_384, 0);

#[map]
static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PID_FILTER, 0);

#[map]
static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORT_FILTER, 0);

/// `--cgroup`: the cgroup v2 ids (directory inodes) of the chosen cgroup and every cgroup below
/// it. The agent fills it before attaching and keeps it current as cgroups come and go
/// (`Tracer::refresh_cgroup_filter` in agent/src/kernel/tracer.rs): an id lookup here is one
/// hash probe per event, where matching the path prefix would need the whole ancestry.
#[map]
static CGROUP_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(MAX_CGROUP_FILTER, 0);

/// connect() and bind() calls in progress, one slot per thread (indexed by thread id modulo
/// `MAX_CALLS`): the address the caller passed, copied at `sys_enter_*` for `sys_exit_*` to
/// report if the call fails; the exit frees the slot. An array, not a hash map keyed by
/// pid_tgid: its lookup is inlined by the verifier and nothing is inserted or deleted, which
/// took the two programs from ~575 to ~240 ns per connect() (docs/kernel.md §6).
#[map]
static CALLS: Array<CallArgs> = Array::with_max_entries(MAX_CALLS, 0);

/// `globals::FILTER_*` bits, set by the loader.
#[unsafe(no_mangle)]
static FILTERS: Global<u32> = Global::new(0);

/// The namespace `--netns` keeps.
#[unsafe(no_mangle)]
static NETNS_FILTER: Global<u32> = Global::new(0);

/// Kernel struct offsets, from the kernel's BTF (the agent resolves them: CO-RE relocations are
/// not available to this Rust program). With `BTF_OK` 0 none of them is used: sockets have
/// namespace 0 and the accept programs are not attached.
#[unsafe(no_mangle)]
static BTF_OK: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SOCK_NET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_NET_INUM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_FILES: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_FILES_FDT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_FDTABLE_FD: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_FDTABLE_MAX_FDS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_FILE_PRIVATE_DATA: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SOCKET_SK: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SOCK_PROTOCOL: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SOCK_TYPE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SOCK_FLAGS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BIT_SOCK_DEAD: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BIT_SOCK_DONE: Global<u32> = Global::new(0);

/// Reads a kernel value at `base + offset` with bpf_probe_read_kernel, which checks the
/// address and fails instead of faulting. None on failure (a NULL pointer on the way).
#[inline(always)]
fn kread<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: the helper validates the address itself; a bad one returns an error, and `T` is a
    // plain integer, valid for any bytes.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The network namespace of the socket at `skaddr`: sk->__sk_common.skc_net.net->ns.inum.
/// 0 when not known.
#[inline(always)]
fn netns_of(skaddr: u64) -> u32 {
    if BTF_OK.load() == 0 {
        return 0;
    }
    kread::<u64>(skaddr, OFF_SOCK_NET.load())
        .and_then(|net| kread::<u32>(net, OFF_NET_INUM.load()))
        .unwrap_or(0)
}

/// Whether a socket going `FIN_WAIT2 -> CLOSE` is an orphan the peer has not sent its FIN to:
/// `SOCK_DEAD` set (its process closed it) and `SOCK_DONE` clear (`tcp_fin()` sets it when the
/// peer's FIN arrives). `tcp_time_wait()` then made a timewait socket in the FIN_WAIT2 substate
/// (from `tcp_close()`, from the ACK of our FIN in `tcp_rcv_state_process()`, or from the
/// keepalive timer); with the peer's FIN it is TIME_WAIT. One probe read of `sk->sk_flags`,
/// at this transition only. False when it cannot be read (no BTF): TIME_WAIT, as before.
#[inline(always)]
fn orphan_without_peer_fin(skaddr: u64) -> bool {
    if BTF_OK.load() == 0 {
        return false;
    }
    let Some(sk_flags) = kread::<u64>(skaddr, OFF_SOCK_FLAGS.load()) else {
        return false;
    };
    // The bit numbers are below 64 (checked by the agent against BTF); masked so the verifier
    // sees a shift it accepts.
    let dead = (sk_flags >> (BIT_SOCK_DEAD.load() & 63)) & 1;
    let done = (sk_flags >> (BIT_SOCK_DONE.load() & 63)) & 1;
    dead == 1 && done == 0
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and BPF programs do not migrate or nest on one CPU for these
        // tracepoints, so nobody else writes it concurrently.
        unsafe { *slot += 1 };
    }
}

/// Writes the current task into `owner` as the socket's owner, at time `now_ns`. `owner` must
/// be zeroed (a comm the kernel cannot give stays empty).
///
/// The comm and cgroup of a thread are kept in this CPU's slot of `OWNERS` for up to
/// `OWNER_CACHE_NS`: a thread that opens and closes connections in a loop makes an owner-made
/// transition two or three times per connection, and asking the kernel for its comm and cgroup
/// each time was ~30-40 of the ~340 ns an average set_state hit cost at four churn generators
/// (bpf_stats, docs/kernel.md). A thread renamed (prctl), moved to another cgroup, or that
/// exec()s another program, shows its old name or cgroup for at most that long; so would a
/// new thread given the same thread id within it.
#[inline(always)]
fn fill_current_owner(owner: &mut Owner, now_ns: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = OWNERS.get_ptr_mut(pid_tgid as u32 & (OWNER_SLOTS - 1));
    if let Some(slot) = slot {
        // SAFETY: a per-CPU array slot, valid for this program's run; nothing else runs on
        // this CPU meanwhile (BPF programs of these types do not nest: the kernel skips them).
        let cached = unsafe { &*slot };
        if cached.pid_tgid == pid_tgid && now_ns.wrapping_sub(cached.at_ns) < OWNER_CACHE_NS {
            copy_words(owner, &cached.owner);
            return;
        }
    }
    owner.tgid = (pid_tgid >> 32) as u32;
    owner.how = how::OWNER;
    // SAFETY: helper without preconditions; available to tracepoint programs.
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // Straight into the owner: aya's wrapper returns an array, whose zeroing and copy cost a
    // byte loop each (see `copy_words`).
    // SAFETY: the helper writes at most COMM_LEN bytes to a buffer of exactly that size.
    unsafe { generated::bpf_get_current_comm(owner.comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    if let Some(slot) = slot {
        // SAFETY: as above.
        let cached = unsafe { &mut *slot };
        cached.pid_tgid = pid_tgid;
        cached.at_ns = now_ns;
        copy_words(&mut cached.owner, owner);
    }
}

/// Copies a plain value a word at a time.
///
/// Struct copies and zero-initialisation would otherwise compile to calls of aya-ebpf's
/// `memmove`/`memset`, which go one byte per iteration, about six instructions a byte: zeroing,
/// filling and copying an `Event` and its owner cost well over a thousand instructions per
/// transition, most of the program's time. Volatile accesses keep LLVM from turning this loop
/// back into such a call; the loop has a constant count and is unrolled.
#[inline(always)]
fn copy_words<T: Copy>(dst: &mut T, src: &T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>().is_multiple_of(8)) };
    let (d, s) = (
        (dst as *mut T).cast::<u64>(),
        (src as *const T).cast::<u64>(),
    );
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: both point at a whole `T`, which is 8-byte aligned and a whole number of words
        // long (checked above), and `i` stays below that number; `T` is plain data, valid for
        // any bytes.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Zeroes a plain value a word at a time (see `copy_words`) and hands it out initialised.
#[inline(always)]
fn zeroed_in<T: Copy>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>().is_multiple_of(8)) };
    let d = slot.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: as in `copy_words`: in bounds and aligned.
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was just written, and all-zero bytes are a valid `T` (plain integers
    // and byte arrays).
    unsafe { slot.assume_init_mut() }
}

#[inline(always)]
fn passes_filters(ev: &Event) -> bool {
    let filters = FILTERS.load();
    if filters & globals::FILTER_PID != 0 {
        // SAFETY: the value is a u8 we only test for presence.
        if unsafe { PID_FILTER.get(ev.owner.tgid) }.is_none() {
            return false;
        }
    }
    if filters & globals::FILTER_PORT != 0 {
        // SAFETY: as above.
        let hit = unsafe {
            PORT_FILTER.get(ev.ends.sport).is_some() || PORT_FILTER.get(ev.ends.dport).is_some()
        };
        if !hit {
            return false;
        }
    }
    if filters & globals::FILTER_NETNS != 0 && ev.netns != NETNS_FILTER.load() {
        return false;
    }
    if filters & globals::FILTER_CGROUP != 0 {
        // An unknown owner (cgroup 0: a socket from before the start) is never in the map, so
        // it does not pass: which cgroup it belongs to is not known.
        // SAFETY: as above.
        if unsafe { CGROUP_FILTER.get(ev.owner.cgroup_id) }.is_none() {
            return false;
        }
    }
    true
}

#[inline(always)]
fn emit(ev: &Event) {
    if !passes_filters(ev) {
        count(stat::FILTERED);
        return;
    }
    if ev.owner.how == how::UNKNOWN {
        count(stat::UNATTRIBUTED);
    }
    // Never a wake-up: the agent drains the ring on a timer (`POLL` in
    // agent/src/kernel/tracer.rs). A wake-up is an irq_work, a self-interrupt raised inside
    // this program; on the way out of that interrupt the CPU runs pending softirqs, whose TCP
    // transitions then find a BPF program already running here and are skipped by the kernel
    // (recursion_misses). Forcing one every 64 events per CPU skipped 1,815 events in one 8 s
    // run at four generators; without them, 87 on a comparable run (docs/kernel.md has how
    // they were taken); timer ticks still cause some.
    //
    // The ring is this CPU's (see `MAX_RINGS`): no other CPU takes its lock or writes its
    // positions, unless there are more CPUs than rings. Each arm names its map, which the
    // verifier needs to know at the call.
    let flags = u64::from(BPF_RB_NO_WAKEUP);
    // SAFETY: helper without preconditions.
    let cpu = unsafe { generated::bpf_get_smp_processor_id() };
    let sent = match cpu & RING_MASK.load() & (MAX_RINGS as u32 - 1) {
        0 => EVENTS0.output::<Event>(ev, flags),
        1 => EVENTS1.output::<Event>(ev, flags),
        2 => EVENTS2.output::<Event>(ev, flags),
        3 => EVENTS3.output::<Event>(ev, flags),
        4 => EVENTS4.output::<Event>(ev, flags),
        5 => EVENTS5.output::<Event>(ev, flags),
        6 => EVENTS6.output::<Event>(ev, flags),
        _ => EVENTS7.output::<Event>(ev, flags),
    };
    match sent {
        Ok(()) => count(stat::EVENTS),
        Err(_) => count(stat::LOST),
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_set_state(&ctx) {
        Ok(()) => 0,
        Err(_) => 0,
    }
}

/// Reads one field of the tracepoint's record.
///
/// A direct load from the context, not a bpf_probe_read helper call per field: for classic
/// tracepoint programs the verifier allows loads from the record at any offset from 8 (past the
/// common header's pointer-sized start) up to PERF_MAX_TRACE_SIZE that are aligned to their size
/// (kernel/trace/bpf_trace.c, `tp_prog_is_valid_access`), and every field twtrace reads is
/// naturally aligned. Measured with one churn generator and bpf_stats: 894 -> 607 ns per
/// inet_sock_set_state hit, 497 -> 415 per tcp_destroy_sock hit.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> Result<T, i32> {
    // SAFETY: `ctx` points at the tracepoint's record, which the kernel keeps valid for the
    // program's run and 8-byte aligned (perf_trace_buf_alloc); `offset` was checked against the
    // live format file by the agent before loading, so `T` lies inside the record at an offset
    // aligned to it (the verifier refuses the program at load time otherwise). T is a plain
    // integer or byte array, valid for any bytes.
    Ok(unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) })
}

/// Copies a 16-byte address field of the record into `dst`, as two 8-byte loads and stores (a
/// byte-array copy would load through a moved context pointer, which the verifier refuses, and
/// store a byte at a time).
#[inline(always)]
fn addr16(ctx: &TracePointContext, offset: usize, dst: &mut [u8; 16]) -> Result<(), i32> {
    let (hi, lo) = (field::<u64>(ctx, offset)?, field::<u64>(ctx, offset + 8)?);
    let d = dst.as_mut_ptr().cast::<u64>();
    // SAFETY: the address arrays of `Event` lie at 8-byte aligned offsets of an 8-byte aligned
    // struct (asserted in lib.rs), so both words are in bounds and aligned.
    unsafe {
        d.write(hi);
        d.add(1).write(lo);
    }
    Ok(())
}

/// Copies a 4-byte IPv4 address field into the first word of `dst`.
#[inline(always)]
fn addr4(ctx: &TracePointContext, offset: usize, dst: &mut [u8; 16]) -> Result<(), i32> {
    let v = field::<u32>(ctx, offset)?;
    // SAFETY: as in `addr16`.
    unsafe { dst.as_mut_ptr().cast::<u32>().write(v) };
    Ok(())
}

fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    use offsets::set_state as o;
    let protocol: u16 = field(ctx, o::PROTOCOL)?;
    // The tracepoint also fires for SCTP and MPTCP sockets.
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let skaddr: u64 = field(ctx, o::SKADDR)?;
    let oldstate = field::<i32>(ctx, o::OLDSTATE)? as u32;
    let newstate = field::<i32>(ctx, o::NEWSTATE)? as u32;
    // tcp_set_state() fires the tracepoint even when the state does not change (close() after
    // shutdown(SHUT_WR) gives FIN_WAIT1 -> FIN_WAIT1): not a transition, nothing to report.
    if oldstate == newstate {
        return Ok(());
    }
    let family: u16 = field(ctx, o::FAMILY)?;
    let mut slot = MaybeUninit::<Event>::uninit();
    let ev = zeroed_in(&mut slot);
    // SAFETY: helper without preconditions; available to tracepoint programs.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.skaddr = skaddr;
    ev.oldstate = oldstate;
    ev.newstate = newstate;
    ev.current_tgid = ctx.tgid();
    ev.ends.family = family;
    ev.ends.sport = field(ctx, o::SPORT)?;
    ev.ends.dport = field(ctx, o::DPORT)?;
    // For AF_INET6 sockets the IPv4 fields hold junk, and vice versa.
    if family == AF_INET {
        addr4(ctx, o::SADDR, &mut ev.ends.saddr)?;
        addr4(ctx, o::DADDR, &mut ev.ends.daddr)?;
    } else if family == AF_INET6 {
        addr16(ctx, o::SADDR_V6, &mut ev.ends.saddr)?;
        addr16(ctx, o::DADDR_V6, &mut ev.ends.daddr)?;
    }

    // The socket's entry, looked up once for the whole transition: each hash lookup is a cache
    // miss or two at peak, and this program runs on every transition of every socket.
    // SAFETY (for every dereference of `entry` below): a hash map value pointer, valid for this
    // program's run; one socket's transitions are serialised by the socket lock, so no other
    // program writes this value meanwhile.
    let entry = SOCKETS.get_ptr_mut(skaddr);

    // A close of this socket is still held back (it changed state again without being
    // destroyed, e.g. connect() again after a failure): send it first so order is kept.
    if let Some(entry) = entry {
        // SAFETY: see `entry` above.
        let entry = unsafe { &mut *entry };
        if entry.has_pending != 0 {
            entry.has_pending = 0;
            emit_held(entry, skaddr, flags::FLUSHED, 0);
        }
    }

    use tcp_state::*;
    // The namespace is read from the socket once per life (two probe reads) and kept in its
    // entry. A life starts at CLOSE -> * or as a listener's child; an entry made by `mark` has
    // none yet.
    let new_life = oldstate == CLOSE || (oldstate == LISTEN && newstate == SYN_RECV);
    ev.netns = match entry {
        // SAFETY: see `entry` above.
        Some(entry) if !new_life && unsafe { (*entry).netns } != 0 => unsafe { (*entry).netns },
        _ => netns_of(skaddr),
    };
    if let Some(entry) = entry {
        // SAFETY: see `entry` above.
        unsafe {
            (*entry).netns = ev.netns;
            (*entry).state = newstate;
            // A client's life starts without its ephemeral port (`CLOSE -> SYN_SENT` has
            // sport 0); the entry takes the ends once the port is known, for a close rebuilt
            // at `tcp_destroy_sock`.
            if (*entry).ends.sport == 0 {
                copy_words(&mut (*entry).ends, &ev.ends);
            }
        }
    }

    // Transitions only the owner's own system calls make (connect, listen, close/shutdown, and a
    // listener's close or exit), so the current task is the owner.
    let owner_made = matches!(
        (oldstate, newstate),
        (CLOSE, SYN_SENT)
            | (CLOSE, LISTEN)
            | (LISTEN, CLOSE)
            | (ESTABLISHED | SYN_RECV, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    );

    if owner_made {
        fill_current_owner(&mut ev.owner, ev.ts_ns);
        ev.flags |= flags::OWNER_MADE;
        match entry {
            // SAFETY: see `entry` above.
            Some(entry) => unsafe {
                if oldstate == CLOSE {
                    // Leaving CLOSE is a new life for this address: forget earlier flags. Written
                    // in place: an insert would take the bucket lock and search again.
                    restart(&mut *entry, ev);
                } else {
                    copy_words(&mut (*entry).owner, &ev.owner);
                }
            },
            None => {
                track(ctx, skaddr, ev, false);
            }
        }
        if newstate == LISTEN {
            let mut slot = MaybeUninit::<ListenerEntry>::uninit();
            let listener = zeroed_in(&mut slot);
            copy_words(&mut listener.owner, &ev.owner);
            listener.skaddr = skaddr;
            #[expect(clippy::needless_borrows_for_generic_args, reason = "see `track`")]
            let _ = LISTENERS.insert(listener_key(ev), &*listener, 0);
        }
    } else if oldstate == LISTEN && newstate == SYN_RECV {
        // A child socket cloned from the listener (inet_csk_clone_lock), in softirq.
        if let Some(listener) = LISTENERS.get_ptr(listener_key(ev)) {
            // SAFETY: a hash map value pointer, valid for this program's run; read at once.
            copy_words(&mut ev.owner, unsafe { &(*listener).owner });
            ev.owner.how = how::LISTENER;
        } else if passes_filters(ev) {
            // Counted only for sockets the user asked about, so the number means something.
            count(stat::LISTENER_MISS);
        }
        match entry {
            // SAFETY: see `entry` above.
            Some(entry) => restart(unsafe { &mut *entry }, ev),
            None => {
                track(ctx, skaddr, ev, false);
            }
        }
    } else {
        // Read here, at the transition itself: the timewait socket's substate changes later
        // without any tracepoint (a FIN reaching it makes it TIME_WAIT).
        if oldstate == FIN_WAIT2 && newstate == CLOSE && orphan_without_peer_fin(skaddr) {
            ev.flags |= flags::ORPHAN_FIN_WAIT2;
        }
        match entry {
            Some(entry) => {
                // SAFETY: see `entry` above.
                let entry = unsafe { &mut *entry };
                copy_words(&mut ev.owner, &entry.owner);
                ev.flags |= entry.flags;
                if holds_close(oldstate, newstate, entry.flags) {
                    hold(entry, ev);
                    return Ok(());
                }
            }
            None => {
                if holds_close(oldstate, newstate, 0) && track(ctx, skaddr, ev, true) {
                    return Ok(());
                }
            }
        }
    }
    // Forget a listener when it closes, unless another socket took its port since. Listeners
    // learnt from /proc at start-up have no skaddr; their owner closing them is the best match.
    if oldstate == LISTEN
        && newstate == CLOSE
        // SAFETY: a hash map value pointer, read and compared at once, in this program's run.
        && LISTENERS.get_ptr(listener_key(ev)).is_some_and(|l| unsafe {
            (*l).skaddr == skaddr || ((*l).skaddr == 0 && (*l).owner.tgid == ev.owner.tgid)
        })
    {
        let _ = LISTENERS.remove(listener_key(ev));
    }
    emit(ev);
    Ok(())
}

#[inline(always)]
fn listener_key(ev: &Event) -> ListenerKey {
    ListenerKey {
        netns: ev.netns,
        port: ev.ends.sport,
        _pad: 0,
    }
}

/// Starts tracking a socket twtrace has no entry for (owner, namespace, state and ends from
/// `ev`), with `ev` held back as a close if `pending`. Returns whether the entry was made.
#[inline(always)]
fn track(ctx: &TracePointContext, skaddr: u64, ev: &Event, pending: bool) -> bool {
    let mut slot = MaybeUninit::<SockEntry>::uninit();
    let entry = zeroed_in(&mut slot);
    copy_words(&mut entry.owner, &ev.owner);
    entry.netns = ev.netns;
    entry.state = ev.newstate;
    copy_words(&mut entry.ends, &ev.ends);
    if pending {
        hold(entry, ev);
    }
    // A reference, not the value: passing the value would copy it onto the stack first, and
    // such copies are byte loops here (see `copy_words`).
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "a copy of the value is a byte loop"
    )]
    let inserted = SOCKETS.insert(skaddr, &*entry, 0);
    if inserted.is_err() {
        count(stat::TABLE_FULL);
        warn!(ctx, "twtrace: socket table full");
        return false;
    }
    true
}

/// Holds `ev`, a close, in the socket's entry until the socket is destroyed. The entry already
/// has the event's owner and namespace; its ends become the close's.
#[inline(always)]
fn hold(entry: &mut SockEntry, ev: &Event) {
    entry.held.ts_ns = ev.ts_ns;
    entry.held.current_tgid = ev.current_tgid;
    entry.held.oldstate = ev.oldstate;
    entry.held.flags = ev.flags;
    copy_words(&mut entry.ends, &ev.ends);
    entry.has_pending = 1;
}

/// Sends the close held in `entry` (see `hold`), with `extra` flags and the socket's cookie.
#[inline(always)]
fn emit_held(entry: &SockEntry, skaddr: u64, extra: u32, cookie: u64) {
    let mut slot = MaybeUninit::<Event>::uninit();
    let ev = zeroed_in(&mut slot);
    ev.ts_ns = entry.held.ts_ns;
    ev.skaddr = skaddr;
    ev.cookie = cookie;
    copy_words(&mut ev.owner, &entry.owner);
    ev.oldstate = entry.held.oldstate;
    ev.newstate = tcp_state::CLOSE;
    ev.flags = entry.held.flags | extra;
    ev.current_tgid = entry.held.current_tgid;
    ev.netns = entry.netns;
    copy_words(&mut ev.ends, &entry.ends);
    emit(ev);
}

/// Starts a new life in an existing entry: the owner and ends of `ev`, no flags, nothing held.
/// Only the fields that matter are written, not the whole held event.
#[inline(always)]
fn restart(entry: &mut SockEntry, ev: &Event) {
    copy_words(&mut entry.owner, &ev.owner);
    copy_words(&mut entry.ends, &ev.ends);
    entry.flags = 0;
    entry.has_pending = 0;
}

/// Whether a `* -> CLOSE` waits for `tcp:tcp_destroy_sock` before being sent.
///
/// Held: closes not already explained by a received reset. For an orphaned socket the destroy
/// follows in the same call chain (tcp_done() -> inet_csk_destroy_sock()); it brings the cookie,
/// which the timewait socket keeps (so TIME_WAIT sockets can be joined with sock_diag), and lets
/// a reset sent right after the state change be seen first: tcp_disconnect() (SO_LINGER 0) and
/// tcp_close() with unread data set CLOSE before sending their reset. A socket its process still
/// holds is destroyed when the process closes it, so its close is reported then. A listener's
/// close is sent at once.
#[inline(always)]
fn holds_close(oldstate: u32, newstate: u32, entry_flags: u32) -> bool {
    newstate == tcp_state::CLOSE
        && oldstate != tcp_state::LISTEN
        && entry_flags & flags::RESET_RECEIVED == 0
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    // SAFETY: reads at offsets checked against the format file by the agent.
    let Ok(skaddr) = field::<u64>(&ctx, offsets::tcp_sock::SKADDR) else {
        return 0;
    };
    if let Some(entry) = SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: the pointer comes from a successful lookup; this CPU owns the socket's lock.
        let entry = unsafe { &mut *entry };
        if entry.has_pending != 0 {
            entry.has_pending = 0;
            let cookie = field::<u64>(&ctx, offsets::tcp_sock::SOCK_COOKIE).unwrap_or(0);
            emit_held(
                entry,
                skaddr,
                flags::DESTROYED | (entry.flags & flags::RESET_SENT),
                cookie,
            );
        } else if entry.state != 0 && entry.state != tcp_state::CLOSE {
            // Every socket goes to CLOSE before it is destroyed (inet_csk_destroy_sock() warns
            // otherwise), so an entry still in another state means the kernel skipped this
            // program for that transition (a softirq ran it while another BPF program was
            // running on the CPU: counted in recursion_misses, reported as lost). The close is
            // rebuilt from what the entry saw last, now, with the socket still readable:
            // without it a client's TIME_WAIT entry is missing for good unless its address
            // comes back as a new socket. The skip stays counted as lost.
            let cookie = field::<u64>(&ctx, offsets::tcp_sock::SOCK_COOKIE).unwrap_or(0);
            let mut rebuilt = entry.flags;
            if entry.state == tcp_state::FIN_WAIT2 && orphan_without_peer_fin(skaddr) {
                rebuilt |= flags::ORPHAN_FIN_WAIT2;
            }
            // SAFETY: helper without preconditions; available to tracepoint programs.
            entry.held.ts_ns = unsafe { bpf_ktime_get_ns() };
            entry.held.current_tgid = ctx.tgid();
            entry.held.oldstate = entry.state;
            entry.held.flags = rebuilt;
            emit_held(entry, skaddr, flags::DESTROYED, cookie);
        }
    }
    let _ = SOCKETS.remove(skaddr);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: reads at offsets checked against the format file by the agent.
    if let Ok(skaddr) = field::<u64>(&ctx, offsets::tcp_sock::SKADDR) {
        mark(skaddr, flags::RESET_RECEIVED, true);
    }
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: reads at offsets checked against the format file by the agent.
    if let Ok(skaddr) = field::<u64>(&ctx, offsets::send_reset::SKADDR) {
        // NULL for resets answering a packet that matched no socket.
        if skaddr != 0 {
            mark(skaddr, flags::RESET_SENT, false);
        }
    }
    0
}

/// Sets a flag on a socket's entry; `create` makes an owner-less entry when there is none, so a
/// reset received by a socket twtrace has not seen before still prevents a false TIME_WAIT.
#[inline(always)]
fn mark(skaddr: u64, bit: u32, create: bool) {
    match SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: the pointer comes from a successful lookup.
        Some(entry) => unsafe { (*entry).flags |= bit },
        None if create => {
            let mut slot = MaybeUninit::<SockEntry>::uninit();
            let entry = zeroed_in(&mut slot);
            entry.flags = bit;
            #[expect(clippy::needless_borrows_for_generic_args, reason = "see `track`")]
            let inserted = SOCKETS.insert(skaddr, &*entry, 0);
            if inserted.is_err() {
                count(stat::TABLE_FULL);
            }
        }
        None => {}
    }
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accepted(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accepted(&ctx);
    0
}

/// accept() returned a socket to the current task: that process holds it, whichever process
/// owns the listener (a pre-fork server's workers, SO_REUSEPORT groups). The returned fd is
/// followed to its socket (current->files->fdt->fd[ret]->private_data->sk, offsets from BTF),
/// the socket's entry takes the current task as owner, and an `ACCEPTED` event tells the agent.
/// Runs in the accepting task's context, without the socket's lock: a softirq transition of
/// the same socket on another CPU may read the owner while it is written here, and then names
/// the listener's owner once more; the agent keeps the accepted owner (see `Model::apply`).
#[inline(always)]
fn accepted(ctx: &TracePointContext) -> Option<()> {
    if BTF_OK.load() == 0 {
        return None;
    }
    let ret: i64 = field(ctx, offsets::sys_exit::RET).ok()?;
    let fd = u64::try_from(ret).ok()?;
    let sk = sock_of_fd(fd)?;
    let Some(entry) = SOCKETS.get_ptr_mut(sk) else {
        count(stat::ACCEPT_MISS);
        return None;
    };
    // SAFETY: a hash map value pointer, valid for this program's run (see the doc comment for
    // the softirq that may write it meanwhile).
    let entry = unsafe { &mut *entry };
    // Owned already (its process made a transition itself), or no transition seen yet.
    if entry.owner.how == how::OWNER || entry.owner.how == how::ACCEPTED || entry.state == 0 {
        return None;
    }
    let mut slot = MaybeUninit::<Event>::uninit();
    let ev = zeroed_in(&mut slot);
    // SAFETY: helper without preconditions; available to tracepoint programs.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    fill_current_owner(&mut ev.owner, ev.ts_ns);
    ev.owner.how = how::ACCEPTED;
    copy_words(&mut entry.owner, &ev.owner);
    ev.skaddr = sk;
    ev.oldstate = entry.state;
    ev.newstate = entry.state;
    ev.flags = flags::ACCEPTED | flags::OWNER_MADE | entry.flags;
    ev.current_tgid = ev.owner.tgid;
    ev.netns = entry.netns;
    copy_words(&mut ev.ends, &entry.ends);
    emit(ev);
    Some(())
}

/// The `struct sock` behind file descriptor `fd` of the current task:
/// current->files->fdt->fd[fd]->private_data->sk (offsets from BTF; bounded by fdt->max_fds).
/// Only for an fd that is a socket: the kernel said so (accept() returned it, connect() or
/// bind() failed with a socket's errno on it).
#[inline(always)]
fn sock_of_fd(fd: u64) -> Option<u64> {
    // SAFETY: helper without preconditions; available to tracepoint programs.
    let task = unsafe { generated::bpf_get_current_task() };
    let files: u64 = kread(task, OFF_TASK_FILES.load())?;
    let fdt: u64 = kread(files, OFF_FILES_FDT.load())?;
    let max_fds: u32 = kread(fdt, OFF_FDTABLE_MAX_FDS.load())?;
    if fd >= u64::from(max_fds) {
        return None;
    }
    let fds: u64 = kread(fdt, OFF_FDTABLE_FD.load())?;
    let file: u64 = kread(fds + fd * 8, 0)?;
    let socket: u64 = kread(file, OFF_FILE_PRIVATE_DATA.load())?;
    kread(socket, OFF_SOCKET_SK.load())
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    remember(&ctx, call::CONNECT);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    failed(&ctx, call::CONNECT);
    0
}

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    remember(&ctx, call::BIND);
    0
}

#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    failed(&ctx, call::BIND);
    0
}

/// The `CALLS` slot of the thread `pid_tgid`.
#[inline(always)]
fn call_slot(pid_tgid: u64) -> Option<*mut CallArgs> {
    CALLS.get_ptr_mut((pid_tgid as u32) & (MAX_CALLS - 1))
}

/// At a connect()'s or bind()'s entry: copies the address the caller passed (family, port,
/// IPv4 or IPv6 address) from user memory into the thread's `CALLS` slot, for the exit to
/// report if the call fails. Every connect() and bind() on the host comes here, so it does as
/// little as it can: one read of user memory, and stores into the slot only for AF_INET and
/// AF_INET6 addresses.
#[inline(always)]
fn remember(ctx: &TracePointContext, which: u16) -> Option<()> {
    use offsets::sys_enter_sockaddr as o;
    let uaddr: u64 = field(ctx, o::ADDR).ok()?;
    let addrlen: u64 = field(ctx, o::ADDRLEN).ok()?;
    // sockaddr_in is 16 bytes; sockaddr_in6's address ends at byte 24. Anything shorter is
    // refused by the kernel (EINVAL) for these families.
    if addrlen < 16 {
        return None;
    }
    // The first 24 bytes as words: family (2), port (2, network order), then the IPv4 address
    // (4) or IPv6 flow info (4) and the IPv6 address (16). Read straight into words, so no
    // struct copy is made, and zeroed by `zeroed_in` (`[0; 3]` is a call of the byte-loop
    // memset, see `copy_words`).
    let mut buf = MaybeUninit::<[u64; 3]>::uninit();
    let words = zeroed_in(&mut buf);
    let len: u32 = if addrlen >= 24 { 24 } else { 16 };
    // SAFETY: the helper reads `len` (16 or 24) bytes of user memory into `words`, which has
    // 24; an address it may not read makes it fail (and zero `words`), never fault.
    let rc = unsafe {
        generated::bpf_probe_read_user(words.as_mut_ptr().cast(), len, uaddr as *const _)
    };
    if rc != 0 {
        return None;
    }
    let head = words[0].to_ne_bytes();
    let family = u16::from_ne_bytes([head[0], head[1]]);
    if family != AF_INET && !(family == AF_INET6 && len == 24) {
        return None;
    }
    let fd = field::<u64>(ctx, o::FD).ok()? as u32;
    let id = bpf_get_current_pid_tgid();
    let slot = call_slot(id)?;
    // SAFETY: an array map value, valid for this program's run and 8-byte aligned, as is its
    // `addr` (lib.rs); the slot belongs to this thread now (another thread's call in it is
    // overwritten: see `MAX_CALLS`). The owner is cleared first and set last, so that an exit
    // of a thread sharing the slot mostly finds another owner and leaves it; nothing orders
    // these plain stores across CPUs, so two threads in their calls at once in one slot can
    // also mix their fields (the rare case `MAX_CALLS` describes).
    unsafe {
        (*slot).pid_tgid = 0;
        (*slot).fd = fd;
        (*slot).call = which;
        (*slot).family = family;
        (*slot).port = u16::from_be_bytes([head[2], head[3]]);
        let dst = (*slot).addr.as_mut_ptr().cast::<u64>();
        if family == AF_INET {
            // The address's 4 bytes first, as they are in memory; the rest zero.
            dst.write(0);
            dst.add(1).write(0);
            dst.cast::<u32>()
                .write(u32::from_ne_bytes([head[4], head[5], head[6], head[7]]));
        } else {
            dst.write(words[1]);
            dst.add(1).write(words[2]);
        }
        (*slot).pid_tgid = id;
    }
    Some(())
}

/// The errno a connect() or bind() returning `ret` is reported for, if any: the port pool
/// and address errors (an EINPROGRESS of a non-blocking connect() is no failure).
#[inline(always)]
fn failure_errno(which: u16, ret: i64) -> Option<u16> {
    let e = u16::try_from(ret.checked_neg()?).ok()?;
    let reported = if which == call::CONNECT {
        e == errno::EADDRNOTAVAIL || e == errno::EAGAIN || e == errno::ENOBUFS
    } else {
        e == errno::EADDRINUSE || e == errno::EADDRNOTAVAIL
    };
    reported.then_some(e)
}

/// At a connect()'s or bind()'s exit: frees the thread's slot, and when the call failed with
/// one of the reported errnos on a TCP socket, sends a `SYSCALL_FAILED` event naming the
/// calling task, the address it asked for and the socket's namespace. A call that succeeded
/// costs a load and a store.
#[inline(always)]
fn failed(ctx: &TracePointContext, which: u16) -> Option<()> {
    let id = bpf_get_current_pid_tgid();
    let slot = call_slot(id)?;
    // SAFETY: an array map value, valid for this program's run (this holds for every access
    // to `slot` here); it is this thread's while it holds this thread's pid_tgid, and only this
    // thread's enter writes that.
    let owner = unsafe { (*slot).pid_tgid };
    if owner != id {
        return None;
    }
    let ret: i64 = field(ctx, offsets::sys_exit::RET).ok()?;
    let Some(errno) = failure_errno(which, ret) else {
        // SAFETY: see `slot` above.
        unsafe { (*slot).pid_tgid = 0 };
        return None;
    };
    // SAFETY: see `slot` above; `addr` is 8-byte aligned (lib.rs).
    let (fd, args_call, family, port, hi, lo) = unsafe {
        let addr = (*slot).addr.as_ptr().cast::<u64>();
        let read = (
            (*slot).fd,
            (*slot).call,
            (*slot).family,
            (*slot).port,
            addr.read(),
            addr.add(1).read(),
        );
        (*slot).pid_tgid = 0;
        read
    };
    // Following the fd needs the BTF offsets (the loader attaches these programs only with
    // them).
    if args_call != which || BTF_OK.load() == 0 {
        return None;
    }
    let sk = sock_of_fd(u64::from(fd))?;
    // A TCP stream socket: a raw socket of protocol 6 fails bind() the same way.
    let protocol: u16 = kread(sk, OFF_SOCK_PROTOCOL.load())?;
    let kind: u16 = kread(sk, OFF_SOCK_TYPE.load())?;
    if protocol != IPPROTO_TCP || kind != SOCK_STREAM {
        return None;
    }
    let mut slot = MaybeUninit::<Event>::uninit();
    let ev = zeroed_in(&mut slot);
    // SAFETY: helper without preconditions; available to tracepoint programs.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.skaddr = sk;
    fill_current_owner(&mut ev.owner, ev.ts_ns);
    ev.oldstate = tcp_state::CLOSE;
    ev.newstate = tcp_state::CLOSE;
    ev.flags = flags::SYSCALL_FAILED | flags::OWNER_MADE;
    ev.current_tgid = ev.owner.tgid;
    ev.netns = netns_of(sk);
    ev.errno = errno;
    ev.call = which;
    ev.ends.family = family;
    let dst = if which == call::CONNECT {
        ev.ends.dport = port;
        ev.ends.daddr.as_mut_ptr().cast::<u64>()
    } else {
        ev.ends.sport = port;
        ev.ends.saddr.as_mut_ptr().cast::<u64>()
    };
    // SAFETY: the address arrays of `Event` lie at 8-byte aligned offsets (lib.rs).
    unsafe {
        dst.write(hi);
        dst.add(1).write(lo);
    }
    emit(ev);
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The license the kernel is told. It must be GPL-compatible for the GPL-only helpers this
/// program calls (bpf_probe_read_kernel and others); "Dual MIT/GPL" is one of the strings the
/// kernel accepts as such (license_is_gpl_compatible), and says what is true: this code is the
/// project's MIT-licensed code, offered under the GPL too, as the kernel requires.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
