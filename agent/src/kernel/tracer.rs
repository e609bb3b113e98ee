//! The kernel program: checks, loads and attaches it, then hands decoded transitions from the
//! ring buffer to the live source.
//!
//! Start-up is split into checks that explain themselves (privileges, tracefs, tracepoint
//! layouts), loading (where the verifier may refuse), and attaching.

use std::{
    io,
    os::fd::AsFd as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
};
use tokio::io::{Interest, unix::AsyncFd};
use twtrace_ebpf::{
    ListenerEntry, ListenerKey, MAX_CGROUP_FILTER, MAX_RINGS, globals, maps, programs, stat,
};

use super::{btf, netns, privilege, procnet, progstats, sockdiag, tracefs};
use crate::{
    clock,
    container::{self, CgroupDir, CgroupIds},
    event::{self, DecodeError, Transition},
    stream::KernelStats,
};

/// The kernel object built by build.rs. Empty when the build had no bpf-linker.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/twtrace-ebpf"));

/// The ring buffers' size, all of them together: 8 MiB holds ~65,000 events (120 bytes + 8 of
/// header), half a second of the highest churn this class of machine makes, so a busy agent (a
/// socket-table dump, another process on its core) catches up instead of losing events. The
/// agent maps them, so they count in the agent's RSS once written: 16 MiB cost 18 MiB of RSS
/// for no measured gain. Split between the rings in use (see [`ring_bytes`]).
const RING_BYTES: u32 = 8 << 20;

/// The smallest ring in use: with eight rings, each CPU's 2 MiB still holds 80 ms of the
/// peak rate measured here even if one CPU made all of it.
const MIN_RING_BYTES: u32 = 2 << 20;

/// What a ring the kernel program never writes to gets: one page (the smallest ring the
/// kernel makes).
const UNUSED_RING_BYTES: u32 = 4096;

/// How many event rings to use with `cpus` possible CPUs: one per CPU, at most
/// [`MAX_RINGS`], a power of two (the kernel program picks a CPU's ring with a mask).
fn rings_for(cpus: usize) -> usize {
    cpus.clamp(1, MAX_RINGS).next_power_of_two().min(MAX_RINGS)
}

/// Each ring's size when `rings` are in use (a power of two, as the kernel requires).
fn ring_bytes(rings: usize) -> u32 {
    let rings = u32::try_from(rings.max(1)).unwrap_or(1);
    (RING_BYTES / rings).max(MIN_RING_BYTES)
}

/// How often the agent drains the ring buffer. The kernel program never wakes the agent (see
/// `emit` in agent-ebpf/src/main.rs: a wake-up makes the kernel skip events), so this is how
/// long an event may wait. At the highest churn measured here (~450,000 events/s) 20 ms is
/// ~1 MiB of the ring's 8.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// What to trace.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only sockets owned by these process ids (empty: all).
    pub pids: Vec<u32>,
    /// Only connections with one of these ports, local or remote (empty: all).
    pub ports: Vec<u16>,
    /// Only sockets of this network namespace (nsfs inode).
    pub netns: Option<u32>,
    /// Only sockets whose owner is in this cgroup or below it.
    pub cgroup: Option<CgroupDir>,
    /// Attach the syscall tracepoints: accept() (the process that takes an accepted socket)
    /// and connect()/bind() (their failures). See `--no-syscall-hooks`.
    pub syscall_hooks: bool,
    /// Show the verifier's log on load errors and the kernel program's debug messages.
    pub verbose: bool,
}

/// A notice for the user about something that works less well than it could.
pub type Notice = String;

