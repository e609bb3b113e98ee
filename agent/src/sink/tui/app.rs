//! The TUI's state: which view, how it is sorted and filtered, what is selected, whether the
//! picture is frozen. No I/O and no terminal: `input` turns keys into [`Action`]s,
//! [`App::apply`] changes the state, `ui` draws it.
//!
//! The rows a view shows (filtered, sorted, and for the peer view grouped across processes) are
//! derived here when the snapshot, the sort or the filter changes, into buffers that are reused,
//! so drawing a frame only reads them.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

pub use super::rows::PeerGroup;
use super::rows::{Matcher, build_groups, common_netns, directed, other_last, peer_order, settle};
use crate::model::snapshot::{PeerKey, PeerRow, ProcessRow, Snapshot};

/// What the body of the screen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Processes,
    /// Peers across all processes, with the processes behind each.
    Peers,
    /// The peers of one process (by pid) and its TIME_WAIT history.
    Process(u32),
}

/// The two lists a drill-down returns to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Processes,
    Peers,
}

/// Sortable columns of the process table, in display order: key `1` picks the first, `0` the
/// tenth; `s` reaches the eleventh (FAILED) too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcCol {
    Pid,
    Comm,
    TwPerS,
    TwTotal,
    TwNow,
    CwNow,
    EstNow,
    OpensPerS,
    ClosesPerS,
    Resets,
    /// Failed connect() and bind() calls.
    Failed,
}

impl ProcCol {
    pub const ALL: [ProcCol; 11] = [
        ProcCol::Pid,
        ProcCol::Comm,
        ProcCol::TwPerS,
        ProcCol::TwTotal,
        ProcCol::TwNow,
        ProcCol::CwNow,
        ProcCol::EstNow,
        ProcCol::OpensPerS,
        ProcCol::ClosesPerS,
        ProcCol::Resets,
        ProcCol::Failed,
    ];

    pub fn title(self) -> &'static str {
        match self {
            ProcCol::Pid => "PID",
            ProcCol::Comm => "COMM",
            ProcCol::TwPerS => "TW/s",
            ProcCol::TwTotal => "TW TOTAL",
            ProcCol::TwNow => "TW NOW",
            ProcCol::CwNow => "CW NOW",
            ProcCol::EstNow => "EST NOW",
            ProcCol::OpensPerS => "OPEN/s",
            ProcCol::ClosesPerS => "CLOSE/s",
            ProcCol::Resets => "RESETS",
            ProcCol::Failed => "FAILED",
        }
    }

    fn cmp(self, a: &ProcessRow, b: &ProcessRow) -> Ordering {
        match self {
            ProcCol::Pid => a.pid.cmp(&b.pid),
            ProcCol::Comm => a.comm.cmp(&b.comm),
            ProcCol::TwPerS => a.timewait_per_s.total_cmp(&b.timewait_per_s),
            ProcCol::TwTotal => a.timewait_entered.cmp(&b.timewait_entered),
            ProcCol::TwNow => a.timewait_now.cmp(&b.timewait_now),
            ProcCol::CwNow => a.close_wait_now.cmp(&b.close_wait_now),
            ProcCol::EstNow => a.established_now.cmp(&b.established_now),
            ProcCol::OpensPerS => a.opens_per_s.total_cmp(&b.opens_per_s),
            ProcCol::ClosesPerS => a.closes_per_s.total_cmp(&b.closes_per_s),
            ProcCol::Resets => a.resets.cmp(&b.resets),
            ProcCol::Failed => failed(a).cmp(&failed(b)),
        }
    }

    /// Names read best A to Z; counts biggest first.
    fn descending_by_default(self) -> bool {
        !matches!(self, ProcCol::Pid | ProcCol::Comm)
    }
}

/// What the FAILED column shows: failed connect() and bind() calls together (the drill-down
/// tells them apart).
pub(super) fn failed(p: &ProcessRow) -> u64 {
    p.connect_failures + p.bind_failures
}

