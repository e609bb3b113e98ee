//! Column layout and the small drawing helpers every view shares: which columns fit a
//! terminal's width, fitting text into a cell, peer labels, captions.

use std::borrow::Cow;
use std::fmt::Write as _;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize as _};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row};

use super::app::{App, View};
use crate::{model::snapshot::PeerRow, text::escape};

// ---- column layout -----------------------------------------------------------------------

/// A table column: preferred and minimum width, and its rank when space runs out (0 = kept
/// longest). A `fill` column takes what is left.
#[derive(Clone, Copy)]
pub(super) struct Col {
    pub(super) title: &'static str,
    pub(super) width: u16,
    pub(super) min: u16,
    pub(super) prio: u8,
    right: bool,
    pub(super) fill: bool,
}

pub(super) const fn col(title: &'static str, width: u16, prio: u8) -> Col {
    Col {
        title,
        width,
        min: width,
        prio,
        right: true,
        fill: false,
    }
}

pub(super) const fn text_col(
    title: &'static str,
    width: u16,
    min: u16,
    prio: u8,
    fill: bool,
) -> Col {
    Col {
        title,
        width,
        min,
        prio,
        right: false,
        fill,
    }
}

// Linux comms are at most 15 bytes (TASK_COMM_LEN 16 with the NUL, include/linux/sched.h).
pub(super) const MAX_COMM: u16 = 15;
/// "[ffff:...:ffff]:65535".
pub(super) const MAX_PEER: u16 = 47;

/// "ns:4026532001": the widest the CONTAINER column gets (a short container id is 12).
pub(super) const MAX_CONTAINER: u16 = 13;

/// Where CONTAINER sits in [`PROCESS_COLS`]. It is not sortable: the digit keys pick the other
/// columns, so they mean the same column whether it is shown or not.
pub(super) const CONTAINER_COL: usize = 2;

/// Where FAILED sits in [`PROCESS_COLS`]: shown only when a process has failed calls.
pub(super) const FAILED_COL: usize = 11;

/// Where CW AGE sits in [`PROCESS_COLS`]: after the sortable columns, as it is not one.
pub(super) const CW_AGE_COL: usize = 12;

/// Where COMMAND sits in [`PROCESS_COLS`]: last, not sortable either.
pub(super) const COMMAND_COL: usize = 14;

/// Display order: `ProcCol::ALL` with CONTAINER after COMM, then CW AGE, TOP PEER and COMMAND.
/// Text columns get their preferred width from what they show. CONTAINER, shown only when asked
/// for, ranks with PID: whoever turns it on wants it more than the counts after TW NOW. FAILED,
/// shown only when some process has failed connect()/bind() calls, ranks after TW NOW: failures
/// are the symptom the user came for. COMMAND (the command line, when one is known) ranks last
/// and takes what is left, so it appears only on a terminal wide enough for everything else.
pub(super) const PROCESS_COLS: [Col; 15] = [
    col("PID", 7, 2),
    text_col("COMM", MAX_COMM, 6, 1, false),
    // Its minimum is the title's width; drawing sets both from what is on screen.
    text_col("CONTAINER", MAX_CONTAINER, 9, 2, false),
    col("TW/s", 8, 0),
    col("TW TOTAL", 9, 5),
    col("TW NOW", 7, 3),
    col("CW NOW", 7, 4),
    col("EST NOW", 8, 6),
    col("OPEN/s", 8, 9),
    col("CLOSE/s", 8, 10),
    col("RESETS", 7, 8),
    col("FAILED", 7, 3),
    // The oldest CLOSE_WAIT's age; not sortable (the digit keys pick the columns of
    // `ProcCol::ALL`, and it is none of them). Leak suspects' rows are red as well.
    col("CW AGE", 7, 11),
    text_col("TOP PEER", 24, 12, 7, true),
    text_col("COMMAND", 40, 20, 13, true),
];

/// Display order, as `PeerCol::ALL`; the drill-down uses the first five.
pub(super) const PEER_COLS: [Col; 6] = [
    text_col("PEER", MAX_PEER, 10, 0, false),
    col("TW TOTAL", 9, 1),
    col("TW NOW", 7, 2),
    col("CW NOW", 7, 3),
    col("EST NOW", 8, 5),
    text_col("PROCESSES", 30, 10, 4, true),
];

/// The [`PROCESS_COLS`] index of `ProcCol::ALL[sort]`.
pub(super) fn process_display_col(sort: usize) -> usize {
    if sort < CONTAINER_COL { sort } else { sort + 1 }
}