pub struct Tracer {
    // Keeps the programs attached and the maps alive.
    _ebpf: Ebpf,
    /// The event rings in use, one per CPU (up to [`MAX_RINGS`]).
    rings: Vec<RingBuf<MapData>>,
    /// Events read from the rings and not handed over yet: later than the drain's cut-off (see
    /// [`Tracer::next_batch`]).
    later: Vec<Transition>,
    /// The drain's scratch space, kept between drains so it is not reallocated each time: the
    /// events read, and their order (see [`merge`]).
    batch: Vec<Transition>,
    order: Vec<(u64, u32)>,
    poll: tokio::time::Interval,
    stats: PerCpuArray<MapData, u64>,
    /// Things the user should know about this run (mounted tracefs, missing optional hooks,
    /// capabilities whose absence makes attribution less complete).
    pub notices: Vec<Notice>,
    /// Records that failed to decode (a kernel/agent mismatch); counted, never silent.
    pub undecodable: u64,
    /// The programs that are attached, by name.
    attached: Vec<&'static str>,
    /// Whether events carry their socket's network namespace (the kernel's BTF gave the
    /// offsets); without it every socket is in namespace 0.
    pub netns_known: bool,
    /// `--cgroup`'s ids in the kernel, kept current.
    cgroup: Option<CgroupFilter>,
}

