//! What the leaderboard shows at one instant: plain data built by `crate::model`, rendered by the
//! JSON and table printers and the terminal UI. Field names are the JSON schema (`twtrace --json`).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use jiff::Timestamp;
use serde::{Serialize, Serializer, ser::SerializeStruct as _};

use super::leaks::CloseWaitAges;
use super::ports::Destination;
use crate::event::{Call, Errno};
use crate::kernel::sysctl::PortSettings;

/// The version of every JSON document twtrace prints (`"schema": 1`): raised when a field
/// changes meaning or goes away, so scripts can tell which layout they read. New fields do not
/// raise it.
pub const SCHEMA: u32 = 1;

/// Serializes as [`SCHEMA`]: a field of each printed document that costs nothing to carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schema;

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(SCHEMA)
    }
}

/// A rate or a time in seconds as the JSON shows it: 3 decimals. The model keeps full
/// precision (the views and triggers use it); 48.00244058808682 connections per second says
/// nothing more than 48.002 to anyone reading it.
pub fn three_decimals<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(super::leaks::round(*x, 3))
}

/// One refresh of the leaderboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// [`SCHEMA`], first in the JSON.
    pub schema: Schema,
    /// When the snapshot was taken; written in RFC 3339 UTC with whole seconds. The default,
    /// the Unix epoch, marks the placeholder a view shows before the first snapshot.
    #[serde(serialize_with = "whole_seconds")]
    pub time: Timestamp,
    /// Seconds covered by the `*_per_s` rates.
    #[serde(serialize_with = "three_decimals")]
    pub interval_s: f64,
    /// Seconds since twtrace started.
    #[serde(serialize_with = "three_decimals")]
    pub uptime_s: f64,
    /// Events the kernel could not hand over (ring buffer full) since start.
    pub lost_events: u64,
    /// Events since start whose socket had no known owner.
    pub unattributed_events: u64,
    pub totals: Totals,
    /// Sorted by TIME_WAIT entered in the interval, then in total, then pid.
    pub processes: Vec<ProcessRow>,
    /// Outgoing destinations with local ports in use, most used share of the port pool first
    /// (capped): see [`super::ports`].
    pub destinations: Vec<Destination>,
    /// Each network namespace's local-port sysctls, as last read (for `twtrace ports`' header).
    #[serde(skip)]
    pub port_settings: Vec<(u32, PortSettings)>,
}

/// Timewait sockets come in two substates, which is what `ss` shows as their state: TIME_WAIT,
/// and FIN_WAIT2 for an orphan (its process closed it, the peer has not closed yet). The
/// kernel's `tw` counts both, so `timewait_now + fin_wait2_now` is what compares with
/// `timewait_kernel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// TIME_WAIT sockets alive now, as twtrace counts them (owned ones plus "(before start)").
    pub timewait_now: u64,
    /// Orphaned FIN_WAIT2 timewait sockets alive now (owned ones plus "(before start)").
    pub fin_wait2_now: u64,
    /// The kernel's own count (`tw` in /proc/net/sockstat), when readable: summed over every
    /// network namespace read. It counts both substates: compare it with
    /// `timewait_now + fin_wait2_now`.
    pub timewait_kernel: Option<u64>,
    /// Network namespaces whose sockets the kernel's counts cover (None: twtrace's own only).
    pub namespaces: Option<u32>,
    pub close_wait_now: u64,
    pub established_now: u64,
    /// TIME_WAIT entries since start.
    pub timewait_entered: u64,
    /// Orphaned FIN_WAIT2 timewait entries since start (in the substate the event reported;
    /// one that a peer's FIN later turned into TIME_WAIT stays counted here).
    pub fin_wait2_entered: u64,
    #[serde(serialize_with = "three_decimals")]
    pub timewait_per_s: f64,
    /// Of `timewait_entered` and `fin_wait2_entered`, the entries whose event never arrived
    /// (the kernel skipped it, see `lost_events`) but which the model found for a socket last
    /// seen closing: its 4-tuple in the kernel's table as a timewait socket, a new socket at
    /// its kernel address, or three dumps in a row without it at all.
    pub timewait_recovered: u64,
    /// Failed connect() calls on TCP sockets since start (EADDRNOTAVAIL, EAGAIN, ENOBUFS: the
    /// ephemeral ports ran out, or the kernel had no room).
    pub connect_failures: u64,
    /// Failed bind() calls on TCP sockets since start (EADDRINUSE, EADDRNOTAVAIL).
    pub bind_failures: u64,
}

