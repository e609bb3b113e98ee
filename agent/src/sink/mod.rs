//! Where the stream goes. Every view is a [`Sink`]: the pipeline hands each one the same items,
//! and the model's snapshots to those that want them. A new output (an exporter) is one more
//! sink and nothing else.

pub mod detached;
pub mod leaks;
pub mod ports;
pub mod recorder;
pub mod report;
pub mod ring;
pub mod serve;
pub mod table;
pub mod trace;
pub mod trigger;
pub mod tui;

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{
    event::Transition,
    model::snapshot::Snapshot,
    stream::{KernelTruth, Stats, Tally},
};

/// A full-screen view that runs beside the pipeline's loop and ends it when the user quits.
pub type View<'v> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'v>>;

/// How the stream ended, for the sinks' last words.
#[derive(Clone, Debug)]
pub struct End {
    /// The end's monotonic time.
    pub mono_ns: u64,
    /// The first and last items' times (the span the stream covered), if any came.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    pub tally: Tally,
    /// The last snapshot taken, if any sink wanted snapshots.
    pub snapshot: Option<Arc<Snapshot>>,
    /// What the source found wrong with its input (damage in a recording).
    pub problems: Vec<String>,
}

/// A consumer of the stream. Every method has a default that ignores its item.
///
/// Errors stop the pipeline: it still ends the stream (so a recording gets its end mark where
/// possible) and prints the summary, then reports the first error.
pub trait Sink {
    /// Whether this sink needs the model's snapshots; the model runs only if one does.
    fn wants_snapshots(&self) -> bool {
        false
    }

    /// Whether this sink also wants a first picture right after the first look at the kernel's
    /// socket table, before the first interval is up: the terminal view does, so it opens on
    /// the sockets that already exist (hundreds of TIME_WAIT) rather than on zeros for a
    /// second. That picture is not counted as one of `--count`'s and goes to no other sink.
    fn wants_first_frame(&self) -> bool {
        false
    }

    /// Whether this sink needs the model even without snapshots: a recorder needs the owners
    /// the model asks /proc for at each kernel dump, so a replay can attribute the sockets that
    /// existed before the start.
    fn wants_model(&self) -> bool {
        self.wants_snapshots()
    }

    /// Whether this sink wants events as the kernel sent them rather than as shown (with an
    /// exited owner's sockets given to the process holding them now): recorders do, so the
    /// recording stays what the kernel said and a replay derives the same answer again.
    fn raw_events(&self) -> bool {
        false
    }

    fn event(&mut self, _t: &Transition) -> anyhow::Result<()> {
        Ok(())
    }

    /// A dump of the kernel's socket table, with the owners the model asked for.
    fn kernel(&mut self, _k: &KernelTruth) -> anyhow::Result<()> {
        Ok(())
    }

    /// The tracer's counters (about once a second); `tally` is the run's so far.
    fn stats(&mut self, _s: &Stats, _tally: &Tally) -> anyhow::Result<()> {
        Ok(())
    }

    fn snapshot(&mut self, _snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        Ok(())
    }

    /// After each batch of items: the moment to flush output, so pipes see events as they
    /// come without a write per event.
    fn batch_done(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// A reason to stop the stream that this sink has reached (`--max-size`).
    fn stop_reason(&self) -> Option<String> {
        None
    }

    /// SIGUSR1 (the flight recorder's capture on demand), at `now_ns`.
    fn user_signal(&mut self, _now_ns: u64) -> anyhow::Result<()> {
        Ok(())
    }

    /// The stream has ended (after its last item).
    fn end(&mut self, _end: &End) -> anyhow::Result<()> {
        Ok(())
    }
}