/// Sortable columns of the peer table; the drill-down uses all but `Processes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCol {
    Peer,
    TwTotal,
    TwNow,
    CwNow,
    EstNow,
    /// How many processes talk to the peer.
    Processes,
}

impl PeerCol {
    pub const ALL: [PeerCol; 6] = [
        PeerCol::Peer,
        PeerCol::TwTotal,
        PeerCol::TwNow,
        PeerCol::CwNow,
        PeerCol::EstNow,
        PeerCol::Processes,
    ];
    pub const DRILL: [PeerCol; 5] = [
        PeerCol::Peer,
        PeerCol::TwTotal,
        PeerCol::TwNow,
        PeerCol::CwNow,
        PeerCol::EstNow,
    ];

    pub fn title(self) -> &'static str {
        match self {
            PeerCol::Peer => "PEER",
            PeerCol::TwTotal => "TW TOTAL",
            PeerCol::TwNow => "TW NOW",
            PeerCol::CwNow => "CW NOW",
            PeerCol::EstNow => "EST NOW",
            PeerCol::Processes => "PROCESSES",
        }
    }

    fn descending_by_default(self) -> bool {
        self != PeerCol::Peer
    }
}

/// A sort: a column index into the view's column list, and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub column: usize,
    pub descending: bool,
}

/// What a key asks for; [`App::apply`] carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    /// Into the selected process (from the peer view: the first process behind the peer).
    Drill,
    /// Out of a drill-down.
    Back,
    /// Processes <-> Peers.
    SwitchView,
    CycleSort,
    ReverseSort,
    /// Sort on the n-th column (0-based) of the current view; again on the same one reverses.
    SortBy(usize),
    FilterStart,
    FilterInput(char),
    FilterDelete,
    FilterAccept,
    /// Empties the filter and stops editing it.
    FilterClear,
    TogglePause,
    /// Shows or hides the CONTAINER column of the process view.
    ToggleContainers,
    ToggleHelp,
    CloseHelp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// Index of a view's sort, selection and scroll in the per-view arrays.
const PROCS: usize = 0;
const PEERS: usize = 1;
const DRILL: usize = 2;

/// The TUI's whole state.
#[derive(Debug)]
pub struct App {
    title: String,
    /// The newest snapshot received.
    live: Arc<Snapshot>,
    /// While paused, the snapshot that was current when pausing; it is the one shown.
    frozen: Option<Arc<Snapshot>>,
    source_ended: bool,
    top: Top,
    /// The pid drilled into, shown over `top`.
    drill: Option<u32>,
    sorts: [Sort; 3],
    selected: [usize; 3],
    /// First row shown per view. A `Cell` because only drawing knows how many rows fit: the
    /// renderer moves it just enough to keep the selection visible, as a list widget's state
    /// would.
    scroll: [Cell<usize>; 3],
    /// Rows that fit in the last frame, for PageUp / PageDown.
    page: Cell<usize>,
    filter: String,
    filter_lower: String,
    /// The filter as a number: then it means a pid or a port, exactly.
    filter_number: Option<u32>,
    editing_filter: bool,
    help: bool,
    /// The CONTAINER column is shown. Off at start: it costs up to 14 cells a narrow terminal needs.
    containers: bool,

    // Derived from the shown snapshot, the filter and the sorts (see `refresh`).
    /// Indices into `processes`, filtered and sorted.
    process_rows: Vec<usize>,
    /// Every (process index, peer index) of the snapshot, grouped by peer.
    members: Vec<(usize, usize)>,
    groups: Vec<PeerGroup>,
    /// Indices into `groups`, filtered and sorted.
    peer_rows: Vec<usize>,
    /// Index of the drilled-into process in the snapshot, if it is still there.
    drill_process: Option<usize>,
    /// Indices into that process's peers, filtered and sorted.
    drill_rows: Vec<usize>,
    /// Reused to format peer labels while filtering.
    scratch: String,
    /// The network namespace most processes share (see `rows::common_netns`).
    common_netns: u32,
    /// Reused to count rows per namespace.
    netns_counts: HashMap<u32, usize>,
}