/// One process. `pid` 0 with `comm` "(before start)" holds sockets that existed before twtrace
/// started and have no known owner.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: String,
    /// The network namespace (nsfs inode) of its latest socket; 0 when not known.
    pub netns: u32,
    /// Its cgroup (v2 id, as the kernel program captured it); 0 when not known. Not in the
    /// JSON: the container it names is.
    #[serde(skip)]
    pub cgroup_id: u64,
    /// The container the process runs in (full id), when its cgroup path names one: docker,
    /// containerd, cri-o or podman layouts. Filled live, from the cgroup hierarchy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `docker`, `containerd`, `cri-o` or `podman`, with `container`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    /// The Kubernetes pod UID its cgroup path carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Its command line (arguments joined by spaces, at most about 200 bytes, `…` where cut),
    /// read live from /proc once per process; unknown for a process that exited before it was
    /// read, and in replays (recordings do not hold it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The process has exited (or its pid now belongs to another process): its row stays until
    /// its sockets are gone and it has been idle a while, as the counts it made still matter.
    pub exited: bool,
    /// Since start.
    pub timewait_entered: u64,
    /// In the last interval.
    #[serde(serialize_with = "three_decimals")]
    pub timewait_per_s: f64,
    pub timewait_now: u64,
    /// Orphaned FIN_WAIT2 timewait entries since start, and those alive now (see `Totals`).
    pub fin_wait2_entered: u64,
    pub fin_wait2_now: u64,
    pub close_wait_now: u64,
    /// The most CLOSE_WAIT sockets it held at once since start (a leaker that closed them all
    /// before the end still shows).
    pub close_wait_peak: u64,
    /// Age of its oldest CLOSE_WAIT socket in seconds (0 without one).
    #[serde(serialize_with = "three_decimals")]
    pub close_wait_oldest_s: f64,
    /// The oldest was in CLOSE_WAIT already when twtrace first saw it (a socket from before the
    /// start): its age is at least `close_wait_oldest_s`.
    #[serde(skip_serializing_if = "is_false")]
    pub close_wait_oldest_at_least: bool,
    /// Of `close_wait_now`, those older than the leak threshold (`--min-age`, 30 s).
    pub close_wait_old: u64,
    /// How CLOSE_WAIT now changed over the last minute, per minute (0 over less than 10 s).
    #[serde(serialize_with = "three_decimals")]
    pub close_wait_growth_per_min: f64,
    /// CLOSE_WAIT sockets by age: `{"lt_1s": n, "lt_10s", "lt_30s", "lt_1m", "lt_5m", "lt_30m",
    /// "ge_30m"}`, the empty buckets left out.
    #[serde(skip_serializing_if = "CloseWaitAges::is_empty")]
    pub close_wait_ages: CloseWaitAges,
    /// A CLOSE_WAIT leak suspect: it holds CLOSE_WAIT sockets older than the threshold.
    pub leak_suspect: bool,
    pub established_now: u64,
    /// Its ESTABLISHED count grew by 10 or more over at least 30 s of the last minute and never
    /// fell: connections opened and never closed.
    pub established_growing: bool,
    /// How ESTABLISHED now changed over the last minute, per minute (0 over less than 10 s).
    #[serde(serialize_with = "three_decimals")]
    pub established_growth_per_min: f64,
    /// Connections opened (connect() or accepted) since start.
    pub opens: u64,
    #[serde(serialize_with = "three_decimals")]
    pub opens_per_s: f64,
    /// Connections ended (CLOSE, TIME_WAIT or an orphan's FIN_WAIT2 timewait) since start.
    pub closes: u64,
    #[serde(serialize_with = "three_decimals")]
    pub closes_per_s: f64,
    /// Connections ended by a reset (sent or received) since start.
    pub resets: u64,
    /// Its failed connect() calls since start (see [`Totals::connect_failures`]).
    pub connect_failures: u64,
    /// Its failed bind() calls since start.
    pub bind_failures: u64,
    /// Those failures by call and errno, connect() first, most frequent first; absent from the
    /// JSON when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureRow>,
    /// TIME_WAIT entries per second over the last minute, oldest first (the drill-down's
    /// sparkline). Not in the JSON: the rates above carry the same information per interval.
    #[serde(skip)]
    pub timewait_history: Vec<u64>,
    /// CLOSE_WAIT now at each snapshot over the last minute, oldest first (the drill-down's
    /// second sparkline). Not in the JSON either.
    #[serde(skip)]
    pub close_wait_history: Vec<u64>,
    /// Sorted like the processes; capped, with the rest summed in [`PeerKey::Other`].
    pub peers: Vec<PeerRow>,
}

