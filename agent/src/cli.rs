//! Command line.

use clap::{Args, Parser, Subcommand};
use twtrace_ebpf::{MAX_PID_FILTER, MAX_PORT_FILTER};

const EXAMPLES: &str = "\
Examples:
  sudo twtrace                          live leaderboard: who makes TIME_WAIT, who leaks CLOSE_WAIT
  sudo twtrace --pid 4242               only sockets owned by process 4242
  sudo twtrace --json --interval 5      one JSON snapshot every 5 seconds (also when piped)
  sudo twtrace --once                   one table after one second, then exit
  sudo twtrace trace --port 8080        every transition of connections to or from port 8080
  sudo twtrace trace --json | jq -c 'select(.new == \"TIME_WAIT\")'
                                        who creates TIME_WAIT sockets, as JSON Lines
  sudo twtrace record -o incident.twr   capture everything to a file, for later
  twtrace report incident.twr           summarise a recording, on any machine, without root
  twtrace doctor                        what is true on this host: port range, TIME_WAIT, listen
                                        queues, open-file limits, and common advice that is wrong
  twtrace --from incident.twr --speed 10
                                        replay a recording into the leaderboard, ten times as fast
  sudo twtrace --record incident.twr    watch the leaderboard and record everything meanwhile
  sudo twtrace --netns /run/netns/blue  only one network namespace (a pod's: /proc/PID/ns/net)
  sudo twtrace --cgroup /system.slice/docker-<id>.scope
                                        only one container's sockets (its cgroup and below)
  sudo twtrace trace --json | jq -c 'select(.container) | {pid, container, pod_uid, new}'
                                        transitions of processes in containers, with their ids
  sudo twtrace leaks                    watch 60 s, then name who leaks CLOSE_WAIT or opens a
                                        connection per request, with evidence and a fix
  sudo twtrace ports                    local ports in use per destination: whose pool runs out
  twtrace doctor --explain              this host's TCP settings and counters, from evidence
  sudo twtrace serve                    Prometheus metrics on http://127.0.0.1:9814/metrics
  twtrace report incident.twr --html incident.html
                                        a self-contained page with charts, for the postmortem
  sudo twtrace ports                    which destination's pool of local ports runs out, and who
                                        opens the connections (\"Cannot assign requested address\")

twtrace attributes each transition to the process that owns the socket, not to whichever task
the kernel happened to run when a packet arrived (what tcpstates and bpftrace print).

Exit status:
  0  success, whatever was found (also when the reader of a pipe leaves, as with `| head`)
  1  a runtime error: no root or capabilities for tracing, a file that is missing or cannot be
     written, a damaged recording, a kernel that cannot load the program
  2  a usage error: an unknown option, a bad value, options that do not go together

Environment:
  NO_COLOR   when set and not empty, the full-screen view and the log messages use no colour
             (bold and reversed text still mark what colour did)";

#[derive(Debug, Parser)]
#[command(
    name = "twtrace",
    version,
    about = "Which process, talking to which peer, is churning or leaking TCP connections right now",
    after_help = EXAMPLES,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of the default live view, the leaderboard (used when no command is given).
    #[command(flatten)]
    pub live: LiveArgs,

    /// Show debug messages, the kernel program's log and, on load errors, the verifier's log.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Cli {
    /// Parses the command line, or exits with clap's message (status 2).
    pub fn parse_checked() -> Self {
        Self::try_parse_checked(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// The leaderboard's options (the ones given without a command) make no sense with a
    /// command and are refused, but `-v` is everybody's and may stand before the command.
    /// (clap's `args_conflicts_with_subcommands` would refuse `twtrace -v trace` too.)
    pub fn try_parse_checked<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory as _, FromArgMatches as _, parser::ValueSource};
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(args)?;
        if let Some((name, _)) = matches.subcommand() {
            let misplaced = command
                .get_arguments()
                .filter(|a| !a.is_global_set())
                .map(|a| a.get_id().as_str())
                .find(|id| matches.value_source(id) == Some(ValueSource::CommandLine));
            if let Some(id) = misplaced {
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--{} is an option of the leaderboard (no command); `{name}` cannot be \
                         used with it (put the command first: twtrace {name} --{0} ...)",
                        id.replace('_', "-")
                    ),
                ));
            }
        }
        Self::from_arg_matches(&matches)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every TCP state transition with its owning process, one line each.
    #[command(after_help = "Examples:
  sudo twtrace trace
  sudo twtrace trace --pid 4242 --pid 4243
  sudo twtrace trace --port 443,8080 --json > transitions.jsonl
  sudo twtrace trace -6 --rport 443 -j  IPv6 connections to remote port 443, as JSON Lines