/// Identity of the selected rows, kept across a refresh so the selection follows the same
/// process or peer when rows move.
#[derive(Default)]
struct Anchor {
    pid: Option<u32>,
    peer: Option<PeerKey>,
    drill_peer: Option<PeerKey>,
}

impl App {
    pub fn new(title: impl Into<String>, snapshot: Arc<Snapshot>) -> Self {
        let mut app = App {
            title: title.into(),
            live: snapshot,
            frozen: None,
            source_ended: false,
            top: Top::Processes,
            drill: None,
            sorts: [
                Sort {
                    column: 2, // TW/s: the model's own order, which stable sorting keeps for ties
                    descending: true,
                },
                Sort {
                    column: 1, // TW TOTAL: peers have no per-interval rate
                    descending: true,
                },
                Sort {
                    column: 1,
                    descending: true,
                },
            ],
            selected: [0; 3],
            scroll: Default::default(),
            page: Cell::new(10),
            filter: String::new(),
            filter_lower: String::new(),
            filter_number: None,
            editing_filter: false,
            help: false,
            containers: false,
            process_rows: Vec::new(),
            members: Vec::new(),
            groups: Vec::new(),
            peer_rows: Vec::new(),
            drill_process: None,
            drill_rows: Vec::new(),
            scratch: String::new(),
            common_netns: 0,
            netns_counts: HashMap::new(),
        };
        app.refresh(Anchor::default(), true);
        app
    }

