//! Drawing. Pure: reads the [`App`] and the snapshot it was derived from, writes the frame,
//! nothing else (the one exception is the scroll position, see [`App::scroll_offset`]).
//!
//! Only the rows that fit are turned into table rows, so 5,000 processes cost what 50 do.
//! Narrow terminals drop the least useful columns first and shrink the text ones; nothing here
//! may panic on a tiny terminal.
//!
//! Names (comms, and the title, which holds a recording's host name) are drawn [`escape`]d:
//! ratatui drops control characters, which would leave a name that looks like another
//! (`\x1b[2J` shown as `[2J`), and a newline would split a cell. Widths are measured on the
//! escaped text, which is what is drawn. The filter is shown as typed: keys give no control
//! characters, and it is matched against the names as they are.

use std::fmt::Write as _;

use jiff::Timestamp;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize as _};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table};

use super::app::{App, PeerCol, PeerGroup, ProcCol, View, failed};
use super::input::HELP;
use super::layout::*;
use super::rows::container_label;
use crate::container::short_id;
use crate::diagnosis::short_age;
use crate::{
    model::snapshot::{BEFORE_START, ProcessRow, Snapshot},
    sink::ports,
    text::escape,
};

/// Spaces between header items.
const GAP: u16 = 2;

pub fn render(frame: &mut Frame, app: &App, snap: &Snapshot) {
    let area = frame.area();
    if area.is_empty() {
        return;
    }
    // Tiny terminals keep one header line and the footer, and give the rest to the table.
    let header_h = if area.height >= 8 { 2 } else { 1 };
    let footer_h = u16::from(area.height >= 3);
    // A destination running out of local ports gets a line of its own, when there is room.
    let warning = ports::warning(snap).filter(|_| area.height >= 10);
    let [header, warn, body, footer] = Layout::vertical([
        Constraint::Length(header_h),
        Constraint::Length(u16::from(warning.is_some())),
        Constraint::Fill(1),
        Constraint::Length(footer_h),
    ])
    .areas(area);

    render_header(frame, header, app, snap);
    if let Some((text, critical)) = warning {
        let style = if critical {
            Style::new().white().on_red().bold()
        } else {
            Style::new().black().on_yellow().bold()
        };
        frame.render_widget(Paragraph::new(format!(" ⚠ {text} ")).style(style), warn);
    }
    match app.view() {
        View::Processes => render_processes(frame, body, app, snap),
        View::Peers => render_peers(frame, body, app, snap),
        View::Process(pid) => render_drill(frame, body, app, snap, pid),
    }
    render_footer(frame, footer, app);
    if app.help_shown() {
        render_help(frame, area);
    }
}

// ---- header ------------------------------------------------------------------------------

fn render_header(frame: &mut Frame, area: Rect, app: &App, snap: &Snapshot) {
    let t = &snap.totals;
    let mut items: Vec<Line> = Vec::with_capacity(12);
    items.push(Line::from(Span::from(escape(app.title())).bold()));
    if app.is_paused() {
        items.push(Line::from(" PAUSED ".black().on_yellow().bold()));
    }
    if app.source_ended() {
        items.push(Line::from(" ENDED ".black().on_gray().bold()));
    }
    // Lost events make every number below an undercount: say so before them.
    let lost = item("events lost", snap.lost_events.to_string());
    let lost = if snap.lost_events > 0 {
        lost.red().bold()
    } else {
        lost
    };
    if snap.lost_events > 0 {
        items.push(lost.clone());
    }
    let mut kernel = match t.timewait_kernel {
        Some(k) => k.to_string(),
        None => "n/a".to_owned(),
    };
    if let Some(n) = t.namespaces {
        kernel.push_str(&format!(" in {n} netns"));
    }
    // The kernel's `tw` counts both substates: the orphaned FIN_WAIT2 ones are shown beside
    // TIME_WAIT so the two add up to it.
    let mut tw = item("TIME_WAIT now", t.timewait_now.to_string());
    tw.spans.push(Span::from(" +").dim());
    tw.spans
        .push(Span::from(t.fin_wait2_now.to_string()).bold());
    tw.spans
        .push(Span::from(" orphaned FIN_WAIT2, kernel tw ").dim());
    tw.spans.push(Span::from(kernel).bold());
    items.push(tw);
    items.push(item("TW/s", format!("{:.1}", t.timewait_per_s)));
    items.push(item("CLOSE_WAIT now", t.close_wait_now.to_string()));
    items.push(item("ESTABLISHED now", t.established_now.to_string()));
    items.push(item("TW total", t.timewait_entered.to_string()));
    // Failed connect()/bind() calls: the symptom of exhausted ports, in red, when any.
    for (label, n) in [
        ("connect() failed", t.connect_failures),
        ("bind() failed", t.bind_failures),
    ] {
        if n > 0 {
            items.push(item(label, n.to_string()).red().bold());
        }
    }
    if snap.lost_events == 0 {
        items.push(lost);
    }
    items.push(item("unattributed", snap.unattributed_events.to_string()));
    items.push(item("up", duration(snap.uptime_s)));
    // The placeholder before the first snapshot has no time (the epoch).
    if snap.time != Timestamp::UNIX_EPOCH {
        // The time of day is what changes; the date is noise on a live screen.
        items.push(item(
            "at",
            format!("{} UTC", snap.time.strftime("%H:%M:%S")),
        ));
    }
    flow(frame, area, &items);
}