impl Tracer {
    /// Runs every start-up check, loads and attaches. Must run inside a tokio runtime.
    pub fn start(opts: &Options) -> anyhow::Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this twtrace was built without its eBPF program (bpf-linker was not found at build \
                 time); build it with `cargo xtask build`"
            );
        }
        // Unknown capabilities (no /proc) check nothing up front: the kernel's answers say it.
        let caps = privilege::Caps::current();
        let missing = caps.map_or_else(Vec::new, privilege::Caps::missing_to_trace);
        if !missing.is_empty() {
            bail!(privilege::explain(&missing));
        }
        let mut notices = Vec::new();
        let root = Path::new(tracefs::DEFAULT_ROOT);
        if tracefs::ensure_mounted(root)? {
            notices.push(format!(
                "mounted tracefs at {} (it was not mounted)",
                root.display()
            ));
        }
        tracefs::check_readable(root, caps)?;
        let degraded = tracefs::check_layouts(root)?;
        for (layout, why) in &degraded {
            notices.push(format!(
                "{why}; {}:{} will not be used",
                layout.category, layout.name
            ));
        }
        // Said once, at start-up: what /proc will not tell this process (see `seed_listeners`
        // and the live source's owners of sockets from before the start).
        notices.extend(caps.map_or_else(Vec::new, privilege::Caps::degradations));
        notices.extend(privilege::raise_priority());

        // Lets the kernel program skip its log writes entirely unless asked for them.
        let log_level: u8 = if opts.verbose { 0xff } else { 0 };
        let mut filters = 0u32;
        if !opts.pids.is_empty() {
            filters |= globals::FILTER_PID;
        }
        if !opts.ports.is_empty() {
            filters |= globals::FILTER_PORT;
        }
        if opts.netns.is_some() {
            filters |= globals::FILTER_NETNS;
        }
        if opts.cgroup.is_some() {
            filters |= globals::FILTER_CGROUP;
        }
        // Namespaces and accept() need kernel struct offsets; without them twtrace works as it
        // did before it knew namespaces, and says so.
        let offsets = match btf::resolve() {
            Ok(o) => Some(o),
            Err(e) if opts.netns.is_some() => {
                return Err(e.context("--netns needs the kernel struct offsets from BTF"));
            }
            Err(e) => {
                notices.push(format!(
                    "{e:#}: network namespaces are not told apart (every socket shows as \
                     namespace 0), accept() is not followed (accepted sockets stay with \
                     the listener's owner until a reconcile asks /proc), failed connect() \
                     and bind() calls are not counted, and orphaned FIN_WAIT2 timewait \
                     sockets are reported as TIME_WAIT until a reconcile sees their state"
                ));
                None
            }
        };
        let o = offsets.unwrap_or_default();
        let btf_ok = u32::from(offsets.is_some());
        let netns_filter = opts.netns.unwrap_or(0);
        let rings = rings_for(aya::util::nr_cpus().unwrap_or(MAX_RINGS));
        let ring_mask = u32::try_from(rings - 1).unwrap_or(0);
        let mut loader = EbpfLoader::new();
        for (i, name) in maps::EVENTS.iter().enumerate() {
            let bytes = if i < rings {
                ring_bytes(rings)
            } else {
                UNUSED_RING_BYTES
            };
            loader.map_max_entries(name, bytes);
        }
        loader
            .override_global(globals::RING_MASK, &ring_mask, true)
            .override_global(globals::FILTERS, &filters, true)
            .override_global(globals::NETNS_FILTER, &netns_filter, true)
            .override_global(globals::BTF_OK, &btf_ok, true)
            .override_global("AYA_LOG_LEVEL", &log_level, false);
        for (name, value) in [
            (globals::OFF_SOCK_NET, &o.sock_net),
            (globals::OFF_NET_INUM, &o.net_inum),
            (globals::OFF_TASK_FILES, &o.task_files),
            (globals::OFF_FILES_FDT, &o.files_fdt),
            (globals::OFF_FDTABLE_FD, &o.fdtable_fd),
            (globals::OFF_FDTABLE_MAX_FDS, &o.fdtable_max_fds),
            (globals::OFF_FILE_PRIVATE_DATA, &o.file_private_data),
            (globals::OFF_SOCKET_SK, &o.socket_sk),
            (globals::OFF_SOCK_PROTOCOL, &o.sock_protocol),
            (globals::OFF_SOCK_TYPE, &o.sock_type),
            (globals::OFF_SOCK_FLAGS, &o.sock_flags),
            (globals::BIT_SOCK_DEAD, &o.sock_dead_bit),
            (globals::BIT_SOCK_DONE, &o.sock_done_bit),
        ] {
            loader.override_global(name, value, true);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object failed")?;

        if opts.verbose {
            start_kernel_logger(&mut ebpf);
        }
        fill_filters(&mut ebpf, opts)?;
        // Filled before attaching, so the first events already find the ids.
        let cgroup = match &opts.cgroup {
            Some(dir) => {
                let mut filter = CgroupFilter::new(&mut ebpf, dir.clone())?;
                notices.extend(filter.refresh(Instant::now()));
                Some(filter)
            }
            None => None,
        };
        // The listeners from before the start, of every namespace; without namespaces,
        // twtrace's own (all of them namespace 0, as the kernel program then says).
        let listening: Vec<(u32, u16, u64)> = if offsets.is_some() {
            let (found, failed) = netns::listeners(opts.netns);
            for (id, why) in &failed {
                log::debug!("listeners of network namespace {id} not read: {why}");
            }
            found
                .iter()
                .map(|d| (d.netns, d.local.port(), d.inode))
                .collect()
        } else {
            let mut own = Vec::new();
            sockdiag::SockDiag::open()?
                .only_listeners()
                .dump_tcp_into(&mut own)
                .context("listing the listening sockets")?;
            own.iter().map(|d| (0, d.local.port(), d.inode)).collect()
        };
        let seeded = seed_listeners(&mut ebpf, &listening)?;
        log::debug!("learnt {seeded} existing listening ports from sock_diag and /proc");

        let hooks = [
            (programs::SET_STATE, "sock", "inet_sock_set_state"),
            (programs::DESTROY, "tcp", "tcp_destroy_sock"),
            (programs::RECEIVE_RESET, "tcp", "tcp_receive_reset"),
            (programs::SEND_RESET, "tcp", "tcp_send_reset"),
            (programs::ACCEPT4, "syscalls", "sys_exit_accept4"),
            (programs::ACCEPT, "syscalls", "sys_exit_accept"),
            // Each enter before its exit, so that no exit runs without its enter having had the
            // chance to remember the call.
            (programs::ENTER_CONNECT, "syscalls", "sys_enter_connect"),
            (programs::EXIT_CONNECT, "syscalls", "sys_exit_connect"),
            (programs::ENTER_BIND, "syscalls", "sys_enter_bind"),
            (programs::EXIT_BIND, "syscalls", "sys_exit_bind"),
        ];
        let mut attached = Vec::new();
        for (prog_name, category, tp) in hooks {
            // An enter and its exit work only together: either missing leaves both out.
            if degraded
                .iter()
                .any(|(l, _)| l.name == tp || partner(tp).is_some_and(|p| l.name == p))
            {
                continue;
            }
            // Following an fd to its socket needs the offsets.
            if category == "syscalls" && (offsets.is_none() || !opts.syscall_hooks) {
                continue;
            }
            let prog: &mut TracePoint = ebpf
                .program_mut(prog_name)
                .with_context(|| format!("program {prog_name} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {prog_name}"))?;
            prog.load()
                .map_err(|e| load_error(prog_name, e, opts.verbose))?;
            prog.attach(category, tp)
                .with_context(|| format!("attaching to tracepoint {category}:{tp}"))?;
            attached.push(prog_name);
        }

        let rings = maps::EVENTS[..rings]
            .iter()
            .map(|name| {
                RingBuf::try_from(take_map(&mut ebpf, name)?).with_context(|| format!("map {name}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut poll = tokio::time::interval(POLL);
        // After a long stall (a suspended process), one drain catches up; no burst of ticks.
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, maps::STATS)?)
            .with_context(|| format!("map {}", maps::STATS))?;
        Ok(Self {
            _ebpf: ebpf,
            rings,
            later: Vec::new(),
            batch: Vec::new(),
            order: Vec::new(),
            poll,
            stats,
            notices,
            undecodable: 0,
            attached,
            netns_known: offsets.is_some(),
            cgroup,
        })
    }

    /// Brings `--cgroup`'s ids in the kernel up to date with the hierarchy: cgroups made below
    /// the chosen one since the last walk are added (their sockets were not shown until now),
    /// removed ones leave after [`container::GONE_KEPT_FOR`]. Does nothing without `--cgroup`,
    /// or before the next walk is due (see [`CGROUP_REFRESH`]). Returns something to tell the
    /// user, each at most once a run (the filter is full; the cgroup itself was removed).
    ///
    /// Meant for the live source's stats tick (every second, or more often with a shorter
    /// `--interval`).
    pub fn refresh_cgroup_filter(&mut self) -> Option<Notice> {
        let filter = self.cgroup.as_mut()?;
        let now = Instant::now();
        if now < filter.next {
            return None;
        }
        filter.refresh(now)
    }

    /// Waits for the next drain time, then hands the events available to `f`, in the order
    /// they happened. Returns how many it handled. Batching per drain keeps the per-event cost
    /// low at 100,000+ events/s. Cancel-safe: nothing is read before the tick.
    ///
    /// With several rings, an event stamped after the drain began waits for the next drain
    /// (see [`merge`]).
    pub async fn next_batch(&mut self, f: impl FnMut(&Transition)) -> io::Result<usize> {
        self.poll.tick().await;
        let cut_off = clock::monotonic_ns();
        Ok(self.hand_over(cut_off, f))
    }

    /// Hands every event already in the rings to `f` without waiting (before a dump of the
    /// kernel's table, at a stats tick, at the stop), up to now: with several rings, events
    /// stamped after this call began wait for the next drain, for the same reason as in
    /// [`Tracer::next_batch`]. At the stop they are left out: they happened after it.
    pub fn drain(&mut self, f: impl FnMut(&Transition)) -> usize {
        let cut_off = clock::monotonic_ns();
        self.hand_over(cut_off, f)
    }

    fn hand_over(&mut self, cut_off: u64, mut f: impl FnMut(&Transition)) -> usize {
        if let [ring] = self.rings.as_mut_slice() {
            // One ring is in the order the kernel program wrote it, which for each socket is
            // the order of its transitions: nothing to merge.
            return decode_ring(ring, &mut self.undecodable, f);
        }
        self.batch.clear();
        self.batch.append(&mut self.later);
        for ring in &mut self.rings {
            let batch = &mut self.batch;
            decode_ring(ring, &mut self.undecodable, |t| batch.push(*t));
        }
        let ready = merge(&self.batch, &mut self.order, cut_off);
        for &(_, i) in &self.order[..ready] {
            f(&self.batch[i as usize]);
        }
        for &(_, i) in &self.order[ready..] {
            self.later.push(self.batch[i as usize]);
        }
        ready
    }

    pub fn stats(&self) -> KernelStats {
        let get = |index: u32| -> u64 {
            self.stats
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        KernelStats {
            events: get(stat::EVENTS),
            lost: get(stat::LOST),
            table_full: get(stat::TABLE_FULL),
            unattributed: get(stat::UNATTRIBUTED),
            listener_miss: get(stat::LISTENER_MISS),
            filtered: get(stat::FILTERED),
            skipped: self.skipped(),
            accept_miss: get(stat::ACCEPT_MISS),
        }
    }

    /// The attached programs' `recursion_misses`, summed. Freshly loaded, they start at 0.
    /// A program whose counter cannot be read adds nothing, and says so once in the debug log.
    fn skipped(&self) -> u64 {
        self.attached
            .iter()
            .filter_map(|name| {
                let fd = self._ebpf.program(name)?.fd().ok()?;
                progstats::recursion_misses(fd.as_fd())
                    .inspect_err(|e| log::debug!("recursion_misses of {name}: {e}"))
                    .ok()
            })
            .sum()
    }
}

/// The other half of a syscall tracepoint pair (`sys_enter_connect` for `sys_exit_connect`, and
/// so on); None for a tracepoint used alone.
fn partner(tp: &str) -> Option<String> {
    let pair = |call: &str| {
        let (enter, exit) = (format!("sys_enter_{call}"), format!("sys_exit_{call}"));
        if tp == enter {
            Some(exit)
        } else if tp == exit {
            Some(enter)
        } else {
            None
        }
    };
    pair("connect").or_else(|| pair("bind"))
}

/// Puts the events read from several rings in the order they happened: fills `order` with
/// (time, index into `batch`), sorted, and returns how many of them (from the front) can be
/// handed over: those stamped at or before `cut_off`. The rest waits for the next drain.
///
/// Why this keeps each socket's transitions in order: every event carries the time its program
/// took at the start (`bpf_ktime_get_ns`, CLOCK_MONOTONIC, the same clock on every CPU), and
/// one socket's transitions are serialised by its lock, inside which the program runs to the
/// end, so an event is in its ring before the next transition of that socket is stamped. The
/// cut-off is read before any ring is, so any event stamped at or before it follows every
/// earlier event of its socket, which were therefore in their rings already when the drain
/// read them (now, or in an earlier drain). A close held back until the socket's destruction
/// comes out late with its old time and is sorted before the socket's next life, which
/// cannot start before that destruction.
///
/// Sorting 16-byte keys instead of the events themselves: sorting the events moved ~150 bytes
/// per element, through a scratch buffer as large, 12% of the agent's time at four generators
/// (perf). Equal times keep their read order (the index is part of the key).
fn merge(batch: &[Transition], order: &mut Vec<(u64, u32)>, cut_off: u64) -> usize {
    order.clear();
    order.extend(
        batch
            .iter()
            .enumerate()
            .map(|(i, t)| (t.mono_ns, u32::try_from(i).unwrap_or(u32::MAX))),
    );
    // A stable sort finds the runs (each ring's events, nearly in order already) and merges
    // them; an unstable one cut them up again (6.5% of the agent's time instead of ~1%).
    order.sort();
    order.partition_point(|&(ns, _)| ns <= cut_off)
}

/// Decodes every event in `ring` and hands it to `f`; counts what does not decode.
fn decode_ring(
    ring: &mut RingBuf<MapData>,
    undecodable: &mut u64,
    mut f: impl FnMut(&Transition),
) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        match event::decode(&item) {
            Ok(t) => {
                f(&t);
                n += 1;
            }
            Err(e) => undecodable_event(undecodable, &e),
        }
    }
    n
}

