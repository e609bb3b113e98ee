//! The kernel side of twtrace: classic tracepoints only, because this kernel refuses fentry,
//! fexit and tp_btf (see docs/kernel.md).
//!
//! `sock:inet_sock_set_state` fires in whatever context changed the state. For transitions driven
//! by an incoming packet that is softirq, and the current task is whoever happened to run on that
//! CPU (on loopback, the peer). So the owner is remembered per socket (keyed by skaddr) at the
//! transitions the owner makes itself, and every event carries that owner.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use twtrace_ebpf::{
    AF_INET, AF_INET6, Event, IPPROTO_TCP, ListenerEntry, MAX_PID_FILTER, MAX_PORT_FILTER, Owner,
    SockEntry, flags, globals, how, offsets, stat, tcp_state,
};

/// Sized by the agent at load time (`RING_BYTES` in agent/src/kernel/tracer.rs); this is a fallback.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Events sent per CPU, for the wake-up batching in `wakeup_flag`.
#[map]
static WAKEUPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Live sockets: owner, reset flags and a close held back until destruction. Entries are removed
/// at `tcp:tcp_destroy_sock`, so the table holds only sockets alive now; a plain (not LRU) hash so
/// that running out of room is seen and counted (`stat::TABLE_FULL`) instead of silently evicting.
#[map]
static SOCKETS: HashMap<u64, SockEntry> = HashMap::with_max_entries(262_144, 0);

/// Listening sockets by local port: the best owner of an accepted socket until its process closes
/// it. Keyed by port alone; two listeners on one port (SO_REUSEPORT, other namespaces) share it.
#[map]
static LISTENERS: HashMap<u16, ListenerEntry> = HashMap::with_max_entries(16_384, 0);

#[map]
static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PID_FILTER, 0);

#[map]
static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORT_FILTER, 0);

