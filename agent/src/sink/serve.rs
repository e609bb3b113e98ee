//! `twtrace serve`: the model's snapshots as Prometheus metrics. The sink folds each snapshot into
//! a [`State`] shared with the HTTP server ([`http`]), which encodes it per scrape with
//! `prometheus-client`.
//!
//! Cardinality. Labels are a process name (`comm`) and its container id, never pids or ports
//! (one series per pid would grow without bound on a host that forks a process per job). Per
//! metric, the K largest label values get a series of their own and the rest is summed in
//! `comm="other"`, so a metric has at most K+1 series whatever runs on the host.
//!
//! Counters stay monotonic although the top K changes. Each label's count since the start is
//! split in two: the part already reported inside "other", and the part reported in its own
//! series. A label that enters the top K keeps what "other" already holds of it there and its own
//! series starts from 0; one that leaves the top K has its whole count go back to "other" and its
//! series ends (Prometheus marks it stale). So "other" never falls, a series never falls while it
//! exists (one that comes back later starts at 0 again, which `rate()` reads as a counter reset,
//! rightly), and the sum over all series is the host's total at every scrape. The ranking is by
//! the count since the start, which moves slowly, so series rarely come and go.

pub mod http;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::Sink;
use crate::{
    model::snapshot::{ProcessRow, Snapshot},
    stream::{Stats, Tally},
};

/// The label set of the per-process metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CommLabels {
    pub comm: String,
    /// The container's full id when known, else "".
    pub container: String,
}