/// One peer of a process and its connections. In the JSON the peer is spelt out in place:
/// `{"raddr": ..., "rport": ..., ["lport": ...,] "timewait_entered": ...}` (see [`PeerKey`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerRow {
    #[serde(flatten)]
    pub peer: PeerKey,
    pub timewait_entered: u64,
    pub timewait_now: u64,
    pub fin_wait2_entered: u64,
    pub fin_wait2_now: u64,
    pub close_wait_now: u64,
    /// Age of the oldest CLOSE_WAIT socket to this peer, in seconds (left out without one).
    #[serde(skip_serializing_if = "is_zero", serialize_with = "three_decimals")]
    pub close_wait_oldest_s: f64,
    pub established_now: u64,
    /// Failed connect() calls toward it since start (outgoing peers only).
    pub connect_failures: u64,
    /// Its connections that ended by a reset since start (the kernel makes no timewait socket
    /// for those).
    pub resets: u64,
    /// How long its connections lived, over those that ended in the last minute (left out when
    /// none did): the evidence for a new connection per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetimes: Option<Lifetimes>,
}

impl PeerRow {
    /// `peer` with no connections counted.
    pub fn new(peer: PeerKey) -> Self {
        Self {
            peer,
            timewait_entered: 0,
            timewait_now: 0,
            fin_wait2_entered: 0,
            fin_wait2_now: 0,
            close_wait_now: 0,
            close_wait_oldest_s: 0.0,
            established_now: 0,
            connect_failures: 0,
            resets: 0,
            lifetimes: None,
        }
    }
}

/// How often one call failed with one errno, for one process. In the JSON:
/// `{"call": "connect", "errno": "EADDRNOTAVAIL", "count": 12}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FailureRow {
    #[serde(serialize_with = "call_name")]
    pub call: Call,
    #[serde(serialize_with = "errno_name")]
    pub errno: Errno,
    pub count: u64,
}

fn call_name<S: Serializer>(call: &Call, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(call.name())
}

fn errno_name<S: Serializer>(errno: &Errno, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&errno.name())
}

/// Lifetimes of a peer's connections that ended in the last 30 to 60 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lifetimes {
    /// Connections that ended, counted.
    pub ended: u64,
    /// Per second over the time covered.
    pub ended_per_s: f64,
    /// Share of them that lived under a second.
    pub short_share: f64,
    /// The median lifetime is at most this many seconds (the upper edge of the logarithmic
    /// bucket holding it: 0.001, 0.004, 0.016, 0.064, 0.25, 1, 4, 16, 64, 256, 1024, 4096); null
    /// when longer.
    pub median_le_s: Option<f64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Where a process's connections go.
///
/// In the JSON: `raddr` (the address, or "other"), `rport` (0 unless outgoing) and, for
/// accepted connections only, `lport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// Outgoing connections, by remote address and port.
    Out { raddr: IpAddr, rport: u16 },
    /// Accepted connections, by the client's address and the local (listening) port: a
    /// client's ephemeral port says nothing.
    In { raddr: IpAddr, lport: u16 },
    /// Everything beyond the model's per-process cap, summed.
    Other,
}