fn item(label: impl Into<std::borrow::Cow<'static, str>>, value: String) -> Line<'static> {
    Line::from(vec![
        Span::from(label.into()).dim(),
        Span::from(" "),
        Span::from(value).bold(),
    ])
}

/// Lays items out left to right, wrapping between items (never inside one), in order of
/// importance: what does not fit in the area is left out, and an item wider than the area is
/// cut.
fn flow(frame: &mut Frame, area: Rect, items: &[Line]) {
    let buf = frame.buffer_mut();
    for ((x, y), it) in flow_places(items, area.width).zip(items) {
        if y >= area.height {
            break;
        }
        buf.set_line(area.x + x, area.y + y, it, area.width - x);
    }
}

/// Lines [`flow`] needs to show all of `items` in `width` cells.
fn flow_height(items: &[Line], width: u16) -> u16 {
    flow_places(items, width).last().map_or(0, |(_, y)| y + 1)
}

/// Where [`flow`] puts each item: (column, line) from the area's corner, the column always
/// within `width`.
fn flow_places<'a>(items: &'a [Line], width: u16) -> impl Iterator<Item = (u16, u16)> + 'a {
    let (mut x, mut y) = (0u16, 0u16);
    items.iter().map(move |it| {
        let w = u16::try_from(it.width()).unwrap_or(u16::MAX);
        if x > 0 && x.saturating_add(GAP).saturating_add(w) > width {
            y = y.saturating_add(1);
            x = 0;
        }
        let start = if x > 0 { x + GAP } else { 0 };
        x = start.saturating_add(w).min(width);
        (start, y)
    })
}