impl CommLabels {
    pub fn other() -> Self {
        Self {
            comm: "other".to_owned(),
            container: String::new(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

/// Labels remembered by a [`CounterFold`] at most; a label first seen beyond this goes straight
/// to "other" (so the memory stays bounded on a host that names processes at random).
const MAX_LABELS: usize = 10_000;

/// How long /healthz waits for the kernel program's statistics (written every second) before it
/// calls the agent unhealthy.
const STATS_STALE: Duration = Duration::from_secs(5);

/// One counter's counts per label, folded to at most K series plus "other" (see the module's
/// documentation for the rule).
#[derive(Debug, Default, Clone)]
pub struct CounterFold {
    labels: HashMap<CommLabels, Split>,
    /// Counts of labels beyond [`MAX_LABELS`].
    unlisted: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Split {
    /// Since the start.
    total: u64,
    /// Of `total`, the part reported in "other".
    folded: u64,
    /// Has a series of its own.
    own: bool,
}

impl CounterFold {
    pub fn add(&mut self, label: &CommLabels, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(split) = self.labels.get_mut(label) {
            split.total = split.total.saturating_add(n);
        } else if self.labels.len() < MAX_LABELS {
            self.labels.insert(
                label.clone(),
                Split {
                    total: n,
                    folded: 0,
                    own: false,
                },
            );
        } else {
            self.unlisted = self.unlisted.saturating_add(n);
        }
    }

    /// Picks the K labels with the largest totals (ties by label, for a stable choice) and
    /// moves the rest into "other".
    pub fn refold(&mut self, k: usize) {
        let mut ranked: Vec<(&CommLabels, u64)> =
            self.labels.iter().map(|(l, s)| (l, s.total)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let top: std::collections::HashSet<CommLabels> =
            ranked.iter().take(k).map(|(l, _)| (*l).clone()).collect();
        for (label, split) in &mut self.labels {
            // A label keeps in "other" what "other" has already reported of it: `folded` is
            // its total at the previous fold while it had no series.
            split.own = top.contains(label);
            if !split.own {
                split.folded = split.total;
            }
        }
    }

    /// The series: (label, value) for the labels with their own, and "other".
    pub fn series(&self) -> (Vec<(CommLabels, u64)>, u64) {
        let mut own = Vec::new();
        let mut other = self.unlisted;
        for (label, split) in &self.labels {
            other = other.saturating_add(split.folded);
            if split.own {
                own.push((label.clone(), split.total - split.folded));
            }
        }
        own.sort();
        (own, other)
    }
}

/// How the values a gauge leaves out of its top K make "other".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rest {
    Sum,
    /// For ages: the oldest of the rest.
    Max,
}

/// A gauge's K largest non-zero values by label, and "other" from the rest.
pub fn fold_gauge(
    values: &HashMap<CommLabels, f64>,
    k: usize,
    rest: Rest,
) -> (Vec<(CommLabels, f64)>, f64) {
    let mut ranked: Vec<(&CommLabels, f64)> = values
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(l, v)| (l, *v))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut other = 0.0_f64;
    for (_, v) in ranked.iter().skip(k) {
        other = match rest {
            Rest::Sum => other + v,
            Rest::Max => other.max(*v),
        };
    }
    let own = ranked
        .into_iter()
        .take(k)
        .map(|(l, v)| (l.clone(), v))
        .collect();
    (own, other)
}

/// The per-comm counters, in the order of [`COUNTERS`].
const N_COUNTERS: usize = 5;

/// Name (without `_total`, which the encoder appends) and help of each per-comm counter.
const COUNTERS: [(&str, &str); N_COUNTERS] = [
    (
        "twtrace_timewait_entered",
        "TCP connections that entered TIME_WAIT, by the process that owned them",
    ),
    (
        "twtrace_closes",
        "TCP connections ended (CLOSE, TIME_WAIT or an orphan's FIN_WAIT2)",
    ),
    ("twtrace_resets", "TCP connections ended by a reset"),
    (
        "twtrace_opens",
        "TCP connections opened (connect() or accepted)",
    ),
    (
        "twtrace_connect_failures",
        "Failed connect() calls on TCP sockets",
    ),
];

fn counts(row: &ProcessRow) -> [u64; N_COUNTERS] {
    [
        row.timewait_entered,
        row.closes,
        row.resets,
        row.opens,
        row.connect_failures,
    ]
}

/// Every metric name the exporter serves, as scraped (counters with their `_total`).
pub const METRICS: [&str; 14] = [
    "twtrace_timewait_entered_total",
    "twtrace_closes_total",
    "twtrace_resets_total",
    "twtrace_opens_total",
    "twtrace_connect_failures_total",
    "twtrace_timewait_sockets",
    "twtrace_close_wait_sockets",
    "twtrace_close_wait_oldest_seconds",
    "twtrace_port_pool_used_ratio",
    "twtrace_kernel_timewait_sockets",
    "twtrace_events_lost_total",
    "twtrace_events_skipped_total",
    "twtrace_agent_cpu_seconds_total",
    "twtrace_agent_resident_memory_bytes",
];

/// What a scrape reports: written by the sink, read by the HTTP server.
#[derive(Debug, Default)]
pub struct State {
    counters: [CounterFold; N_COUNTERS],
    timewait_now: (Vec<(CommLabels, f64)>, f64),
    close_wait_now: (Vec<(CommLabels, f64)>, f64),
    close_wait_oldest: (Vec<(CommLabels, f64)>, f64),
    /// (destination, share of its port pool), top K.
    port_pool: Vec<(String, f64)>,
    timewait_kernel: Option<u64>,
    /// Events the ring buffer could not take, and tracepoint hits the kernel skipped, since start.
    lost: u64,
    skipped: u64,
    /// When the kernel program's statistics last came, and the events lost over that interval.
    last_stats: Option<Instant>,
    lost_last_interval: u64,
}

pub type Shared = Arc<Mutex<State>>;

/// A poisoned lock only means a panic elsewhere: the numbers are still the last ones written.
pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// /healthz: None when healthy, else why not (one line).
    pub fn unhealthy(&self, now: Instant) -> Option<String> {
        let Some(at) = self.last_stats else {
            return Some("no statistics from the kernel program yet".to_owned());
        };
        let age = now.saturating_duration_since(at);
        if age > STATS_STALE {
            return Some(format!(
                "no statistics from the kernel program for {:.0} s",
                age.as_secs_f64()
            ));
        }
        if self.lost_last_interval > 0 {
            return Some(format!(
                "{} events lost in the last interval (ring buffer full or skipped by the kernel)",
                self.lost_last_interval
            ));
        }
        None
    }

    /// The metrics, as a registry to encode; `own` is the agent's CPU seconds and resident
    /// bytes, when /proc/self could be read.
    pub fn registry(&self, own: Option<(f64, u64)>) -> Registry {
        let mut reg = Registry::default();
        for ((name, help), fold) in COUNTERS.iter().zip(&self.counters) {
            let family = Family::<CommLabels, Counter>::default();
            let (series, other) = fold.series();
            for (label, v) in series {
                family.get_or_create(&label).inc_by(v);
            }
            // Also merges a real process named "other" with the rest: both only grow.
            family.get_or_create(&CommLabels::other()).inc_by(other);
            reg.register(*name, *help, family);
        }
        let gauges = [
            (
                "twtrace_timewait_sockets",
                "TIME_WAIT sockets alive now, by the process that owned them",
                None,
                &self.timewait_now,
                Rest::Sum,
            ),
            (
                "twtrace_close_wait_sockets",
                "CLOSE_WAIT sockets held now",
                None,
                &self.close_wait_now,
                Rest::Sum,
            ),
            (
                "twtrace_close_wait_oldest",
                "Age of the oldest CLOSE_WAIT socket held (\"other\": the oldest of the rest)",
                Some(Unit::Seconds),
                &self.close_wait_oldest,
                Rest::Max,
            ),
        ];
        for (name, help, unit, (series, other), rest) in gauges {
            let family = Family::<CommLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            for (label, v) in series {
                family.get_or_create(label).set(*v);
            }
            {
                let g = family.get_or_create(&CommLabels::other());
                let merged = match rest {
                    Rest::Sum => g.get() + other,
                    Rest::Max => g.get().max(*other),
                };
                g.set(merged);
            }
            match unit {
                Some(unit) => reg.register_with_unit(name, help, unit, family),
                None => reg.register(name, help, family),
            }
        }
        let pool = Family::<DestinationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (destination, share) in &self.port_pool {
            pool.get_or_create(&DestinationLabels {
                destination: destination.clone(),
            })
            .set(*share);
        }
        reg.register(
            "twtrace_port_pool_used_ratio",
            "Share of the usable local ports toward a destination (raddr:rport) that connect() \
             cannot take now; the top K destinations",
            pool,
        );
        if let Some(tw) = self.timewait_kernel {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(tw).unwrap_or(i64::MAX));
            reg.register(
                "twtrace_kernel_timewait_sockets",
                "Timewait sockets as the kernel counts them (tw in /proc/net/sockstat)",
                g,
            );
        }
        let lost = Counter::<u64>::default();
        lost.inc_by(self.lost);
        reg.register(
            "twtrace_events_lost",
            "Events dropped because the ring buffer to twtrace was full",
            lost,
        );
        let skipped = Counter::<u64>::default();
        skipped.inc_by(self.skipped);
        reg.register(
            "twtrace_events_skipped",
            "Tracepoint hits the kernel skipped while another BPF program ran on the CPU",
            skipped,
        );
        if let Some((cpu, rss)) = own {
            let c = Counter::<f64, std::sync::atomic::AtomicU64>::default();
            c.inc_by(cpu);
            reg.register_with_unit(
                "twtrace_agent_cpu",
                "CPU time twtrace used (user and system)",
                Unit::Seconds,
                c,
            );
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(rss).unwrap_or(i64::MAX));
            reg.register_with_unit(
                "twtrace_agent_resident_memory",
                "twtrace's resident memory",
                Unit::Bytes,
                g,
            );
        }
        reg
    }
}

/// twtrace's own CPU seconds and resident bytes, from /proc/self/stat.
pub fn own_usage() -> Option<(f64, u64)> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second().max(1) as f64;
    let cpu = (stat.utime + stat.stime) as f64 / ticks;
    Some((cpu, stat.rss.saturating_mul(procfs::page_size())))
}