TIME_WAIT is inferred: the kernel reports the full socket's FIN_WAIT2 -> CLOSE when it hands the
connection to a timewait socket. Closes caused by a reset are shown as CLOSE with the reset's side.")]
    Trace(TraceArgs),

    /// Record every transition and the kernel's socket table to a file, for `twtrace report`.
    #[command(after_help = "Examples:
  sudo twtrace record -o incident.twr --duration 5m
  sudo twtrace record -o api.twr --port 8080 --max-size 200M
  twtrace report incident.twr               (no root needed, on any machine)

  sudo twtrace record --ring 5m --trigger 'timewait_now>20000' --trigger 'close_wait_now>500' -o DIR
                                        flight recorder: on a trigger (or SIGUSR1) write the last
                                        5 minutes and the next one to DIR/twtrace-<time>.twr

The file holds a header (host, kernel, sysctls, command line, filters) and chunks of binary
records, each chunk checksummed and written at least once a second: a killed recording or a full
disk loses at most its last second. It is created with mode 0600 (it names processes and peers).
The flight recorder holds at most --ring-max bytes (default 256 MiB) of recording in memory, plus
the last socket table its ring dropped (about 26 bytes a socket), which starts each capture.")]
    Record(RecordArgs),

    /// Summarise a recording: host facts, top processes and peers, TIME_WAIT and CLOSE_WAIT
    /// timelines, each process's CLOSE_WAIT peak; as text, JSON or an HTML page. No root.
    #[command(after_help = "Examples:
  twtrace report incident.twr
  twtrace report incident.twr --json | jq '.processes[0]'
  twtrace report incident.twr --json | jq '.close_wait_peaks[0]'
                                        the process that held the most CLOSE_WAIT at once, and when
  twtrace report incident.twr --since 30s --until 90s --port 8080
  twtrace report incident.twr --html incident.html
                                        one self-contained page (charts, findings, tables) to
                                        open in any browser, offline; nothing on it is fetched
  twtrace report incident.twr --html incident.html --force --since 2m
  twtrace report incident.twr --export jsonl > events.jsonl

Processes are ranked by the larger of TIME_WAIT entered and CLOSE_WAIT peak: one that held 30
connections in CLOSE_WAIT and closed them before the end ranks with one that made 30 TIME_WAIT.
--since/--until take RFC 3339 times or durations from the recording's start; the report is what
twtrace would have shown had it been started at --since and stopped at --until.")]
    Report(ReportArgs),

    /// Watch for a while, then name the processes that leak connections (CLOSE_WAIT sockets
    /// their peer closed long ago, ESTABLISHED that only grows) or open a new connection per
    /// request, each with its evidence and a fix.
    #[command(after_help = "Examples:
  sudo twtrace leaks                        watch for 60 s, then list the suspects
  sudo twtrace leaks --watch 5m --min-age 2m
  sudo twtrace leaks --json | jq -c 'select(.kind == \"close_wait_leak\") | {pid, comm, oldest_age_s}'
  twtrace leaks --from incident.twr         the same over a recording, no root

A CLOSE_WAIT socket means the peer closed and the process never called close(). A process is a
leak suspect when it holds CLOSE_WAIT sockets older than --min-age; growing makes it critical.
Sockets already in CLOSE_WAIT when twtrace starts count with an age of at least the time watched
(`oldest_age_at_least` in the JSON). Ctrl-C stops early and reports what was seen. Exit status 0
whether or not suspects were found (1: an error; 2: bad usage).")]
    Leaks(LeaksArgs),

    /// Local (ephemeral) ports in use per destination: which one's pool runs out, how soon, and
    /// which processes open the connections.
    #[command(after_help = "Examples:
  sudo twtrace ports                        a table every second, most used pool first; Ctrl-C to stop
  sudo twtrace ports --watch 30s            watch 30 seconds, then print one table and exit
  sudo twtrace ports --json --watch 10s | jq '.destinations[0]'
  sudo twtrace ports --netns /run/netns/blue --top 5
  sudo twtrace ports --json | jq -c '.destinations[] | select(.share > 0.5)'

connect() without bind() picks a local port from net.ipv4.ip_local_port_range, less
net.ipv4.ip_local_reserved_ports, such that the 4-tuple is unique: the pool runs out per
destination (local address, remote address, remote port), and a port stays taken in TIME_WAIT for
60 s. When none is left, connect() fails with EADDRNOTAVAIL, \"Cannot assign requested address\".
IN_USE counts the sockets holding a port toward the destination at the last look at the kernel's
socket table (every second); SHARE is IN_USE over the usable ports of its namespace; ETA is the
time until none is left at the growth of IN_USE over the last 10 seconds (- when not growing).")]
    Ports(PortsArgs),

    /// A Prometheus exporter: /metrics (per-process-name counters and gauges, the port pools'
    /// shares, the agent's own health) and /healthz, over HTTP.
    #[command(after_help = "Examples:
  sudo twtrace serve                                 http://127.0.0.1:9814/metrics
  sudo twtrace serve --listen 0.0.0.0:9814 --top-k 50
  sudo twtrace serve --port 5432                     only connections with port 5432
  curl -s 127.0.0.1:9814/healthz                     200 ok, or 503 and why