fn duration(secs: f64) -> String {
    // `as` saturates for floats: negative or NaN become 0.
    let s = secs as u64;
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

// ---- processes ---------------------------------------------------------------------------

fn render_processes(frame: &mut Frame, area: Rect, app: &App, snap: &Snapshot) {
    if area.is_empty() {
        return;
    }
    let rows = app.process_rows();
    let (sort_col, descending) = app.process_sort();
    let (cap, table) = split_caption(area);
    caption(
        frame,
        cap,
        app,
        rows.len(),
        snap.processes.len(),
        &sort_name(sort_col.title(), descending),
    );
    if rows.is_empty() {
        let text = if snap.processes.is_empty() {
            "No TCP activity yet: waiting for connections to open, close or enter TIME_WAIT."
                .to_owned()
        } else {
            format!("No process matches the filter “{}”.", app.filter())
        };
        message(frame, table, text);
        return;
    }
    let sorted = process_display_col(
        ProcCol::ALL
            .iter()
            .position(|&c| c == sort_col)
            .unwrap_or(0),
    );
    let visible = usize::from(table.height.saturating_sub(1));
    let offset = app.scroll_offset(visible);
    let window = || {
        rows.iter()
            .skip(offset)
            .take(visible)
            .filter_map(|&i| snap.processes.get(i))
    };
    let mut cols = PROCESS_COLS;
    cols[1].width = text_width(window().map(|p| escape(&p.comm)), cols[1].min, MAX_COMM);
    let common = app.common_netns();
    let container = &mut cols[CONTAINER_COL];
    if app.containers_shown() {
        // As wide as what is on screen, never cut: a cut id would name another container.
        container.width = text_width(
            window().map(|p| escape(&container_label(p, common)).into_owned()),
            container.min,
            MAX_CONTAINER,
        );
        container.min = container.width;
    } else {
        container.width = 0;
        container.min = 0;
    }
    // FAILED only when some process failed a call: on most hosts nobody does.
    if !snap.processes.iter().any(|p| failed(p) > 0) {
        cols[FAILED_COL].width = 0;
        cols[FAILED_COL].min = 0;
    }
    // Only when a row on screen has a command line: replays have none.
    if !window().any(|p| p.cmdline.is_some()) {
        cols[COMMAND_COL].width = 0;
        cols[COMMAND_COL].min = 0;
    }
    let w = widths(&cols, table.width, sorted);
    let selected = app.selected();
    let body = rows
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .filter_map(|(n, &i)| Some((n, snap.processes.get(i)?)))
        .map(|(n, p)| {
            let row = Row::new(
                (0..cols.len())
                    .filter(|&c| w[c] > 0)
                    .map(|c| process_cell(p, c, w[c], common)),
            );
            let row = row_style(
                row,
                n == selected,
                p.pid == 0 && p.comm == BEFORE_START,
                p.leak_suspect,
            );
            // An exited process keeps its row while its counts matter; dimmed, and its name
            // says so.
            if p.exited { row.dim() } else { row }
        });
    let t = Table::new(body, constraints(&w))
        .header(header_row(&cols, &w, sorted, descending))
        .column_spacing(1);
    frame.render_widget(t, table);
}

fn row_style(row: Row<'_>, selected: bool, before_start: bool, suspect: bool) -> Row<'_> {
    let mut style = Style::new();
    if suspect {
        // Holds CLOSE_WAIT sockets older than the leak threshold (`twtrace leaks` explains).
        style = style.fg(Color::Red).bold();
    }
    if before_start {
        // Not an owner: a bucket of sockets older than twtrace. Shown, but set apart.
        style = style.italic().fg(Color::Magenta);
    }
    if selected {
        style = style.reversed();
    }
    row.style(style)
}

/// Column `c` of [`PROCESS_COLS`] for `p`; `common` is the namespace most rows share.
fn process_cell(p: &ProcessRow, c: usize, width: u16, common: u32) -> Cell<'_> {
    match c {
        0 if p.pid == 0 => Cell::from(Line::from("-").right_aligned()),
        0 => num(u64::from(p.pid)),
        1 if p.exited => {
            Cell::from(fit(&format!("{} (exited)", escape(&p.comm)), width).into_owned())
        }
        1 => Cell::from(fit_name(&p.comm, width)),
        // Ids are hex as parsed from the cgroup path, but the row's fields are anyone's to fill.
        CONTAINER_COL => Cell::from(fit_name(&container_label(p, common), width).into_owned()),
        3 => rate(p.timewait_per_s),
        4 => num(p.timewait_entered),
        5 => num(p.timewait_now),
        6 => num(p.close_wait_now),
        7 => num(p.established_now),
        8 => rate(p.opens_per_s),
        9 => rate(p.closes_per_s),
        10 => num(p.resets),
        FAILED_COL => num(failed(p)),
        CW_AGE_COL => Cell::from(
            Line::from(short_age(
                p.close_wait_oldest_s,
                p.close_wait_oldest_at_least,
            ))
            .right_aligned(),
        ),
        COMMAND_COL => {
            Cell::from(fit(&escape(p.cmdline.as_deref().unwrap_or("-")), width).into_owned())
        }
        _ => match p.peers.first() {
            Some(r) => Cell::from(fit(&peer_label(r), width).into_owned()),
            None => Cell::from("-"),
        },
    }
}

// ---- peers -------------------------------------------------------------------------------

fn render_peers(frame: &mut Frame, area: Rect, app: &App, snap: &Snapshot) {
    if area.is_empty() {
        return;
    }
    let rows = app.peer_rows();
    let (sort_col, descending) = app.peer_sort();
    let (cap, table) = split_caption(area);
    caption(
        frame,
        cap,
        app,
        rows.len(),
        app.groups().len(),
        &sort_name(sort_col.title(), descending),
    );
    if rows.is_empty() {
        let text = if app.groups().is_empty() {
            "No peers yet: no process has had a TCP connection since twtrace started.".to_owned()
        } else {
            format!("No peer matches the filter “{}”.", app.filter())
        };
        message(frame, table, text);
        return;
    }
    let sorted = PeerCol::ALL
        .iter()
        .position(|&c| c == sort_col)
        .unwrap_or(0);
    peer_table(
        frame,
        table,
        app,
        PEER_COLS,
        (sorted, descending),
        rows,
        |g| app.groups().get(g),
        |g| app.group_peer(snap, g).map_or(0, label_width),
        |g, c, width| group_cell(app, snap, g, c, width),
    );
}

/// A table whose first column is a peer label sized to the labels on screen; `get` resolves a
/// row index, `label` measures a row's label, `cell` draws column `c` of a row.
#[allow(clippy::too_many_arguments)]
fn peer_table<T, const N: usize>(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    mut cols: [Col; N],
    (sorted, descending): (usize, bool),
    rows: &[usize],
    get: impl Fn(usize) -> Option<T>,
    label: impl Fn(T) -> u16,
    cell: impl Fn(T, usize, u16) -> Cell<'static>,
) where
    T: Copy,
{
    let visible = usize::from(area.height.saturating_sub(1));
    let offset = app.scroll_offset(visible);
    cols[0].width = rows
        .iter()
        .skip(offset)
        .take(visible)
        .filter_map(|&i| get(i))
        .map(&label)
        .max()
        .unwrap_or(0)
        .clamp(cols[0].min, MAX_PEER);
    let w = widths(&cols, area.width, sorted);
    let selected = app.selected();
    let body = rows
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .filter_map(|(n, &i)| Some((n, get(i)?)))
        .map(|(n, t)| {
            let row = Row::new((0..N).filter(|&c| w[c] > 0).map(|c| cell(t, c, w[c])));
            row_style(row, n == selected, false, false)
        });
    let t = Table::new(body, constraints(&w))
        .header(header_row(&cols, &w, sorted, descending))
        .column_spacing(1);
    frame.render_widget(t, area);
}

fn group_cell(app: &App, snap: &Snapshot, g: &PeerGroup, c: usize, width: u16) -> Cell<'static> {
    match c {
        0 => match app.group_peer(snap, g) {
            Some(r) => Cell::from(fit(&peer_label(r), width).into_owned()),
            None => Cell::from("?"),
        },
        1 => num(g.timewait_entered),
        2 => num(g.timewait_now),
        3 => num(g.close_wait_now),
        4 => num(g.established_now),
        _ => Cell::from(process_list(app, snap, g, width)),
    }
}