fn undecodable_event(count: &mut u64, e: &DecodeError) {
    *count += 1;
    // One message is enough to show the mismatch; the count goes into the summary.
    if *count == 1 {
        log::warn!("undecodable event from the kernel: {e}");
    }
}

/// Tells the kernel program who owns the listeners that existed before it was attached, so their
/// accepted connections are attributed from the first packet on. `listening`: (namespace, port,
/// inode) of each listening socket.
fn seed_listeners(ebpf: &mut Ebpf, listening: &[(u32, u16, u64)]) -> anyhow::Result<usize> {
    let mut map: BpfHashMap<_, ListenerKey, ListenerEntry> =
        BpfHashMap::try_from(map_mut(ebpf, maps::LISTENERS)?)
            .with_context(|| format!("map {}", maps::LISTENERS))?;
    let listeners = procnet::existing_listeners(listening);
    for &((netns, port), owner) in &listeners {
        // skaddr 0: /proc hides kernel addresses; the kernel side matches the owner instead.
        let entry = ListenerEntry { owner, skaddr: 0 };
        let key = ListenerKey {
            netns,
            port,
            _pad: 0,
        };
        map.insert(key, entry, 0).with_context(|| {
            format!("recording the listener on port {port} of network namespace {netns}")
        })?;
    }
    Ok(listeners.len())
}