/// `globals::FILTER_*` bits, set by the loader.
#[unsafe(no_mangle)]
static FILTERS: Global<u32> = Global::new(0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and BPF programs do not migrate or nest on one CPU for these
        // tracepoints, so nobody else writes it concurrently.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn current_owner() -> Owner {
    Owner {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        how: how::OWNER,
        // SAFETY: helper without preconditions; available to tracepoint programs.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
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
        let hit =
            unsafe { PORT_FILTER.get(ev.sport).is_some() || PORT_FILTER.get(ev.dport).is_some() };
        if !hit {
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
    match EVENTS.output::<Event>(ev, wakeup_flag()) {
        Ok(()) => count(stat::EVENTS),
        Err(_) => count(stat::LOST),
    }
}

/// Wakes the agent once every `WAKEUP_EVERY` events per CPU instead of whenever it has caught
/// up: at 100,000+ events/s each wake-up (epoll, the runtime, a drain) costs more than the events
/// it delivers. The agent also drains on a short timer, so a quiet socket's event waits at most
/// that long (`POLL` in agent/src/kernel/tracer.rs).
#[inline(always)]
fn wakeup_flag() -> u64 {
    const WAKEUP_EVERY: u64 = 64;
    match WAKEUPS.get_ptr_mut(0) {
        Some(n) => {
            // SAFETY: per-CPU slot, written only by programs on this CPU, which do not nest here.
            let n = unsafe {
                *n += 1;
                *n
            };
            if n % WAKEUP_EVERY == 0 {
                u64::from(BPF_RB_FORCE_WAKEUP)
            } else {
                u64::from(BPF_RB_NO_WAKEUP)
            }
        }
        None => 0,
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

/// A 16-byte address field, as two 8-byte loads (a byte-array copy would load through a moved
/// context pointer, which the verifier refuses).
#[inline(always)]
fn addr16(ctx: &TracePointContext, offset: usize) -> Result<[u8; 16], i32> {
    let (hi, lo) = (field::<u64>(ctx, offset)?, field::<u64>(ctx, offset + 8)?);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_ne_bytes());
    out[8..].copy_from_slice(&lo.to_ne_bytes());
    Ok(out)
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
    let mut ev = Event {
        // SAFETY: helper without preconditions; available to tracepoint programs.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr,
        oldstate,
        newstate,
        current_tgid: ctx.tgid(),
        family,
        sport: field(ctx, o::SPORT)?,
        dport: field(ctx, o::DPORT)?,
        ..Event::default()
    };
    if family == AF_INET {
        // For AF_INET6 sockets the IPv4 fields hold junk, and vice versa.
        let s = field::<u32>(ctx, o::SADDR)?.to_ne_bytes();
        let d = field::<u32>(ctx, o::DADDR)?.to_ne_bytes();
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        ev.saddr = addr16(ctx, o::SADDR_V6)?;
        ev.daddr = addr16(ctx, o::DADDR_V6)?;
    }

    // A close of this socket is still held back (it changed state again without being
    // destroyed, e.g. connect() again after a failure): send it first so order is kept.
    if let Some(entry) = SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: a hash map value pointer, valid for this program's run; one socket's
        // transitions are serialised by the socket lock.
        let entry = unsafe { &mut *entry };
        if entry.has_pending != 0 {
            entry.has_pending = 0;
            entry.pending.flags |= flags::FLUSHED;
            let pending = entry.pending;
            emit(&pending);
        }
    }

    use tcp_state::*;
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
        ev.owner = current_owner();
        ev.flags |= flags::OWNER_MADE;
        let fresh = oldstate == CLOSE;
        match SOCKETS.get_ptr_mut(skaddr) {
            // A socket leaving CLOSE is a new life for this address: forget earlier flags.
            // SAFETY: as above: a map value pointer, valid for this run.
            Some(entry) if !fresh => unsafe { (*entry).owner = ev.owner },
            _ => {
                let entry = SockEntry {
                    owner: ev.owner,
                    ..SockEntry::default()
                };
                if SOCKETS.insert(skaddr, entry, 0).is_err() {
                    count(stat::TABLE_FULL);
                    warn!(ctx, "twtrace: socket table full");
                }
            }
        }
        if newstate == LISTEN {
            let listener = ListenerEntry {
                owner: ev.owner,
                skaddr,
            };
            let _ = LISTENERS.insert(ev.sport, listener, 0);
        }
    } else if oldstate == LISTEN && newstate == SYN_RECV {
        // A child socket cloned from the listener (inet_csk_clone_lock), in softirq.
        // SAFETY: read-only copy of a small value.
        if let Some(listener) = unsafe { LISTENERS.get(ev.sport) } {
            ev.owner = listener.owner;
            ev.owner.how = how::LISTENER;
        } else if passes_filters(&ev) {
            // Counted only for sockets the user asked about, so the number means something.
            count(stat::LISTENER_MISS);
        }
        let entry = SockEntry {
            owner: ev.owner,
            ..SockEntry::default()
        };
        if SOCKETS.insert(skaddr, entry, 0).is_err() {
            count(stat::TABLE_FULL);
        }
    } else {
        match SOCKETS.get_ptr_mut(skaddr) {
            Some(entry) => {
                // SAFETY: a hash map value pointer, valid for this program's run; one socket's
                // transitions are serialised by the socket lock.
                let entry = unsafe { &mut *entry };
                ev.owner = entry.owner;
                ev.flags |= entry.flags;
                if holds_close(oldstate, newstate, entry.flags) {
                    entry.pending = ev;
                    entry.has_pending = 1;
                    return Ok(());
                }
            }
            None => {
                if holds_close(oldstate, newstate, 0) {
                    let entry = SockEntry {
                        owner: ev.owner,
                        has_pending: 1,
                        pending: ev,
                        ..SockEntry::default()
                    };
                    if SOCKETS.insert(skaddr, entry, 0).is_ok() {
                        return Ok(());
                    }
                    count(stat::TABLE_FULL);
                }
            }
        }
    }
    // Forget a listener when it closes, unless another socket took its port since. Listeners
    // learnt from /proc at start-up have no skaddr; their owner closing them is the best match.
    // SAFETY: read-only copy of a small value.
    if oldstate == LISTEN
        && newstate == CLOSE
        // SAFETY: the value is read and compared at once, in this program's run.
        && unsafe { LISTENERS.get(ev.sport) }
            .is_some_and(|l| l.skaddr == skaddr || (l.skaddr == 0 && l.owner.tgid == ev.owner.tgid))
    {
        let _ = LISTENERS.remove(ev.sport);
    }
    emit(&ev);
    Ok(())
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
            let mut ev = entry.pending;
            // SAFETY: as above.
            ev.cookie = field::<u64>(&ctx, offsets::tcp_sock::SOCK_COOKIE).unwrap_or(0);
            ev.flags |= flags::DESTROYED | (entry.flags & flags::RESET_SENT);
            emit(&ev);
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
            let entry = SockEntry {
                flags: bit,
                ..SockEntry::default()
            };
            if SOCKETS.insert(skaddr, entry, 0).is_err() {
                count(stat::TABLE_FULL);
            }
        }
        None => {}
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