/// "java 4242, curl 99 +3": as many processes as fit, biggest contributor first.
fn process_list(app: &App, snap: &Snapshot, g: &PeerGroup, width: u16) -> String {
    let width = usize::from(width);
    let total = g.process_count();
    let mut out = String::new();
    let mut item = String::new();
    for (n, p) in app.group_processes(snap, g).enumerate() {
        item.clear();
        if n > 0 {
            item.push_str(", ");
        }
        if p.pid == 0 {
            item.push_str(&escape(&p.comm));
        } else {
            let _ = write!(item, "{} {}", escape(&p.comm), p.pid);
        }
        let rest = total.saturating_sub(n + 1);
        // Room for " +N" when processes remain after this one.
        let reserve = if rest > 0 { 2 + digits(rest) } else { 0 };
        if out.chars().count() + item.chars().count() + reserve > width && n > 0 {
            let _ = write!(out, " +{}", total.saturating_sub(n));
            return out;
        }
        out.push_str(&item);
    }
    out
}

fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

// ---- drill-down --------------------------------------------------------------------------

/// One history of the drill-down: a caption over a sparkline.
fn sparkline(
    frame: &mut Frame,
    (cap, spark): (Rect, Rect),
    what: &str,
    hist: &[u64],
    color: Color,
) {
    // The newest values matter most: when the history is wider than the area, drop the
    // oldest rather than let the widget cut off the newest.
    let data = &hist[hist.len().saturating_sub(usize::from(spark.width))..];
    let text = match (data.iter().max(), data.last()) {
        (Some(peak), Some(now)) => format!("{what}, last minute: peak {peak}, latest {now}"),
        _ => format!("{what}, last minute: no history yet"),
    };
    frame.render_widget(Line::from(text).dim(), cap);
    frame.render_widget(
        Sparkline::default()
            .data(data)
            .style(Style::new().fg(color))
            .block(
                Block::new()
                    .borders(Borders::BOTTOM)
                    .border_style(Style::new().dim()),
            ),
        spark,
    );
}