/// Encodes `state` for a scrape: OpenMetrics when asked, else Prometheus text 0.0.4. Returns the
/// body and its content type.
pub fn exposition(
    state: &State,
    own: Option<(f64, u64)>,
    openmetrics: bool,
) -> Result<(String, &'static str), std::fmt::Error> {
    use prometheus_client::encoding::{prometheus_text, text};
    let reg = state.registry(own);
    let mut body = String::with_capacity(8 * 1024);
    if openmetrics {
        text::encode(&mut body, &reg)?;
        Ok((
            body,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
    } else {
        prometheus_text::encode(&mut body, &reg)?;
        Ok((body, prometheus_text::CONTENT_TYPE))
    }
}

/// The process rows' counts at the previous snapshot, by pid. A row's counts only grow while it
/// lasts, but it goes when its process has exited and gone idle, so the exporter adds up the
/// increments itself and keeps them after the row is gone. One pid may have two rows (the model
/// keeps an exited process apart from a new one behind its reused pid), and a row's comm changes
/// when its process calls exec(), so a row is matched to the previous one of its pid whose counts
/// it has all reached, the largest such: a new process's row, which starts from 0, then never
/// takes over the counts of the old one it shares the pid with.
pub type Seen = HashMap<u32, Vec<[u64; N_COUNTERS]>>;

/// The sink: folds snapshots and the tracer's counters into the shared [`State`].
pub struct ServeSink {
    shared: Shared,
    k: usize,
    /// The rows' counts at the previous snapshot, by pid (see [`Seen`]).
    seen: Seen,
    lost_before: Option<u64>,
}

impl ServeSink {
    pub fn new(shared: Shared, k: usize) -> Self {
        Self {
            shared,
            k,
            seen: HashMap::new(),
            lost_before: None,
        }
    }
}

fn labels_of(row: &ProcessRow) -> CommLabels {
    CommLabels {
        comm: row.comm.clone(),
        container: row.container.clone().unwrap_or_default(),
    }
}

/// Folds one snapshot into `state` (the sink's work, apart from the lock).
pub fn fold_snapshot(state: &mut State, seen: &mut Seen, snap: &Snapshot, k: usize) {
    let mut now_seen: Seen = HashMap::with_capacity(snap.processes.len());
    let mut timewait = HashMap::new();
    let mut close_wait = HashMap::new();
    let mut oldest: HashMap<CommLabels, f64> = HashMap::new();
    // The largest rows first, so each takes its own previous counts before a smaller row of
    // the same pid could.
    let mut rows: Vec<&ProcessRow> = snap.processes.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(counts(r).iter().sum::<u64>()));
    for row in rows {
        let label = labels_of(row);
        let now = counts(row);
        let before = seen
            .get_mut(&row.pid)
            .and_then(|prev| {
                let best = prev
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.iter().zip(&now).all(|(b, n)| b <= n))
                    .max_by_key(|(_, p)| p.iter().sum::<u64>())
                    .map(|(i, _)| i)?;
                Some(prev.swap_remove(best))
            })
            .unwrap_or_default();
        for (i, fold) in state.counters.iter_mut().enumerate() {
            fold.add(&label, now[i].saturating_sub(before[i]));
        }
        now_seen.entry(row.pid).or_default().push(now);
        *timewait.entry(label.clone()).or_insert(0.0) += row.timewait_now as f64;
        *close_wait.entry(label.clone()).or_insert(0.0) += row.close_wait_now as f64;
        let o = oldest.entry(label).or_insert(0.0);
        *o = o.max(row.close_wait_oldest_s);
    }
    *seen = now_seen;
    for fold in &mut state.counters {
        fold.refold(k);
    }
    state.timewait_now = fold_gauge(&timewait, k, Rest::Sum);
    state.close_wait_now = fold_gauge(&close_wait, k, Rest::Sum);
    state.close_wait_oldest = fold_gauge(&oldest, k, Rest::Max);
    // The same raddr:rport from several namespaces or local addresses: the fullest pool.
    let mut pools: BTreeMap<String, f64> = BTreeMap::new();
    for d in &snap.destinations {
        if let Some(share) = d.share {
            let e = pools
                .entry(std::net::SocketAddr::new(d.raddr, d.rport).to_string())
                .or_insert(0.0);
            *e = e.max(share);
        }
    }
    let mut pools: Vec<(String, f64)> = pools.into_iter().collect();
    pools.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    pools.truncate(k);
    state.port_pool = pools;
    state.timewait_kernel = snap.totals.timewait_kernel;
}

impl Sink for ServeSink {
    fn wants_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        let mut state = lock(&self.shared);
        fold_snapshot(&mut state, &mut self.seen, snap, self.k);
        Ok(())
    }

    fn stats(&mut self, _s: &Stats, tally: &Tally) -> anyhow::Result<()> {
        let lost = tally.kernel.lost_total();
        let mut state = lock(&self.shared);
        state.lost = tally.kernel.lost;
        state.skipped = tally.kernel.skipped;
        state.lost_last_interval = lost.saturating_sub(self.lost_before.unwrap_or(0));
        state.last_stats = Some(Instant::now());
        self.lost_before = Some(lost);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