/// The least time between two walks of `--cgroup`'s subtree: a new cgroup's sockets are shown
/// within about a second of its creation (what happens before is not seen: the kernel program
/// compares ids, and the new id is not known until the walk). The live source's stats tick runs
/// every second, or more often with a shorter `--interval`; 900 ms lets a tick come a little
/// early without skipping its walk.
///
/// A walk reads one directory per cgroup: 12-13 ms for 1,001 cgroups here (2 cores, busy with
/// builds), so a big subtree could cost a few percent of a core at once a second. The next walk
/// therefore waits at least [`CGROUP_REFRESH_COST`] times as long as the last one took: at most
/// 1% of a core, which for that tree means a walk every 1.3 s, and for a container's handful of
/// cgroups (microseconds) every second. Never more than [`CGROUP_REFRESH_MAX`], so that one slow
/// walk (the agent descheduled halfway) cannot leave new cgroups out for long.
const CGROUP_REFRESH: Duration = Duration::from_millis(900);
const CGROUP_REFRESH_COST: u32 = 100;
const CGROUP_REFRESH_MAX: Duration = Duration::from_secs(10);

/// `--cgroup` in the kernel: the CGROUP_FILTER map and the ids it holds.
struct CgroupFilter {
    map: BpfHashMap<MapData, u64, u8>,
    cgroup: CgroupDir,
    ids: CgroupIds,
    /// When the next walk is due.
    next: Instant,
    full_said: bool,
    gone_said: bool,
}