fn render_drill(frame: &mut Frame, area: Rect, app: &App, snap: &Snapshot, pid: u32) {
    if area.is_empty() {
        return;
    }
    let Some(p) = app.drill_process().and_then(|i| snap.processes.get(i)) else {
        message(
            frame,
            area,
            format!("pid {pid} is no longer in the snapshot (it has no sockets left). Esc: back."),
        );
        return;
    };
    // The history needs a few lines to mean anything; small terminals keep the table.
    let spark_h = match area.height {
        h if h >= 18 => 5,
        h if h >= 10 => 3,
        _ => 0,
    };
    let summary_h = if area.height >= 10 { 2 } else { 1 };
    // Where the process runs, on lines of its own: a 64-hex id does not share a line well.
    let place = placement(p, area.width);
    let place_h = match area.height {
        h if h >= 14 => 3,
        h if h >= 8 => 1,
        _ => 0,
    };
    let place_h = flow_height(&place, area.width).min(place_h);
    let [summary, place_area, cap, spark, rest] = Layout::vertical([
        Constraint::Length(summary_h),
        Constraint::Length(place_h),
        Constraint::Length(u16::from(spark_h > 0)),
        Constraint::Length(spark_h),
        Constraint::Fill(1),
    ])
    .areas(area);

    let title = if p.pid == 0 {
        Line::from(vec![
            Span::from(escape(&p.comm)).bold().magenta(),
            Span::from(" sockets older than twtrace, owner unknown").dim(),
        ])
    } else {
        Line::from(vec![
            Span::from(escape(&p.comm)).bold(),
            Span::from(format!(" pid {}", p.pid)),
        ])
    };
    let items = [
        title,
        item("TW/s", format!("{:.1}", p.timewait_per_s)),
        item("TW total", p.timewait_entered.to_string()),
        item("TW now", p.timewait_now.to_string()),
        item(
            "orphaned FIN_WAIT2 now",
            format!("{} ({} total)", p.fin_wait2_now, p.fin_wait2_entered),
        ),
        item("CW now", p.close_wait_now.to_string()),
        item("CW peak", p.close_wait_peak.to_string()),
        item(
            "CW oldest",
            format!(
                "{}{}",
                short_age(p.close_wait_oldest_s, p.close_wait_oldest_at_least),
                if p.leak_suspect {
                    " (leak suspect)"
                } else {
                    ""
                }
            ),
        ),
        item(
            "CW growth",
            format!("{:+}/min", p.close_wait_growth_per_min),
        ),
        item("EST now", p.established_now.to_string()),
        item("opens", format!("{} ({:.1}/s)", p.opens, p.opens_per_s)),
        item("closes", format!("{} ({:.1}/s)", p.closes, p.closes_per_s)),
        item("resets", p.resets.to_string()),
    ];
    let mut items = items.to_vec();
    // Failed calls, by call and errno, when there are any.
    for f in &p.failures {
        items.push(item(
            format!("{}() {}", f.call.name(), f.errno.name()),
            f.count.to_string(),
        ));
    }
    flow(frame, summary, &items);
    flow(frame, place_area, &place);

    if spark_h > 0 {
        // Side by side: what the process churns (TIME_WAIT entered) and what it holds
        // (CLOSE_WAIT now), so a leak shows beside the churn.
        let [tw_cap, _, cw_cap] = Layout::horizontal([
            Constraint::Fill(1),
            Constraint::Length(1),
            Constraint::Fill(1),
        ])
        .areas(cap);
        let [tw_spark, _, cw_spark] = Layout::horizontal([
            Constraint::Fill(1),
            Constraint::Length(1),
            Constraint::Fill(1),
        ])
        .areas(spark);
        let tw = ("TIME_WAIT entered/s", &p.timewait_history, Color::Yellow);
        let cw = ("CLOSE_WAIT now", &p.close_wait_history, Color::Red);
        for ((what, hist, color), cap, spark) in [(tw, tw_cap, tw_spark), (cw, cw_cap, cw_spark)] {
            sparkline(frame, (cap, spark), what, hist, color);
        }
    }

    let rows = app.drill_rows();
    let (sort_col, descending) = app.drill_sort();
    let (cap, table) = split_caption(rest);
    let mut line = format!("Peers of {}", escape(&p.comm));
    let _ = write!(
        line,
        "  {} of {}  sort {}",
        rows.len(),
        p.peers.len(),
        sort_name(sort_col.title(), descending)
    );
    if !app.filter().is_empty() {
        let _ = write!(line, "  filter “{}”", app.filter());
    }
    frame.render_widget(Line::from(line).dim(), cap);
    if rows.is_empty() {
        let text = if p.peers.is_empty() {
            "No peers recorded for this process.".to_owned()
        } else {
            format!("No peer matches the filter “{}”.", app.filter())
        };
        message(frame, table, text);
        return;
    }
    let sorted = PeerCol::DRILL
        .iter()
        .position(|&c| c == sort_col)
        .unwrap_or(0);
    let cols: [Col; PeerCol::DRILL.len()] = std::array::from_fn(|i| PEER_COLS[i]);
    peer_table(
        frame,
        table,
        app,
        cols,
        (sorted, descending),
        rows,
        |r| p.peers.get(r),
        label_width,
        |r, c, width| match c {
            0 => Cell::from(fit(&peer_label(r), width).into_owned()),
            1 => num(r.timewait_entered),
            2 => num(r.timewait_now),
            3 => num(r.close_wait_now),
            _ => num(r.established_now),
        },
    );
}

