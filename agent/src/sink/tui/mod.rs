//! The interactive leaderboard: which process, talking to which peer, churns TIME_WAIT or
//! leaks CLOSE_WAIT, live.
//!
//! `app` holds the state (no I/O), `input` maps keys to actions (pure), `ui` draws (pure);
//! this file owns the terminal and the event loop. It only renders what the model sends:
//! snapshots arrive on a `watch` channel, so a slow terminal never holds the model back, it
//! just skips to the newest one.

mod app;
mod input;
mod layout;
mod rows;
#[cfg(test)]
mod tests;
mod ui;

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use ratatui::crossterm::event::{Event, EventStream};
use tokio::sync::watch;

pub use app::{Action, App, Flow, PeerCol, PeerGroup, ProcCol, View};
pub use input::{action, handle};
pub use ui::render;

use super::{End, Sink};
use crate::model::snapshot::Snapshot;

/// The sink side of the terminal view: hands each snapshot over a `watch` channel to the view
/// (a future the pipeline polls beside its loop). Ending the stream drops the sender, which the
/// view shows as ENDED.
pub struct TuiSink {
    tx: Option<watch::Sender<Arc<Snapshot>>>,
}

impl TuiSink {
    /// The sink and the view it feeds, titled `title`.
    pub fn new(title: String) -> (Self, super::View<'static>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        (Self { tx: Some(tx) }, Box::pin(run(rx, title)))
    }
}

impl Sink for TuiSink {
    fn wants_snapshots(&self) -> bool {
        true
    }

    fn wants_first_frame(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        if let Some(tx) = &self.tx {
            // No receiver means the view has quit already; the pipeline hears it from the view.
            let _ = tx.send(Arc::clone(snap));
        }
        Ok(())
    }

    fn end(&mut self, _end: &End) -> anyhow::Result<()> {
        self.tx = None;
        Ok(())
    }
}

/// Runs the leaderboard until the user quits (q, Esc at the top, Ctrl-C).
///
/// Takes over the terminal (alternate screen, raw mode) and gives it back on every way out:
/// return, error, panic, and this future being dropped (e.g. by a `select!` with a signal).
/// Redraws when a snapshot arrives or a key is pressed. When the sender goes away the last
/// picture stays, marked ENDED, until the user quits.
///
/// Raw mode means Ctrl-C reaches this loop as a key, not as SIGINT. Anything written to
/// stdout or stderr while this runs lands on the screen: keep logs quiet or in a file.
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    title: String,
) -> anyhow::Result<()> {
    let first = Arc::clone(&snapshots.borrow_and_update());
    let mut app = App::new(title, first);

    // Before the terminal is touched, so a half-done init is undone too.
    let _restore = RestoreGuard;
    // `try_init` rather than `init`: a terminal we cannot take over is an error to report, not
    // a panic. Like `init`, it installs a panic hook that restores the terminal and then calls
    // the previous hook, so a panic message is printed on a sane screen.
    let mut terminal = ratatui::try_init().context("cannot take over the terminal")?;
    let plain = no_color();
    let mut events = EventStream::new();
    let mut source_open = true;

    loop {
        terminal
            .draw(|frame| {
                render(frame, &app, app.snapshot());
                if plain {
                    strip_colors(frame.buffer_mut());
                }
            })
            .context("cannot draw to the terminal")?;
        tokio::select! {
            changed = snapshots.changed(), if source_open => match changed {
                Ok(()) => {
                    let snap = Arc::clone(&snapshots.borrow_and_update());
                    app.set_snapshot(snap);
                }
                Err(_) => {
                    source_open = false;
                    app.set_source_ended();
                }
            },
            event = events.next() => match event {
                Some(Ok(Event::Key(key))) => {
                    if handle(&mut app, key) == Flow::Quit {
                        return Ok(());
                    }
                }
                // A resize or anything else: the redraw at the top of the loop is all it needs.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("cannot read the terminal"),
                // No more input can ever arrive (the terminal is gone): nobody is watching.
                None => return Ok(()),
            },
        }
    }
}

/// Whether the user asked for no colour: `NO_COLOR` set and not empty (no-color.org).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Takes the colours out of a drawn frame and keeps the rest: bold, italic, reversed and dim
/// still mark what colour marked (a leaking row is bold, the selection reversed), so the view
/// says the same without colour. Done on the finished frame, so no widget needs to know.
pub fn strip_colors(buf: &mut ratatui::buffer::Buffer) {
    use ratatui::style::Color;
    for cell in &mut buf.content {
        cell.fg = Color::Reset;
        cell.bg = Color::Reset;
    }
}

/// Gives the terminal back when dropped, whichever way `run` ends.
struct RestoreGuard;

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}