impl CgroupFilter {
    fn new(ebpf: &mut Ebpf, cgroup: CgroupDir) -> anyhow::Result<Self> {
        let map = BpfHashMap::try_from(take_map(ebpf, maps::CGROUP_FILTER)?)
            .with_context(|| format!("map {}", maps::CGROUP_FILTER))?;
        Ok(Self {
            map,
            cgroup,
            ids: CgroupIds::new(MAX_CGROUP_FILTER as usize),
            next: Instant::now(),
            full_said: false,
            gone_said: false,
        })
    }

    /// Walks the subtree and applies the difference to the map (see
    /// `Tracer::refresh_cgroup_filter`).
    fn refresh(&mut self, now: Instant) -> Option<Notice> {
        let found = container::subtree_ids(&self.cgroup.dir);
        let took = now.elapsed();
        self.next = now
            + took
                .saturating_mul(CGROUP_REFRESH_COST)
                .clamp(CGROUP_REFRESH, CGROUP_REFRESH_MAX);
        let changes = self.ids.update(&found, now);
        // Removals first: they make the room the additions may need.
        for id in &changes.remove {
            // Absent already is as good as removed.
            let _ = self.map.remove(id);
        }
        for &id in &changes.add {
            if let Err(e) = self.map.insert(id, 1, 0) {
                log::debug!("cgroup {id} not added to the --cgroup filter: {e}");
                self.ids.not_added(id);
            }
        }
        if !changes.add.is_empty() || !changes.remove.is_empty() {
            log::debug!(
                "--cgroup {}: {} cgroups found in {took:?}, {} added, {} removed, {} held, {} \
                 left out",
                self.cgroup.path,
                found.len(),
                changes.add.len(),
                changes.remove.len(),
                self.ids.len(),
                self.ids.left_out()
            );
        }
        if self.ids.left_out() > 0 && !self.full_said {
            self.full_said = true;
            return Some(format!(
                "--cgroup {}: {} cgroups, more than the kernel filter holds \
                 ({MAX_CGROUP_FILTER}); the sockets of the {} left out are not shown \
                 (said once)",
                self.cgroup.path,
                found.len(),
                self.ids.left_out()
            ));
        }
        if found.is_empty() && !self.gone_said {
            self.gone_said = true;
            return Some(format!(
                "the cgroup {} (--cgroup) was removed: the sockets its processes left are \
                 shown for {} s more, and a cgroup made again at that path is followed",
                self.cgroup.path,
                container::GONE_KEPT_FOR.as_secs()
            ));
        }
        None
    }
}