Labels are the process name (comm) and its container id, never pids or ports: per metric the
--top-k largest values get their own series and the rest is summed in comm=\"other\". A counter's
series starts at 0 when its label enters the top K (what it counted before stays in \"other\"), so
every series only grows and sum() over them is the host's total. /healthz answers 503 with the
reason while no statistics came from the kernel program in the last 5 s or when events were lost
in the last interval. It listens on loopback unless --listen says otherwise.")]
    Serve(ServeArgs),

    /// Check this host's TCP settings, counters and open-file limits, from evidence. No root
    /// needed (except for --watch, and to count other users' open files).
    #[command(after_help = "Examples:
  twtrace doctor                       findings, most severe first, each with its evidence
  twtrace doctor --explain             also what was read, and common advice that does not apply
  twtrace doctor --json | jq '.findings[] | select(.severity != \"info\")'
  sudo twtrace doctor --watch 10s      also 10 s of live tracing: who churns, who leaks
  sudo nsenter -n -t PID twtrace doctor
                                       a container's network namespace (settings and counters are
                                       per namespace)

Exit status: 0 whatever the findings (they are the output); 1 when it could not run; 2 on a
usage error.")]
    Doctor(DoctorArgs),
}

#[derive(Debug, Args, Clone, Default)]
pub struct DoctorArgs {
    /// Print one JSON document (schema 1) instead of text.
    #[arg(short, long)]
    pub json: bool,

    /// Also say what each rule read when it found nothing wrong, list the settings and counters
    /// read, and correct common advice (tcp_tw_recycle, tcp_fin_timeout, tcp_tw_reuse) even
    /// where it is not applied.
    #[arg(long)]
    pub explain: bool,

    /// First watch TCP state changes live for this long (e.g. 10s; needs what the live view
    /// needs: root or its capabilities), so the findings name the processes that churn
    /// connections or leak CLOSE_WAIT.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub watch: Option<std::time::Duration>,
}

#[derive(Debug, Args, Clone)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,

    /// One JSON object per suspect (JSON Lines) instead of text.
    #[arg(short, long)]
    pub json: bool,

    /// A CLOSE_WAIT socket older than this makes its process a leak suspect.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub min_age: std::time::Duration,

    /// How long to watch before reporting (Ctrl-C reports earlier).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub watch: std::time::Duration,

    /// Connections per second to one peer, ended in the last minute, from which short-lived
    /// ones (median under a second) count as a new connection per request.
    #[arg(long, default_value_t = 2.0, value_name = "N", value_parser = parse_rate)]
    pub churn_rate: f64,

    /// Analyse a recording (`twtrace record`) instead of tracing; no root needed.
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}`: a rate is a number above 0 (connections per second)"
        )),
    }
}

#[derive(Debug, Args, Clone)]
pub struct PortsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,

    /// Print one JSON document per interval instead of a table.
    #[arg(short, long)]
    pub json: bool,

    /// Watch this long (e.g. 30s, 2m), then print once and exit; without it, print every
    /// interval until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub watch: Option<std::time::Duration>,

    /// Seconds between printouts (and between the open rates' measurements).
    #[arg(short, long, default_value_t = 1.0, value_name = "SECS", value_parser = parse_interval)]
    pub interval: f64,

    /// Destinations shown, most used share first.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub top: u64,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,

    /// Address and port to listen on. Loopback by default: the metrics name processes and
    /// peers, so exposing them to the network is a choice to make explicitly.
    #[arg(long, default_value = "127.0.0.1:9814", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,

    /// Label values per metric: the K largest get their own series, the rest is summed in
    /// comm="other".
    #[arg(long, default_value_t = 20, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub top_k: u64,
}

#[derive(Debug, Args, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,

    /// The recording to write (with --ring: the directory for captures).
    #[arg(short, long, value_name = "FILE")]
    pub output: std::path::PathBuf,

    /// Stop after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,

    /// Stop before the file grows beyond this size (e.g. 500M, 2G). At least the header and the
    /// end mark must fit (usually under 1K): a smaller size is refused before the file is created.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "ring")]
    pub max_size: Option<u64>,

    /// Flight recorder: keep only the last DURATION in memory (at most --ring-max bytes) and
    /// write it, plus --after more, to DIR/twtrace-<time>.twr when a --trigger fires or on
    /// SIGUSR1; then keep going.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ring: Option<std::time::Duration>,

    /// The flight recorder's memory bound: the ring never holds more than this many bytes of
    /// chunks (about 85 bytes per event, socket-table dumps stored as changes: at 140,000
    /// events/s, 256M hold about 22 s); the oldest go first.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size, requires = "ring")]
    pub ring_max: u64,

    /// A condition checked every second on the leaderboard's snapshot, e.g. 'timewait_now>20000',
    /// 'close_wait_now[comm=java]>500', 'timewait_per_s[pid=42]>=1000' (repeatable). Fields:
    /// totals (timewait_now, fin_wait2_now, timewait_kernel, close_wait_now, established_now,
    /// timewait_entered, fin_wait2_entered, timewait_per_s, lost_events, unattributed_events,
    /// connect_failures, bind_failures) or, with [pid=N] or [comm=NAME] (summed over processes
    /// of that name), a process's (timewait_entered, timewait_per_s, timewait_now,
    /// fin_wait2_entered, fin_wait2_now, close_wait_now, established_now, opens, opens_per_s,
    /// closes, closes_per_s, resets, connect_failures, bind_failures). A trigger fires when its
    /// condition becomes true.
    #[arg(long, value_name = "EXPR", requires = "ring")]
    pub trigger: Vec<crate::sink::trigger::Trigger>,

    /// With --ring: how long to keep writing a capture after its trigger.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration, requires = "ring")]
    pub after: std::time::Duration,

    /// Replace FILE if it exists: it becomes a new file owned by you, mode 0600. A symbolic
    /// link is replaced, never written through.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ReportArgs {
    /// The recording to read.
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,

    /// The final snapshot in the leaderboard's JSON schema, plus "timeline" and "host".
    #[arg(short, long)]
    pub json: bool,

    /// Processes and peers shown.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Start here: an RFC 3339 time or a duration from the recording's start (30s, 2m).
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub since: Option<When>,

    /// End here: an RFC 3339 time or a duration from the recording's start.
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub until: Option<When>,

    /// Print every selected event instead of the summary (jsonl: as `trace --json` does).
    #[arg(long, value_name = "FORMAT", conflicts_with = "html")]
    pub export: Option<Export>,

    /// Write the report as one self-contained HTML page to OUT (inline CSS and SVG charts, no
    /// script, nothing fetched), created mode 0600; an existing OUT is refused without --force.
    #[arg(long, value_name = "OUT", conflicts_with = "json")]
    pub html: Option<std::path::PathBuf>,

    /// With --html: replace OUT if it exists (a new 0600 file; a symbolic link is replaced,
    /// never written through).
    #[arg(long, requires = "html")]
    pub force: bool,
}

/// What `report --export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Export {
    /// One JSON object per event, as `twtrace trace --json` prints them.
    Jsonl,
}