/// What is known of what `p` is and where it runs, most telling first: its command line, its
/// container (full id, or the short one when the full one would not fit in `width`), the
/// runtime, the pod, the network namespace. Empty when nothing is.
fn placement(p: &ProcessRow, width: u16) -> Vec<Line<'static>> {
    let mut items = Vec::new();
    // What tells three `python3` apart; cut at the area's edge when longer.
    if let Some(cmdline) = &p.cmdline {
        items.push(item("cmd", escape(cmdline).into_owned()));
    }
    // Hex, UUIDs and runtime names as parsed from cgroup paths; escaped all the same, as the
    // row's fields are anyone's to fill.
    if let Some(id) = &p.container {
        let full = item("container", escape(id).into_owned());
        // A cut id looks whole and names nothing; the short one is what `docker ps` shows.
        let short = || item("container", escape(short_id(id)).into_owned());
        items.push(if full.width() <= usize::from(width) {
            full
        } else {
            short()
        });
    }
    if let Some(runtime) = p.runtime {
        items.push(item("runtime", escape(runtime).into_owned()));
    }
    if let Some(uid) = &p.pod_uid {
        items.push(item("pod", escape(uid).into_owned()));
    }
    if p.netns != 0 {
        items.push(item("netns", p.netns.to_string()));
    }
    items
}

// ---- footer and help ---------------------------------------------------------------------