/// Width of each column in `avail` cells (0: left out; a column whose preferred width is 0 is
/// always left out, which is how a hidden one is asked for). Columns are placed in order of
/// importance, each at its preferred width if that fits, else at its minimum (a fill column at
/// its minimum); what is left then widens the shrunk ones up to their preferred width, in the
/// same order, and the rest goes to the least important fill column shown. The sorted column
/// is ranked right after the most important one, so the reason for the order stays in view.
pub(super) fn widths<const N: usize>(cols: &[Col; N], avail: u16, sorted: usize) -> [u16; N] {
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    order.sort_by_key(|&i| {
        if i == sorted {
            (cols[i].prio.min(1), 0)
        } else {
            (cols[i].prio, 1)
        }
    });
    let mut w = [0u16; N];
    let mut used: u16 = 0;
    for &i in &order {
        let sep = u16::from(used > 0);
        let c = &cols[i];
        if c.width == 0 {
            continue;
        }
        let want = if c.fill { c.min } else { c.width.max(c.min) };
        for width in [want, c.min] {
            if used.saturating_add(sep).saturating_add(width) <= avail {
                w[i] = width;
                used += sep + width;
                break;
            }
        }
    }
    let mut extra = avail.saturating_sub(used);
    for &i in &order {
        if w[i] > 0 {
            let grow = cols[i].width.saturating_sub(w[i]).min(extra);
            w[i] += grow;
            extra -= grow;
        }
    }
    if let Some(&i) = order.iter().rev().find(|&&i| w[i] > 0 && cols[i].fill) {
        w[i] += extra;
    }
    w
}

/// The width text needs, between a column's minimum and `cap`.
pub(super) fn text_width<S: AsRef<str>>(texts: impl Iterator<Item = S>, min: u16, cap: u16) -> u16 {
    let widest = texts.map(|t| t.as_ref().chars().count()).max().unwrap_or(0);
    u16::try_from(widest).unwrap_or(u16::MAX).clamp(min, cap)
}

pub(super) fn header_row<'a>(
    cols: &'a [Col],
    w: &[u16],
    sorted: usize,
    descending: bool,
) -> Row<'a> {
    let cells = cols.iter().zip(w).enumerate().filter(|(_, (_, w))| **w > 0);
    Row::new(cells.map(|(i, (c, _))| {
        let mut line = Line::from(c.title);
        if i == sorted {
            line.spans
                .push(Span::from(if descending { "▼" } else { "▲" }));
            line = line.fg(Color::Yellow);
        }
        if c.right {
            line = line.right_aligned();
        }
        Cell::from(line)
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
}

pub(super) fn constraints(w: &[u16]) -> impl Iterator<Item = Constraint> + '_ {
    w.iter().filter(|&&w| w > 0).map(|&w| Constraint::Length(w))
}

pub(super) fn num(v: u64) -> Cell<'static> {
    Cell::from(Line::from(v.to_string()).right_aligned())
}

pub(super) fn rate(v: f64) -> Cell<'static> {
    Cell::from(Line::from(format!("{v:.1}")).right_aligned())
}

/// `s` cut to `width` cells with an ellipsis; borrowed when it fits.
pub(super) fn fit(s: &str, width: u16) -> Cow<'_, str> {
    let width = usize::from(width);
    if s.chars().count() <= width {
        return Cow::Borrowed(s);
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    if width > 0 {
        out.push('…');
    }
    Cow::Owned(out)
}

/// A name [`escape`]d, then [`fit`] to `width` cells.
pub(super) fn fit_name(s: &str, width: u16) -> Cow<'_, str> {
    match escape(s) {
        Cow::Borrowed(b) => fit(b, width),
        Cow::Owned(o) => Cow::Owned(fit(&o, width).into_owned()),
    }
}

/// Cells a peer label takes, without building it.
pub(super) fn label_width(r: &PeerRow) -> u16 {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.chars().count();
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = write!(n, "{:#}", r.peer);
    u16::try_from(n.0).unwrap_or(u16::MAX)
}

pub(super) fn peer_label(r: &PeerRow) -> String {
    let mut s = String::with_capacity(24);
    // Writing to a String cannot fail.
    let _ = write!(s, "{:#}", r.peer);
    s
}

/// The caption over a table: which list, how many rows, sort and filter.
pub(super) fn caption(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    shown: usize,
    total: usize,
    sort: &str,
) {
    let tab = |name: &'static str, on: bool| {
        let s = Span::from(name);
        if on { s.reversed().bold() } else { s.dim() }
    };
    let view = app.view();
    let mut spans = vec![
        tab(" Processes ", view == View::Processes),
        Span::from(" "),
        tab(" Peers ", view == View::Peers),
        Span::from(format!("  {shown} of {total}  sort {sort}")).dim(),
    ];
    if !app.filter().is_empty() {
        spans.push(Span::from("  filter ").dim());
        spans.push(Span::from(app.filter()).yellow());
    }
    frame.render_widget(Line::from(spans), area);
}

pub(super) fn message(frame: &mut Frame, area: Rect, text: String) {
    frame.render_widget(Paragraph::new(text).dim(), area);
}

/// Splits a body into a caption line and the table under it.
pub(super) fn split_caption(area: Rect) -> (Rect, Rect) {
    let [cap, table] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    (cap, table)
}

pub(super) fn sort_name(title: &str, descending: bool) -> String {
    format!("{title} {}", if descending { "▼" } else { "▲" })
}