/// A moment in a recording: a wall-clock time, or a duration from the recording's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    FromStart(std::time::Duration),
    At(std::time::SystemTime),
}

fn parse_when(s: &str) -> Result<When, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(When::FromStart(d));
    }
    humantime::parse_rfc3339_weak(s)
        .map(When::At)
        .map_err(|_| format!("`{s}` is neither an RFC 3339 time nor a duration such as 30s"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("the duration must be more than 0".into());
    }
    Ok(d)
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::recording::parse_size(s)
}

/// The leaderboard: a full-screen view on a terminal, snapshots otherwise.
#[derive(Debug, Args, Clone)]
pub struct LiveArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,

    /// Print one JSON object per interval instead of the full-screen view.
    #[arg(short, long)]
    pub json: bool,

    /// Print one snapshot after one interval and exit (a table, or JSON with --json).
    #[arg(long)]
    pub once: bool,

    /// Seconds between snapshots.
    #[arg(short, long, default_value_t = 1.0, value_name = "SECS", value_parser = parse_interval)]
    pub interval: f64,

    /// Stop after this many snapshots.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Seconds between checks against the kernel's socket table (sock_diag).
    #[arg(long, default_value_t = 2.0, value_name = "SECS", value_parser = parse_interval)]
    pub reconcile: f64,

    /// Processes shown in the printed table.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top: usize,

    /// A CLOSE_WAIT socket older than this marks its process as a leak suspect (red, `!`).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub min_age: std::time::Duration,

    /// Replay a recording (`twtrace record`) instead of tracing; no root needed.
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,

    /// Also record everything to FILE while showing the leaderboard, as `twtrace record`
    /// does (created mode 0600; read it with `twtrace report FILE`).
    #[arg(long, value_name = "FILE", conflicts_with = "from")]
    pub record: Option<std::path::PathBuf>,

    /// With --record: replace FILE if it exists, as `record --force` does (a new 0600 file; a
    /// symbolic link is replaced, never written through).
    #[arg(long, requires = "record")]
    pub force: bool,

    /// With --from: replay speed (2 = twice as fast; 0 = as fast as possible).
    #[arg(long, default_value_t = 1.0, value_name = "X", value_parser = parse_speed, requires = "from")]
    pub speed: f64,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!(
            "{v}: the speed must be 0 (as fast as possible) or more"
        ))
    }
}

impl Default for LiveArgs {
    fn default() -> Self {
        Self {
            filter: FilterArgs::default(),
            tracer: TracerArgs::default(),
            json: false,
            once: false,
            interval: 1.0,
            count: None,
            reconcile: 2.0,
            top: 20,
            min_age: std::time::Duration::from_secs(30),
            from: None,
            record: None,
            force: false,
            speed: 1.0,
        }
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if (0.1..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range (0.1 to 3600 seconds)"))
    }
}

#[derive(Debug, Args, Default, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,