impl PeerKey {
    /// The key of a connection between `local` and `remote`, accepted or outgoing.
    pub fn of(accepted: bool, local: SocketAddr, remote: SocketAddr) -> Self {
        if accepted {
            Self::In {
                raddr: remote.ip(),
                lport: local.port(),
            }
        } else {
            Self::Out {
                raddr: remote.ip(),
                rport: remote.port(),
            }
        }
    }

    /// The remote address; none for [`PeerKey::Other`].
    pub fn raddr(&self) -> Option<IpAddr> {
        match *self {
            Self::Out { raddr, .. } | Self::In { raddr, .. } => Some(raddr),
            Self::Other => None,
        }
    }

    /// The remote port of an outgoing connection, else 0 (as in the JSON).
    pub fn rport(&self) -> u16 {
        match *self {
            Self::Out { rport, .. } => rport,
            Self::In { .. } | Self::Other => 0,
        }
    }

    /// The listening port of an accepted connection.
    pub fn lport(&self) -> Option<u16> {
        match *self {
            Self::In { lport, .. } => Some(lport),
            Self::Out { .. } | Self::Other => None,
        }
    }

    /// The order of peers with equal counts, in the JSON and the terminal view's groups: by the
    /// JSON's `raddr` as text ("10.0.0.10" before "10.0.0.9", "other" after any address), then
    /// `rport`, then `lport`.
    pub fn text_order(&self) -> (String, u16, Option<u16>) {
        (Raddr(self.raddr()).to_string(), self.rport(), self.lport())
    }
}

/// How people read a peer: `10.0.0.5:5432` and `[2001:db8::7]:443` for outgoing connections,
/// `10.0.0.9 -> :80` for accepted ones, `other` for the capped rest. The alternate form (`{:#}`)
/// is the terminal view's, narrower: `10.0.0.9→:80` and `(other peers)`.
impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (*self, f.alternate()) {
            (Self::Out { raddr, rport }, _) => write!(f, "{}", SocketAddr::new(raddr, rport)),
            (Self::In { raddr, lport }, false) => write!(f, "{raddr} -> :{lport}"),
            (Self::In { raddr, lport }, true) => write!(f, "{raddr}→:{lport}"),
            (Self::Other, false) => f.write_str("other"),
            (Self::Other, true) => f.write_str("(other peers)"),
        }
    }
}

impl Serialize for PeerKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let lport = self.lport();
        let mut st = s.serialize_struct("PeerKey", 2 + usize::from(lport.is_some()))?;
        st.serialize_field("raddr", &Raddr(self.raddr()))?;
        st.serialize_field("rport", &self.rport())?;
        if let Some(lport) = lport {
            st.serialize_field("lport", &lport)?;
        }
        st.end()
    }
}

/// The JSON's `raddr`: the address, or "other" for the capped rest.
struct Raddr(Option<IpAddr>);

impl fmt::Display for Raddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => fmt::Display::fmt(&addr, f),
            None => f.write_str("other"),
        }
    }
}

impl Serialize for Raddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Writes a time as snapshots do, in the JSON and the table: RFC 3339 in UTC with whole
/// seconds, the fraction cut off ("2026-11-25T16:00:00Z").
pub fn whole_seconds<S: Serializer>(time: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&WholeSeconds(*time))
}

/// A time shown as RFC 3339 in UTC with whole seconds, the fraction cut off.
#[derive(Clone, Copy, Debug)]
pub struct WholeSeconds(pub Timestamp);

impl fmt::Display for WholeSeconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Precision 0 truncates (as humantime's `format_rfc3339_seconds` did).
        write!(f, "{:.0}", self.0)
    }
}

/// The comm shown for sockets that predate twtrace and have no known owner.
pub const BEFORE_START: &str = "(before start)";

#[cfg(test)]
mod tests {
    use super::*;

    fn json(peer: PeerKey) -> String {
        let row = PeerRow {
            timewait_entered: 3,
            ..PeerRow::new(peer)
        };
        serde_json::to_string(&row).expect("json")
    }