    /// A new snapshot from the model. While paused it is kept but not shown.
    pub fn set_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        self.live = snapshot;
        if self.frozen.is_none() {
            let anchor = self.anchor();
            self.refresh(anchor, true);
        }
    }

    /// The model stopped sending (a replay ended, or tracing stopped): the last picture stays.
    pub fn set_source_ended(&mut self) {
        self.source_ended = true;
    }

    pub fn source_ended(&self) -> bool {
        self.source_ended
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    /// The snapshot on screen: the frozen one while paused, else the newest.
    pub fn snapshot(&self) -> &Snapshot {
        self.shown()
    }

    fn shown(&self) -> &Arc<Snapshot> {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    pub fn view(&self) -> View {
        match (self.drill, self.top) {
            (Some(pid), _) => View::Process(pid),
            (None, Top::Processes) => View::Processes,
            (None, Top::Peers) => View::Peers,
        }
    }

    fn slot(&self) -> usize {
        match self.view() {
            View::Processes => PROCS,
            View::Peers => PEERS,
            View::Process(_) => DRILL,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.frozen.is_some()
    }

    pub fn help_shown(&self) -> bool {
        self.help
    }

    pub fn containers_shown(&self) -> bool {
        self.containers
    }

    /// The network namespace most rows of the shown snapshot share, 0 when none is known: the
    /// CONTAINER column names any other.
    pub fn common_netns(&self) -> u32 {
        self.common_netns
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    pub fn editing_filter(&self) -> bool {
        self.editing_filter
    }

    /// Selected row of the current view, an index into its rows.
    pub fn selected(&self) -> usize {
        self.selected[self.slot()]
    }

    /// Rows of the current view.
    pub fn row_count(&self) -> usize {
        match self.view() {
            View::Processes => self.process_rows.len(),
            View::Peers => self.peer_rows.len(),
            View::Process(_) => self.drill_rows.len(),
        }
    }

    pub fn process_sort(&self) -> (ProcCol, bool) {
        let s = self.sorts[PROCS];
        (ProcCol::ALL[s.column], s.descending)
    }

    pub fn peer_sort(&self) -> (PeerCol, bool) {
        let s = self.sorts[PEERS];
        (PeerCol::ALL[s.column], s.descending)
    }

    pub fn drill_sort(&self) -> (PeerCol, bool) {
        let s = self.sorts[DRILL];
        (PeerCol::DRILL[s.column], s.descending)
    }

    /// Indices into the shown snapshot's `processes`, as listed.
    pub fn process_rows(&self) -> &[usize] {
        &self.process_rows
    }

    /// All peers grouped across processes, in no particular order; [`App::peer_rows`] lists them.
    pub fn groups(&self) -> &[PeerGroup] {
        &self.groups
    }

    /// Indices into [`App::groups`], as listed.
    pub fn peer_rows(&self) -> &[usize] {
        &self.peer_rows
    }

    /// The row naming a group's peer (address and ports; its counts are one process's).
    pub fn group_peer<'s>(&self, snap: &'s Snapshot, group: &PeerGroup) -> Option<&'s PeerRow> {
        let (p, r) = group.rep;
        snap.processes.get(p)?.peers.get(r)
    }

    /// The processes behind a group, biggest TIME_WAIT total first.
    pub fn group_processes<'s>(
        &'s self,
        snap: &'s Snapshot,
        group: &PeerGroup,
    ) -> impl Iterator<Item = &'s ProcessRow> + 's {
        self.members
            .get(group.members.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|&(p, _)| snap.processes.get(p))
    }

    /// Index of the drilled-into process in the shown snapshot; `None` when not drilled in or
    /// when the process has left the snapshot.
    pub fn drill_process(&self) -> Option<usize> {
        self.drill_process
    }

    /// Indices into the drilled-into process's `peers`, as listed.
    pub fn drill_rows(&self) -> &[usize] {
        &self.drill_rows
    }

    /// First row to draw for the current view when `visible` rows fit, moved just enough to
    /// keep the selection in sight. Drawing calls this; it remembers the answer for the next
    /// frame and for paging.
    pub fn scroll_offset(&self, visible: usize) -> usize {
        let slot = self.slot();
        let selected = self.selected[slot];
        let len = self.row_count();
        let mut offset = self.scroll[slot].get();
        if visible == 0 {
            return offset;
        }
        if selected < offset {
            offset = selected;
        } else if selected >= offset + visible {
            offset = selected + 1 - visible;
        }
        // No blank space under the last row while there are rows above the window.
        offset = offset.min(len.saturating_sub(visible));
        self.scroll[slot].set(offset);
        self.page.set(visible);
        offset
    }

    pub fn apply(&mut self, action: Action) -> Flow {
        let slot = self.slot();
        let len = self.row_count();
        let last = len.saturating_sub(1);
        let page = self.page.get().max(1);
        match action {
            Action::Quit => return Flow::Quit,
            Action::Up => self.selected[slot] = self.selected[slot].saturating_sub(1),
            Action::Down => self.selected[slot] = (self.selected[slot] + 1).min(last),
            Action::PageUp => self.selected[slot] = self.selected[slot].saturating_sub(page),
            Action::PageDown => self.selected[slot] = (self.selected[slot] + page).min(last),
            Action::Home => self.selected[slot] = 0,
            Action::End => self.selected[slot] = last,
            Action::Drill => self.drill_into_selected(),
            Action::Back => {
                if self.drill.take().is_some() {
                    self.drill_process = None;
                    self.drill_rows.clear();
                }
            }
            Action::SwitchView => {
                self.drill = None;
                self.top = match self.top {
                    Top::Processes => Top::Peers,
                    Top::Peers => Top::Processes,
                };
            }
            Action::CycleSort => {
                let n = self.column_count();
                let column = (self.sorts[slot].column + 1) % n;
                self.sort_on(slot, column);
            }
            Action::ReverseSort => {
                let anchor = self.anchor();
                self.sorts[slot].descending = !self.sorts[slot].descending;
                self.refresh(anchor, false);
            }
            Action::SortBy(column) => {
                if column < self.column_count() {
                    if self.sorts[slot].column == column {
                        return self.apply(Action::ReverseSort);
                    }
                    self.sort_on(slot, column);
                }
            }
            Action::FilterStart => self.editing_filter = true,
            Action::FilterInput(c) => {
                self.filter.push(c);
                self.filter_changed();
            }
            Action::FilterDelete => {
                if self.filter.pop().is_some() {
                    self.filter_changed();
                }
            }
            Action::FilterAccept => self.editing_filter = false,
            Action::FilterClear => {
                self.editing_filter = false;
                if !self.filter.is_empty() {
                    self.filter.clear();
                    self.filter_changed();
                }
            }
            Action::TogglePause => {
                if self.frozen.take().is_some() {
                    // Resume: jump to the newest snapshot.
                    let anchor = self.anchor();
                    self.refresh(anchor, true);
                } else {
                    self.frozen = Some(Arc::clone(&self.live));
                }
            }
            Action::ToggleContainers => self.containers = !self.containers,
            Action::ToggleHelp => self.help = !self.help,
            Action::CloseHelp => self.help = false,
        }
        Flow::Continue
    }

    fn column_count(&self) -> usize {
        match self.view() {
            View::Processes => ProcCol::ALL.len(),
            View::Peers => PeerCol::ALL.len(),
            View::Process(_) => PeerCol::DRILL.len(),
        }
    }

    fn sort_on(&mut self, slot: usize, column: usize) {
        let descending = match slot {
            PROCS => ProcCol::ALL[column].descending_by_default(),
            PEERS => PeerCol::ALL[column].descending_by_default(),
            _ => PeerCol::DRILL[column].descending_by_default(),
        };
        let anchor = self.anchor();
        self.sorts[slot] = Sort { column, descending };
        self.refresh(anchor, false);
    }

    fn drill_into_selected(&mut self) {
        let snap = Arc::clone(self.shown());
        let pid = match self.view() {
            View::Processes => self
                .process_rows
                .get(self.selected[PROCS])
                .and_then(|&i| snap.processes.get(i))
                .map(|p| p.pid),
            View::Peers => self
                .peer_rows
                .get(self.selected[PEERS])
                .and_then(|&g| self.groups.get(g))
                .and_then(|g| self.members.get(g.members.start))
                .and_then(|&(p, _)| snap.processes.get(p))
                .map(|p| p.pid),
            View::Process(_) => None,
        };
        if let Some(pid) = pid {
            self.drill = Some(pid);
            self.selected[DRILL] = 0;
            self.scroll[DRILL].set(0);
            self.refresh(Anchor::default(), false);
        }
    }

    fn filter_changed(&mut self) {
        self.filter_lower.clear();
        self.filter_lower
            .extend(self.filter.trim().chars().map(|c| c.to_ascii_lowercase()));
        self.filter_number = self.filter_lower.parse().ok();
        let anchor = self.anchor();
        self.refresh(anchor, false);
    }

    /// What is selected now, by identity, in the shown snapshot.
    fn anchor(&self) -> Anchor {
        let snap = self.shown();
        let key = |r: &PeerRow| r.peer;
        Anchor {
            pid: self
                .process_rows
                .get(self.selected[PROCS])
                .and_then(|&i| snap.processes.get(i))
                .map(|p| p.pid),
            peer: self
                .peer_rows
                .get(self.selected[PEERS])
                .and_then(|&g| self.groups.get(g))
                .and_then(|g| self.group_peer(snap, g))
                .map(key),
            drill_peer: self
                .drill_process
                .and_then(|p| snap.processes.get(p))
                .and_then(|p| {
                    let &r = self.drill_rows.get(self.selected[DRILL])?;
                    p.peers.get(r)
                })
                .map(key),
        }
    }

    /// Re-derives every view's rows from the shown snapshot, then puts the selection back on
    /// the anchored rows (or keeps its index, clamped, when they are gone).
    fn refresh(&mut self, anchor: Anchor, regroup: bool) {
        let snap = Arc::clone(self.shown());
        let mut scratch = std::mem::take(&mut self.scratch);
        let m = Matcher {
            lower: &self.filter_lower,
            number: self.filter_number,
        };
        let procs = &snap.processes;

        // Processes.
        self.process_rows.clear();
        self.process_rows
            .extend((0..procs.len()).filter(|&i| m.process(&procs[i], &mut scratch)));
        let sort = self.sorts[PROCS];
        let col = ProcCol::ALL[sort.column];
        self.process_rows
            .sort_by(|&a, &b| directed(col.cmp(&procs[a], &procs[b]), sort.descending));

        // Peers across processes.
        if regroup {
            build_groups(&snap, &mut self.members, &mut self.groups);
            self.common_netns = common_netns(procs, &mut self.netns_counts);
        }
        self.peer_rows.clear();
        for (gi, g) in self.groups.iter().enumerate() {
            let (p, r) = g.rep;
            let peer = &procs[p].peers[r];
            let keep = m.is_empty()
                || m.peer(peer, &mut scratch)
                || self.members[g.members.clone()]
                    .iter()
                    .any(|&(p, _)| m.owner(&procs[p]));
            if keep {
                self.peer_rows.push(gi);
            }
        }
        let sort = self.sorts[PEERS];
        let col = PeerCol::ALL[sort.column];
        let groups = &self.groups;
        self.peer_rows.sort_by(|&a, &b| {
            let (ga, gb) = (&groups[a], &groups[b]);
            let (pa, pb) = (
                &procs[ga.rep.0].peers[ga.rep.1],
                &procs[gb.rep.0].peers[gb.rep.1],
            );
            other_last(pa, pb).then_with(|| {
                let o = match col {
                    PeerCol::Peer => peer_order(pa, pb),
                    PeerCol::TwTotal => ga.timewait_entered.cmp(&gb.timewait_entered),
                    PeerCol::TwNow => ga.timewait_now.cmp(&gb.timewait_now),
                    PeerCol::CwNow => ga.close_wait_now.cmp(&gb.close_wait_now),
                    PeerCol::EstNow => ga.established_now.cmp(&gb.established_now),
                    PeerCol::Processes => ga.members.len().cmp(&gb.members.len()),
                };
                directed(o, sort.descending)
            })
        });

        // Drill-down.
        self.drill_rows.clear();
        self.drill_process = self
            .drill
            .and_then(|pid| procs.iter().position(|p| p.pid == pid));
        if let Some(p) = self.drill_process.map(|i| &procs[i]) {
            // A filter that names the process itself shows all of it; else only matching peers.
            let all = m.is_empty() || m.owner(p);
            self.drill_rows
                .extend((0..p.peers.len()).filter(|&r| all || m.peer(&p.peers[r], &mut scratch)));
            let sort = self.sorts[DRILL];
            let col = PeerCol::DRILL[sort.column];
            self.drill_rows.sort_by(|&a, &b| {
                let (pa, pb) = (&p.peers[a], &p.peers[b]);
                other_last(pa, pb).then_with(|| directed(peer_cmp(col, pa, pb), sort.descending))
            });
        }
        self.scratch = scratch;

        // Selection follows the anchored rows.
        let pos = anchor
            .pid
            .and_then(|pid| self.process_rows.iter().position(|&i| procs[i].pid == pid));
        self.selected[PROCS] = settle(self.selected[PROCS], pos, self.process_rows.len());
        let pos = anchor.peer.and_then(|k| {
            self.peer_rows.iter().position(|&g| {
                let (p, r) = self.groups[g].rep;
                procs[p].peers[r].peer == k
            })
        });
        self.selected[PEERS] = settle(self.selected[PEERS], pos, self.peer_rows.len());
        let pos = anchor.drill_peer.and_then(|k| {
            let p = &procs[self.drill_process?];
            self.drill_rows.iter().position(|&r| p.peers[r].peer == k)
        });
        self.selected[DRILL] = settle(self.selected[DRILL], pos, self.drill_rows.len());
    }
}

fn peer_cmp(col: PeerCol, a: &PeerRow, b: &PeerRow) -> Ordering {
    match col {
        PeerCol::Peer => peer_order(a, b),
        PeerCol::TwTotal => a.timewait_entered.cmp(&b.timewait_entered),
        PeerCol::TwNow => a.timewait_now.cmp(&b.timewait_now),
        PeerCol::CwNow => a.close_wait_now.cmp(&b.close_wait_now),
        PeerCol::EstNow => a.established_now.cmp(&b.established_now),
        PeerCol::Processes => Ordering::Equal,
    }
}