fn render_footer(frame: &mut Frame, area: Rect, app: &App) {
    if area.is_empty() {
        return;
    }
    if app.editing_filter() {
        let line = Line::from(vec![
            Span::from("/").bold(),
            Span::from(app.filter()).yellow(),
            Span::from("█"),
            Span::from(
                "  Enter keep  Esc clear  (comm, command, pid, port, address, container or netns)",
            )
            .dim(),
        ]);
        frame.render_widget(line, area);
        return;
    }
    let keys: &[(&str, &str)] = match app.view() {
        View::Processes => &[
            ("q", "quit"),
            ("↑↓", "move"),
            ("Enter", "drill"),
            ("Tab", "peers"),
            ("s/S", "sort"),
            ("/", "filter"),
            ("space", "pause"),
            ("?", "help"),
            // Last: the line is cut at 80 columns, and the keys above matter more.
            ("c", "container"),
        ],
        View::Peers => &[
            ("q", "quit"),
            ("↑↓", "move"),
            ("Enter", "its process"),
            ("Tab", "processes"),
            ("s/S", "sort"),
            ("/", "filter"),
            ("space", "pause"),
            ("?", "help"),
        ],
        View::Process(_) => &[
            ("Esc", "back"),
            ("↑↓", "move"),
            ("s/S", "sort"),
            ("/", "filter"),
            ("space", "pause"),
            ("?", "help"),
            ("q", "quit"),
        ],
    };
    let mut spans = Vec::with_capacity(keys.len() * 3);
    for (k, what) in keys {
        spans.push(Span::from(*k).bold());
        spans.push(Span::from(" "));
        spans.push(Span::from(format!("{what}  ")).dim());
    }
    frame.render_widget(Line::from(spans), area);
}

const LEGEND: &[&str] = &[
    "TW TIME_WAIT, CW CLOSE_WAIT, EST ESTABLISHED. TOTAL: since start;",
    "NOW: alive now; /s: over the last interval. kernel: tw in /proc/net/sockstat.",
    "(before start): sockets older than twtrace, owner unknown.",
    "Many TW/s toward one peer: connection churn (no pooling/keep-alive).",
    "CW NOW growing: the process does not close() sockets the peer closed.",
    "CONTAINER (c): short id; if none, ns:INODE when the process's network",
    "namespace is not the one most rows share (a pod of an unknown runtime).",
];