fn fill_filters(ebpf: &mut Ebpf, opts: &Options) -> anyhow::Result<()> {
    if !opts.pids.is_empty() {
        let mut map: BpfHashMap<_, u32, u8> =
            BpfHashMap::try_from(map_mut(ebpf, maps::PID_FILTER)?)
                .with_context(|| format!("map {}", maps::PID_FILTER))?;
        for &pid in &opts.pids {
            map.insert(pid, 1, 0)
                .with_context(|| format!("adding pid {pid} to the filter"))?;
        }
    }
    if !opts.ports.is_empty() {
        let mut map: BpfHashMap<_, u16, u8> =
            BpfHashMap::try_from(map_mut(ebpf, maps::PORT_FILTER)?)
                .with_context(|| format!("map {}", maps::PORT_FILTER))?;
        for &port in &opts.ports {
            map.insert(port, 1, 0)
                .with_context(|| format!("adding port {port} to the filter"))?;
        }
    }
    Ok(())
}

/// A map the object must have, taken out of it.
fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

/// A map the object must have, borrowed.
fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

/// A refused program in one line with the kernel's answer as its cause, and the verifier's last
/// lines after it when asked for (`-v`).
fn load_error(prog: &str, e: ProgramError, verbose: bool) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => refused(prog, io_error, &verifier_log.to_string(), verbose),
        other => anyhow::Error::new(other).context(format!("loading BPF program {prog}")),
    }
}

/// [`load_error`] for a program the kernel refused with `io_error` and the verifier's `log`.
fn refused(prog: &str, io_error: io::Error, log: &str, verbose: bool) -> anyhow::Error {
    if verbose {
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines
            .get(lines.len().saturating_sub(20)..)
            .unwrap_or_default()
            .join("\n");
        // `{e:#}` prints the chain outermost first: the refused program, the kernel's errno (kept
        // as the io::Error itself), then the verifier's last lines.
        anyhow::Error::msg(format!("verifier's last lines:\n{tail}"))
            .context(io_error)
            .context(format!("the kernel refused BPF program {prog}"))
    } else {
        anyhow::Error::new(io_error).context(format!(
            "the kernel refused BPF program {prog} (run with -v for the verifier's log)"
        ))
    }
}