    /// Write JSON Lines (one object per transition) instead of text.
    #[arg(short, long)]
    pub json: bool,

    /// Print the events of a recording (`twtrace record`) instead of tracing; no root needed.
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,
}

/// How the kernel side traces (live commands).
#[derive(Debug, Args, Default, Clone)]
pub struct TracerArgs {
    /// Attach no syscall tracepoints: accept() is not followed (accepted sockets stay with the
    /// listener's owner until a reconcile finds who holds them) and failed connect()/bind()
    /// calls are not counted. With them every system call of every process on the host is slower
    /// by about 45 ns while twtrace runs (30 ns because any syscall tracepoint sends all of them
    /// through the kernel's slow path, 10-15 ns for the enter tracepoints connect() and bind()
    /// need); this avoids that on syscall-heavy hosts. `--no-accept` is its older name.
    #[arg(long, visible_alias = "no-accept")]
    pub no_syscall_hooks: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct FilterArgs {
    /// Only sockets owned by this process id (repeat or comma-separate for several).
    #[arg(short, long, value_name = "PID", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Vec<u32>,

    /// Only connections with this local or remote port (repeat or comma-separate for several).
    #[arg(short = 'P', long, value_name = "PORT", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Vec<u16>,

    /// Only connections with this local port (a server's listening port, a client's ephemeral
    /// one; repeat or comma-separate for several).
    #[arg(long, value_name = "PORT", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub lport: Vec<u16>,

    /// Only connections with this remote port (the server's port, seen from a client; repeat
    /// or comma-separate for several).
    #[arg(long, value_name = "PORT", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub rport: Vec<u16>,

    /// Only IPv4 connections (an IPv4-mapped address on an IPv6 socket counts as IPv4).
    #[arg(short = '4', long, conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 connections (not IPv4-mapped ones).
    #[arg(short = '6', long)]
    pub ipv6: bool,

    /// Only sockets of this network namespace: its inode (as `ls -Li /proc/PID/ns/net` or
    /// `lsns -t net` show it), a path to it (/proc/PID/ns/net, /run/netns/NAME) or the NAME of
    /// `ip netns`.
    #[arg(long, value_name = "INODE|PATH")]
    pub netns: Option<String>,

    /// Only sockets whose owner is in this cgroup v2 or below it: its path as the `0::` line of
    /// /proc/PID/cgroup shows it (/kubepods/burstable/pod<uid>, /system.slice/docker-<id>.scope),
    /// with or without the mount in front (/sys/fs/cgroup/...). A cgroup made below it later
    /// counts from about a second after its creation. Sockets whose owner is not known (made
    /// before the start) are not shown. Live only.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
}

impl FilterArgs {
    /// Checks what clap cannot: limits of the kernel filter maps and that the pids exist.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.pid.len() > MAX_PID_FILTER as usize {
            anyhow::bail!("at most {MAX_PID_FILTER} --pid values are supported");
        }
        if self.port.len() > MAX_PORT_FILTER as usize {
            anyhow::bail!("at most {MAX_PORT_FILTER} --port values are supported");
        }
        if self.selection().kernel_ports().len() > MAX_PORT_FILTER as usize {
            anyhow::bail!("at most {MAX_PORT_FILTER} --lport and --rport values are supported");
        }
        for pid in &self.pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                anyhow::bail!("no process with pid {pid}");
            }
        }
        self.netns_id()?;
        self.cgroup_dir()?;
        Ok(())
    }

    /// The pids, ports and IP version asked for (the namespace and cgroup need resolving:
    /// the callers add them).
    pub fn selection(&self) -> crate::pipeline::Selection {
        use crate::pipeline::{Ip, Selection};
        Selection {
            pids: self.pid.clone(),
            ports: self.port.clone(),
            lports: self.lport.clone(),
            rports: self.rport.clone(),
            ip: if self.ipv4 {
                Some(Ip::V4)
            } else if self.ipv6 {
                Some(Ip::V6)
            } else {
                None
            },
            ..Selection::default()
        }
    }

    /// `--cgroup` as a directory of the cgroup v2 hierarchy mounted here.
    pub fn cgroup_dir(&self) -> anyhow::Result<Option<crate::container::CgroupDir>> {
        self.cgroup
            .as_deref()
            .map(|arg| {
                crate::container::CgroupDir::resolve(
                    arg,
                    crate::kernel::procnet::cgroup2_mount().as_deref(),
                )
            })
            .transpose()
    }

    /// Refuses what a replay cannot do: `--cgroup` needs the live hierarchy, since a recording
    /// holds each owner's cgroup id, not its path (and the ids are the recording machine's).
    pub fn check_replay(&self) -> anyhow::Result<()> {
        if let Some(arg) = &self.cgroup {
            anyhow::bail!(
                "--cgroup {arg} works only live: a recording keeps each owner's cgroup id, not \
                 its path (record with --cgroup to keep only one cgroup's sockets)"
            );
        }
        Ok(())
    }

    /// `--netns` as a namespace inode.
    pub fn netns_id(&self) -> anyhow::Result<Option<u32>> {
        self.netns
            .as_deref()
            .map(crate::kernel::netns::parse_arg)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_checked(std::iter::once("twtrace").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_is_the_live_view_with_its_filters() {
        let cli = parse(&[
            "--pid",
            "12",
            "--port",
            "80,443",
            "--interval",
            "0.5",
            "--count",
            "3",
        ])
        .expect("parses");
        assert_eq!(
            (cli.live.interval, cli.live.count, cli.live.reconcile),
            (0.5, Some(3), 2.0)
        );
        assert!(cli.command.is_none());
        assert_eq!(cli.live.filter.pid, vec![12]);
        assert_eq!(cli.live.filter.port, vec![80, 443]);
    }

    #[test]
    fn short_flags_as_bcc_and_ss_spell_them() {
        let cli =
            parse(&["-p", "12", "-P", "80", "-j", "-i", "0.5", "-n", "3", "-v"]).expect("parses");
        let live = &cli.live;
        assert_eq!(
            (live.filter.pid.clone(), live.filter.port.clone()),
            (vec![12], vec![80])
        );
        assert!(live.json);
        assert_eq!((live.interval, live.count, cli.verbose), (0.5, Some(3), 1));

        let Some(Command::Trace(t)) = parse(&["trace", "-p", "1,2", "-P", "443", "-j"])
            .expect("parses")
            .command
        else {
            panic!("trace expected")
        };
        assert_eq!(
            (t.filter.pid, t.filter.port, t.json),
            (vec![1, 2], vec![443], true)
        );

        let Some(Command::Ports(p)) = parse(&["ports", "-i", "2", "-j", "-p", "7"])
            .expect("parses")
            .command
        else {
            panic!("ports expected")
        };
        assert_eq!((p.interval, p.json, p.filter.pid), (2.0, true, vec![7]));
        for (args, what) in [
            (&["leaks", "-j", "-P", "80"][..], "leaks"),
            (&["doctor", "-j"], "doctor"),
            (&["report", "f.twr", "-j", "-p", "3"], "report"),
            (
                &["record", "-o", "x", "-p", "3", "-P", "80", "-4"],
                "record",
            ),
        ] {
            parse(args).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        // Only where the option exists: trace has no interval, ports no count.
        assert!(parse(&["trace", "-i", "1"]).is_err());
        assert!(parse(&["ports", "-n", "1"]).is_err());
        // -o stays record's output, -v everybody's verbosity.
        assert!(parse(&["record", "-o", "x", "-v"]).is_ok());
    }

    #[test]
    fn local_remote_port_and_ip_version_filters() {
        let Some(Command::Trace(t)) =
            parse(&["trace", "--lport", "8080", "--rport", "443,80", "-6"])
                .expect("parses")
                .command
        else {
            panic!("trace expected")
        };
        let sel = t.filter.selection();
        assert_eq!(
            (sel.lports.clone(), sel.rports.clone()),
            (vec![8080], vec![443, 80])
        );
        assert_eq!(sel.ip, Some(crate::pipeline::Ip::V6));
        // The kernel program keeps either end's port: all three, for the pipeline to narrow.
        assert_eq!(sel.kernel_ports(), vec![80, 443, 8080]);
        let live = parse(&["-4", "--lport", "22"]).expect("parses").live;
        assert_eq!(live.filter.selection().ip, Some(crate::pipeline::Ip::V4));
        assert!(parse(&["-4", "-6"]).is_err(), "one version at a time");
        assert!(parse(&["--lport", "0"]).is_err());
        assert!(parse(&["--rport", "65536"]).is_err());
        assert!(
            parse(&["--lport", "80", "trace"]).is_err(),
            "a leaderboard option"
        );
        let many = FilterArgs {
            lport: (1..=40).collect(),
            rport: (41..=80).collect(),
            ..FilterArgs::default()
        };
        assert!(many.validate().is_err(), "80 ports in the kernel's filter");
    }

    #[test]
    fn trace_takes_repeated_and_comma_separated_values() {
        let cli = parse(&["trace", "--pid", "1", "--pid", "2,3", "--json", "-v"]).expect("parses");
        let Some(Command::Trace(args)) = cli.command else {
            panic!("trace expected")
        };
        assert_eq!(args.filter.pid, vec![1, 2, 3]);
        assert!(args.json);
        assert_eq!(cli.verbose, 1);
    }

    #[test]
    fn no_syscall_hooks_keeps_its_old_name() {
        for flag in ["--no-syscall-hooks", "--no-accept"] {
            let cli = parse(&["trace", flag]).expect("parses");
            let Some(Command::Trace(args)) = cli.command else {
                panic!("trace expected")
            };
            assert!(args.tracer.no_syscall_hooks, "{flag}");
            assert!(parse(&[flag]).expect("parses").live.tracer.no_syscall_hooks);
        }
        assert!(!parse(&[]).expect("parses").live.tracer.no_syscall_hooks);
    }

    #[test]
    fn bad_values_and_conflicts_are_rejected() {
        assert!(parse(&["--pid", "0"]).is_err());
        assert!(parse(&["--pid", "abc"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--port", "0"]).is_err());
        assert!(
            parse(&["--pid", "1", "trace"]).is_err(),
            "top-level flags conflict with a command"
        );
        assert!(parse(&["--json", "report", "f.twr"]).is_err());
        assert!(parse(&["--interval", "2", "record", "-o", "x"]).is_err());
        let v = parse(&["-v", "record", "-o", "x"]).expect("-v before a command");
        assert_eq!(v.verbose, 1);
        assert!(matches!(v.command, Some(Command::Record(_))));
        assert_eq!(parse(&["trace", "-vv"]).map(|c| c.verbose).ok(), Some(2));
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&["--interval", "0"]).is_err());
        assert!(parse(&["--interval", "x"]).is_err());
        assert!(parse(&["--count", "0"]).is_err());
        assert!(
            parse(&["trace", "--interval", "1"]).is_err(),
            "trace has no interval"
        );
    }

    #[test]
    fn record_takes_durations_sizes_and_flight_recorder_options() {
        let cli = parse(&[
            "record",
            "-o",
            "x.twr",
            "--duration",
            "5m",
            "--max-size",
            "500M",
            "--port",
            "80",
        ])
        .expect("parses");
        let Some(Command::Record(args)) = cli.command else {
            panic!("record expected")
        };
        assert_eq!(args.duration, Some(std::time::Duration::from_secs(300)));
        assert_eq!(args.max_size, Some(500 << 20));
        assert_eq!(args.filter.port, vec![80]);
        assert!(args.ring.is_none() && !args.force);

        let cli = parse(&[
            "record",
            "--ring",
            "5m",
            "--trigger",
            "timewait_now>20000",
            "--trigger",
            "close_wait_now[comm=java]>500",
            "--after",
            "1m",
            "-o",
            "dir",
        ])
        .expect("parses");
        let Some(Command::Record(args)) = cli.command else {
            panic!("record expected")
        };
        assert_eq!(args.trigger.len(), 2);
        assert_eq!(args.ring_max, 256 << 20);
        assert_eq!(args.after, std::time::Duration::from_secs(60));

        assert!(parse(&["record"]).is_err(), "-o is required");
        assert!(parse(&["record", "-o", "x", "--duration", "0s"]).is_err());
        assert!(parse(&["record", "-o", "x", "--duration", "soon"]).is_err());
        assert!(parse(&["record", "-o", "x", "--max-size", "12Q"]).is_err());
        assert!(
            parse(&["record", "-o", "x", "--trigger", "timewait_now>1"]).is_err(),
            "--trigger needs --ring"
        );
        assert!(parse(&["record", "-o", "x", "--ring", "1m", "--trigger", "bogus>1"]).is_err());
        assert!(
            parse(&["record", "-o", "x", "--ring", "1m", "--max-size", "1M"]).is_err(),
            "a ring has no file size"
        );
    }

    #[test]
    fn report_and_replay_options() {
        let cli = parse(&[
            "report", "f.twr", "--json", "--top", "5", "--since", "30s", "--export", "jsonl",
        ])
        .expect("parses");
        let Some(Command::Report(args)) = cli.command else {
            panic!("report expected")
        };
        assert!(args.json);
        assert_eq!(args.top, 5);
        assert_eq!(
            args.since,
            Some(When::FromStart(std::time::Duration::from_secs(30)))
        );
        assert_eq!(args.export, Some(Export::Jsonl));
        assert!(parse(&["report", "f.twr", "--since", "yesterday"]).is_err());
        assert!(parse(&["report", "f.twr", "--until", "2026-11-25T00:00:02Z"]).is_ok());
        assert!(parse(&["--from", "f.twr", "--record", "g.twr"]).is_err());
        assert!(parse(&["--force"]).is_err(), "--force needs --record");
        assert!(parse(&["--record", "g.twr", "--force", "--once"]).is_ok());
        assert!(parse(&["report", "f.twr", "--export", "csv"]).is_err());
        assert!(parse(&["report"]).is_err());
        let cli = parse(&["report", "f.twr", "--html", "o.html", "--force"]).expect("parses");
        let Some(Command::Report(args)) = cli.command else {
            panic!("report expected")
        };
        assert_eq!(args.html.as_deref(), Some(std::path::Path::new("o.html")));
        assert!(args.force);
        assert!(
            parse(&["report", "f.twr", "--force"]).is_err(),
            "--force needs --html"
        );
        assert!(parse(&["report", "f.twr", "--html", "o", "--json"]).is_err());
        assert!(parse(&["report", "f.twr", "--html", "o", "--export", "jsonl"]).is_err());

        let cli = parse(&["--from", "f.twr", "--speed", "0", "--json"]).expect("parses");
        assert_eq!(
            cli.live.from.as_deref(),
            Some(std::path::Path::new("f.twr"))
        );
        assert_eq!(cli.live.speed, 0.0);
        assert!(parse(&["--speed", "2"]).is_err(), "--speed needs --from");
        assert!(parse(&["--from", "f", "--speed", "-1"]).is_err());
        let cli = parse(&["trace", "--from", "f.twr"]).expect("parses");
        let Some(Command::Trace(args)) = cli.command else {
            panic!("trace expected")
        };
        assert!(args.from.is_some());
    }

    #[test]
    fn doctor_options() {
        let cli = parse(&["doctor", "--json", "--explain", "--watch", "10s"]).expect("parses");
        let Some(Command::Doctor(args)) = cli.command else {
            panic!("doctor expected")
        };
        assert!(args.json && args.explain);
        assert_eq!(args.watch, Some(std::time::Duration::from_secs(10)));
        let cli = parse(&["-v", "doctor"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Doctor(DoctorArgs { watch: None, .. }))
        ));
        assert!(parse(&["doctor", "--watch", "0s"]).is_err());
        assert!(parse(&["doctor", "--watch", "soon"]).is_err());
        assert!(parse(&["doctor", "--pid", "1"]).is_err(), "no filters");
        assert!(
            parse(&["--json", "doctor"]).is_err(),
            "the leaderboard's --json"
        );
    }

    #[test]
    fn serve_listens_on_loopback_by_default() {
        let Some(Command::Serve(args)) = parse(&["serve"]).expect("parses").command else {
            panic!("serve expected")
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:9814");
        assert_eq!(args.top_k, 20);
        let Some(Command::Serve(args)) = parse(&[
            "serve",
            "--listen",
            "[::1]:9900",
            "--top-k",
            "5",
            "--port",
            "443",
        ])
        .expect("parses")
        .command
        else {
            panic!("serve expected")
        };
        assert_eq!(args.listen.to_string(), "[::1]:9900");
        assert_eq!((args.top_k, args.filter.port.as_slice()), (5, &[443][..]));
        assert!(parse(&["serve", "--top-k", "0"]).is_err());
        assert!(parse(&["serve", "--listen", "localhost"]).is_err());
    }

    #[test]
    fn ports_takes_watch_interval_top_and_filters() {
        let cli = parse(&[
            "ports",
            "--json",
            "--watch",
            "30s",
            "--netns",
            "4026532281",
            "--top",
            "3",
        ])
        .expect("parses");
        let Some(Command::Ports(args)) = cli.command else {
            panic!("ports expected")
        };
        assert!(args.json);
        assert_eq!(args.watch, Some(std::time::Duration::from_secs(30)));
        assert_eq!((args.interval, args.top), (1.0, 3));
        assert_eq!(args.filter.netns_id().expect("inode"), Some(4_026_532_281));
        assert!(parse(&["ports", "--watch", "0s"]).is_err());
        assert!(parse(&["ports", "--top", "0"]).is_err());
        assert!(parse(&["ports", "--interval", "0"]).is_err());
        assert!(
            parse(&["--json", "ports"]).is_err(),
            "the leaderboard's --json"
        );
    }

    #[test]
    fn validate_rejects_missing_pids_and_too_many_values() {
        let missing = FilterArgs {
            pid: vec![u32::MAX - 1],
            ..FilterArgs::default()
        };
        assert!(
            missing
                .validate()
                .expect_err("no such pid")
                .to_string()
                .contains("no process with pid")
        );
        let own = FilterArgs {
            pid: vec![std::process::id()],
            ..FilterArgs::default()
        };
        own.validate().expect("own pid exists");
        let many = FilterArgs {
            port: (1..=65).collect(),
            ..FilterArgs::default()
        };
        assert!(many.validate().is_err());
    }

    #[test]
    fn cgroup_is_checked_and_refused_in_replays() {
        let cli = parse(&["trace", "--cgroup", "/system.slice"]).expect("parses");
        let Some(Command::Trace(args)) = cli.command else {
            panic!("trace expected")
        };
        assert_eq!(args.filter.cgroup.as_deref(), Some("/system.slice"));
        let e = args.filter.check_replay().expect_err("a replay refuses it");
        assert!(format!("{e:#}").contains("works only live"), "{e:#}");
        assert!(!format!("{e:#}").contains('\n'), "one line: {e:#}");
        FilterArgs::default()
            .check_replay()
            .expect("no --cgroup, nothing to refuse");

        let missing = FilterArgs {
            cgroup: Some("/twtrace-no-such-cgroup-anywhere".into()),
            ..FilterArgs::default()
        };
        let e = missing.validate().expect_err("no such cgroup");
        let text = format!("{e:#}");
        assert!(
            text.starts_with("--cgroup /twtrace-no-such-cgroup-anywhere: "),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }
}