    #[test]
    fn peers_are_spelt_out_in_the_json() {
        let v4: IpAddr = "10.0.0.9".parse().expect("addr");
        let v6: IpAddr = "2001:db8::7".parse().expect("addr");
        let counts = r#""timewait_entered":3,"timewait_now":0,"fin_wait2_entered":0,"fin_wait2_now":0,"close_wait_now":0,"established_now":0,"connect_failures":0,"resets":0}"#;
        for (peer, want) in [
            (
                PeerKey::Out {
                    raddr: v4,
                    rport: 443,
                },
                r#"{"raddr":"10.0.0.9","rport":443,"#,
            ),
            (
                PeerKey::Out {
                    raddr: v6,
                    rport: 443,
                },
                r#"{"raddr":"2001:db8::7","rport":443,"#,
            ),
            (
                PeerKey::In {
                    raddr: v4,
                    lport: 8080,
                },
                r#"{"raddr":"10.0.0.9","rport":0,"lport":8080,"#,
            ),
            (PeerKey::Other, r#"{"raddr":"other","rport":0,"#),
        ] {
            assert_eq!(json(peer), format!("{want}{counts}"), "{peer:?}");
        }
    }

    #[test]
    fn peer_labels() {
        let v4: IpAddr = "10.0.0.9".parse().expect("addr");
        let v6: IpAddr = "::1".parse().expect("addr");
        for (peer, plain, narrow) in [
            (
                PeerKey::Out {
                    raddr: v4,
                    rport: 80,
                },
                "10.0.0.9:80",
                "10.0.0.9:80",
            ),
            (
                PeerKey::Out {
                    raddr: v6,
                    rport: 443,
                },
                "[::1]:443",
                "[::1]:443",
            ),
            (
                PeerKey::In {
                    raddr: v6,
                    lport: 80,
                },
                "::1 -> :80",
                "::1→:80",
            ),
            (PeerKey::Other, "other", "(other peers)"),
        ] {
            assert_eq!(peer.to_string(), plain);
            assert_eq!(format!("{peer:#}"), narrow);
        }
    }

    #[test]
    fn equal_peers_are_ordered_by_address_text() {
        let out = |a: &str, rport| PeerKey::Out {
            raddr: a.parse().expect("addr"),
            rport,
        };
        let mut keys = [
            PeerKey::Other,
            out("10.0.0.9", 80),
            out("fe80::1", 22),
            out("10.0.0.10", 81),
            out("10.0.0.10", 80),
        ];
        keys.sort_by_cached_key(PeerKey::text_order);
        assert_eq!(
            keys,
            [
                out("10.0.0.10", 80),
                out("10.0.0.10", 81),
                out("10.0.0.9", 80),
                out("fe80::1", 22),
                PeerKey::Other
            ]
        );
    }

    #[test]
    fn failures_are_named_in_the_json_and_left_out_when_there_are_none() {
        let row = ProcessRow {
            pid: 7,
            connect_failures: 3,
            failures: vec![FailureRow {
                call: Call::Connect,
                errno: Errno::EADDRNOTAVAIL,
                count: 3,
            }],
            ..ProcessRow::default()
        };
        let v = serde_json::to_value(&row).expect("json");
        assert_eq!(v["connect_failures"], 3);
        assert_eq!(v["bind_failures"], 0);
        assert_eq!(
            v["failures"],
            serde_json::json!([{"call": "connect", "errno": "EADDRNOTAVAIL", "count": 3}])
        );
        let none = serde_json::to_value(ProcessRow::default()).expect("json");
        assert!(none.get("failures").is_none(), "{none}");
        assert_eq!(none["connect_failures"], 0);
        let totals = serde_json::to_value(Totals::default()).expect("json");
        assert_eq!(
            (&totals["connect_failures"], &totals["bind_failures"]),
            (&serde_json::json!(0), &serde_json::json!(0))
        );
    }

    #[test]
    fn times_are_written_with_whole_seconds() {
        let t: Timestamp = "2026-11-25T16:00:00.999999Z".parse().expect("time");
        assert_eq!(WholeSeconds(t).to_string(), "2026-11-25T16:00:00Z");
        let snap = Snapshot {
            time: t,
            ..Snapshot::default()
        };
        let v = serde_json::to_value(&snap).expect("json");
        assert_eq!(v["time"], "2026-11-25T16:00:00Z");
    }
}