/// Forwards the kernel program's aya-log messages to the `log` crate (shown with `-v`).
fn start_kernel_logger(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring buffer map's file descriptor, open and unchanged
            // for as long as the logger lives inside the AsyncFd.
            match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
                Ok(mut fd) => {
                    tokio::spawn(async move {
                        loop {
                            let Ok(mut guard) = fd.readable_mut().await else {
                                break;
                            };
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                    });
                }
                Err(e) => log::warn!("kernel log messages unavailable: {e}"),
            }
        }
        // The program has no log statements compiled in: nothing to forward.
        Err(e) => log::debug!("kernel log messages unavailable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TcpState;

    #[test]
    fn one_ring_per_cpu_up_to_eight() {
        let rings: Vec<usize> = [0, 1, 2, 3, 4, 5, 8, 64].map(rings_for).to_vec();
        assert_eq!(rings, [1, 1, 2, 4, 4, 8, 8, 8]);
        assert_eq!(ring_bytes(1), 8 << 20);
        assert_eq!(ring_bytes(2), 4 << 20);
        assert_eq!(ring_bytes(8), 2 << 20);
        for rings in [1, 2, 4, 8] {
            assert!(ring_bytes(rings).is_power_of_two());
        }
    }

    /// Two rings' events, each ring in order: merged by time, and what came after the
    /// cut-off stays for the next drain, stable for equal times.
    #[test]
    fn rings_merge_by_time_up_to_the_cut_off() {
        let at = |ns: u64, skaddr: u64, new: TcpState| {
            let mut t = crate::recording::tests::event(0);
            t.mono_ns = ns;
            t.skaddr = skaddr;
            t.new = new;
            t
        };
        // Ring 0, then ring 1, as the drain reads them; a held close (time 5) came out of
        // ring 1 late, after the socket's next life began on the other CPU.
        let batch = vec![
            at(10, 1, TcpState::SynSent),
            at(30, 1, TcpState::Established),
            at(40, 2, TcpState::FinWait1),
            at(5, 1, TcpState::Close),
            at(20, 2, TcpState::SynSent),
            at(30, 3, TcpState::SynSent),
        ];
        let mut order = Vec::new();
        let ready = merge(&batch, &mut order, 30);
        assert_eq!(ready, 5);
        let merged: Vec<(u64, u64)> = order
            .iter()
            .map(|&(_, i)| (batch[i as usize].mono_ns, batch[i as usize].skaddr))
            .collect();
        assert_eq!(
            merged,
            [(5, 1), (10, 1), (20, 2), (30, 1), (30, 3), (40, 2)]
        );
        assert_eq!(merge(&batch, &mut order, u64::MAX), 6);
    }

    #[test]
    fn syscall_pairs_go_together() {
        assert_eq!(
            partner("sys_enter_connect").as_deref(),
            Some("sys_exit_connect")
        );
        assert_eq!(partner("sys_exit_bind").as_deref(), Some("sys_enter_bind"));
        assert_eq!(partner("sys_exit_accept4"), None);
        assert_eq!(partner("inet_sock_set_state"), None);
    }

    fn eacces() -> io::Error {
        io::Error::from_raw_os_error(libc::EACCES)
    }

    #[test]
    fn a_refused_program_is_one_line_with_the_kernel_answer() {
        let e = refused("set_state", eacces(), "0: R1=ctx\ninvalid access", false);
        assert_eq!(
            format!("{e:#}"),
            "the kernel refused BPF program set_state (run with -v for the verifier's log): \
             Permission denied (os error 13)"
        );
        assert_eq!(
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(libc::EACCES)
        );
    }

    #[test]
    fn verbose_shows_the_verifier_last_lines() {
        let log: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
        let e = refused("set_state", eacces(), &log.join("\n"), true);
        let text = format!("{e:#}");
        assert!(
            text.starts_with(
                "the kernel refused BPF program set_state: Permission denied (os error 13): \
                 verifier's last lines:\nline 10\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("line 29"), "{text}");
        assert!(!text.contains("line 9\n"), "{text}");
        assert_eq!(
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(libc::EACCES)
        );
        // A short log is shown whole.
        let e = refused("set_state", eacces(), "only line", true);
        assert!(format!("{e:#}").ends_with("last lines:\nonly line"));
    }
}