fn render_help(frame: &mut Frame, area: Rect) {
    let height = u16::try_from(HELP.len() + LEGEND.len() + 3).unwrap_or(u16::MAX);
    let popup = area.centered(
        Constraint::Length(area.width.min(84)),
        Constraint::Length(area.height.min(height)),
    );
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::from(format!("{k:<20}")).bold(),
                Span::from(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.extend(LEGEND.iter().map(|l| Line::from(*l).dim()));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys (? or Esc closes) ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    use super::*;
    use crate::model::snapshot::{PeerKey, PeerRow};
    use crate::sink::tui::handle;

    const HOSTILE: &str = "\x1b[2J\x1b[H\nFAKE\r";

    /// Every cell of the screen, one string per line.
    fn draw(app: &App, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
        terminal
            .draw(|f| render(f, app, app.snapshot()))
            .expect("draw");
        let buf = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buf[(x, y)].symbol()).collect())
            .collect()
    }

    fn hostile_app() -> App {
        let row = ProcessRow {
            pid: 42,
            comm: HOSTILE.into(),
            timewait_entered: 3,
            peers: vec![PeerRow {
                timewait_entered: 3,
                ..PeerRow::new(PeerKey::Out {
                    raddr: "10.0.0.1".parse().expect("addr"),
                    rport: 80,
                })
            }],
            ..ProcessRow::default()
        };
        let snap = Snapshot {
            processes: vec![row],
            ..Snapshot::default()
        };
        App::new(
            format!("twtrace replay of x.twr ({HOSTILE})"),
            Arc::new(snap),
        )
    }

    fn press(app: &mut App, code: KeyCode) {
        handle(app, KeyEvent::new(code, KeyModifiers::NONE));
    }

    /// The processes, the peers and the drill-down each show the name escaped, never a control
    /// character nor what ratatui leaves of the name when it drops them.
    #[test]
    fn hostile_names_are_drawn_escaped_in_every_view() {
        let esc = r"\x1b[2J\x1b[H\nFAKE\r";
        let mut app = hostile_app();
        let mut screens = Vec::new();
        screens.push(("processes", draw(&app, 160, 12)));
        press(&mut app, KeyCode::Tab);
        screens.push(("peers", draw(&app, 160, 12)));
        press(&mut app, KeyCode::Tab);
        press(&mut app, KeyCode::Enter);
        screens.push(("drill-down", draw(&app, 160, 20)));
        for (view, lines) in &screens {
            let screen = lines.join("\n");
            assert!(
                !lines.iter().any(|l| l.contains(char::is_control)),
                "{view}:\n{screen}"
            );
            // The title.
            assert!(lines[0].contains(&format!("({esc})")), "{view}:\n{screen}");
            // Never the name with its control characters dropped.
            assert!(!screen.contains("[2J[H"), "{view}:\n{screen}");
        }
        let has = |view: usize, needle: &str| screens[view].1.iter().any(|l| l.contains(needle));
        // The COMM column is 15 cells at most: cut with an ellipsis, like any long name.
        assert!(has(0, r"     42 \x1b[2J\x1b[H\… "), "{:#?}", screens[0].1);
        assert!(has(1, &format!("{esc} 42")), "{:#?}", screens[1].1);
        assert!(has(2, &format!("{esc} pid 42")), "{:#?}", screens[2].1);
        assert!(has(2, &format!("Peers of {esc}")), "{:#?}", screens[2].1);
    }

    /// The command line: in a COMMAND column when the terminal is wide enough for it after
    /// every other column, and in the drill-down; escaped in both.
    #[test]
    fn command_lines_when_wide_enough_and_in_the_drill_down() {
        let mut app = hostile_app();
        let mut snap = app.snapshot().clone();
        snap.processes[0].cmdline = Some(format!("python3 /srv/worker.py --name {HOSTILE}"));
        app.set_snapshot(Arc::new(snap));
        let shown = r"python3 /srv/worker.py --name \x1b[2J\x1b[H\nFAKE\r";
        let narrow = draw(&app, 120, 12).join("\n");
        assert!(!narrow.contains("COMMAND"), "{narrow}");
        let wide = draw(&app, 200, 12);
        let screen = wide.join("\n");
        assert!(
            !wide.iter().any(|l| l.contains(char::is_control)),
            "{screen}"
        );
        let title = wide
            .iter()
            .find(|l| l.contains("TOP PEER"))
            .expect("header");
        let at = title.find("COMMAND").expect("COMMAND column");
        let row = wide
            .iter()
            .find(|l| l.contains("10.0.0.1:80"))
            .expect("row");
        assert_eq!(row.get(at..at + shown.len()), Some(shown), "{screen}");

        press(&mut app, KeyCode::Enter);
        let drill = draw(&app, 160, 20).join("\n");
        assert!(drill.contains(&format!("cmd {shown}")), "{drill}");

        // A replay has none: no column, however wide.
        let replay = hostile_app();
        assert!(!draw(&replay, 250, 12).join("\n").contains("COMMAND"));
    }

    #[test]
    fn a_destination_running_out_of_ports_gets_a_warning_line() {
        use crate::{event::Comm, kernel::sysctl::PortRange, model::ports};
        let dest = |share: f64| ports::Destination {
            netns: 0,
            laddr: "10.0.0.1".parse().expect("addr"),
            raddr: "10.0.0.5".parse().expect("addr"),
            rport: 8080,
            in_use: 280,
            timewait: 279,
            share: Some(share),
            timewait_reusable: false,
            opens_per_s: 0.0,
            exhaustion_eta_s: None,
            connect_failures: 0,
            range: PortRange::parse("40000 40299", ""),
            tcp_tw_reuse: Some(0),
            tcp_timestamps: Some(1),
            pids: vec![ports::PidOpens {
                pid: 42,
                comm: Comm::from(HOSTILE),
                opens: 280,
            }],
            other_pids_opens: 0,
        };
        let app = |share: f64| {
            let mut snap = hostile_app().snapshot().clone();
            snap.destinations = vec![dest(share)];
            App::new("twtrace", Arc::new(snap))
        };
        let lines = draw(&app(0.933), 200, 12);
        assert!(
            lines[2].contains(
                r"local ports toward 10.0.0.5:8080 (from 10.0.0.1) 93.3% used (280 of 300, 279 in TIME_WAIT); top opener 42 \x1b[2J\x1b[H\nFAKE\r"
            ),
            "{lines:#?}"
        );
        assert!(!lines.iter().any(|l| l.contains(char::is_control)));
        let quiet = draw(&app(0.4), 200, 12);
        assert!(!quiet.join("\n").contains("local ports"), "{quiet:#?}");
        // Too short a terminal keeps its lines for the table.
        assert!(!draw(&app(0.933), 200, 9).join("\n").contains("local ports"));
    }
}
