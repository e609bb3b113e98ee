//! A recording played back as a stream: at its recorded pace scaled by `--speed`, or as fast
//! as it can be read, optionally limited to a time window.

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use super::Source;
use crate::{
    clock::WallClock,
    recording::{Header, Reader},
    stream::{Flow, Item},
};

/// Items handed over per `pump` at most when nothing makes it wait, so signals and the terminal
/// view are polled between batches.
const BATCH: usize = 4096;

/// Which stretch of a recording to play: monotonic ns bounds, inclusive. Playing from `since`
/// is as if twtrace had been started then.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

pub struct Recording {
    reader: Reader<BufReader<File>>,
    path: PathBuf,
    header: Header,
    window: Window,
    /// Replay speed; 0: as fast as possible.
    speed: f64,
    started: tokio::time::Instant,
    /// The first item's time in the window, where pacing counts from.
    first_ns: Option<u64>,
    last_ns: Option<u64>,
    warnings: Vec<String>,
    ended: bool,
}

impl Recording {
    pub fn open(path: &Path, window: Window, speed: f64) -> anyhow::Result<Self> {
        let reader = Reader::open(path)?;
        let header = reader.header().clone();
        Ok(Self {
            reader,
            path: path.to_owned(),
            header,
            window,
            speed,
            started: tokio::time::Instant::now(),
            first_ns: None,
            last_ns: None,
            warnings: Vec::new(),
            ended: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next item inside the window; None at the end of the file or of the window.
    fn next_in_window(&mut self) -> anyhow::Result<Option<Item>> {
        loop {
            let next = self
                .reader
                .next_record()
                .with_context(|| format!("reading {}", self.path.display()));
            for p in self.reader.take_problems() {
                self.warnings
                    .push(format!("warning: {}: {p}", self.path.display()));
            }
            let Some(item) = next? else {
                if self.reader.records_read() == 0
                    && let Some(p) = self.reader.problems().first()
                {
                    anyhow::bail!("{}: nothing could be read: {p}", self.path.display());
                }
                return Ok(None);
            };
            let ns = item.mono_ns();
            if self.window.since_ns.is_some_and(|s| ns < s) {
                continue;
            }
            if self.window.until_ns.is_some_and(|u| ns > u) {
                return Ok(None);
            }
            return Ok(Some(item));
        }
    }

    /// Hands `item` over; ends the stream at an end mark.
    fn hand(&mut self, item: Item, f: &mut dyn FnMut(Item) -> Flow) -> Flow {
        let ns = item.mono_ns();
        self.first_ns.get_or_insert(ns);
        self.last_ns = Some(self.last_ns.map_or(ns, |l| l.max(ns)));
        if matches!(item, Item::End { .. }) {
            self.ended = true;
        }
        let flow = f(item);
        if self.ended { Flow::Stop } else { flow }
    }

    /// The end of the file or window without an end mark (a killed recorder, or a window):
    /// the stream still ends, at the last item's time.
    fn end(&mut self, f: &mut dyn FnMut(Item) -> Flow) {
        if !self.ended {
            self.ended = true;
            let mono_ns = self.last_ns.unwrap_or(self.header.start_mono_ns);
            f(Item::End { mono_ns });
        }
    }
}

impl Source for Recording {
    async fn pump(&mut self, f: &mut dyn FnMut(Item) -> Flow) -> anyhow::Result<bool> {
        for _ in 0..BATCH {
            if self.ended {
                return Ok(false);
            }
            let Some(item) = self.next_in_window()? else {
                self.end(f);
                return Ok(false);
            };
            // Snapshots are taken at stats items: waiting before each one until its recorded
            // moment (scaled) paces every view, and the events in between flow at once.
            let pace = matches!(item, Item::Stats(_)) && self.speed > 0.0;
            if pace {
                let offset = item
                    .mono_ns()
                    .saturating_sub(*self.first_ns.get_or_insert(item.mono_ns()));
                let due = self.started + Duration::from_secs_f64(offset as f64 / 1e9 / self.speed);
                if due > tokio::time::Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
            }
            if self.hand(item, f) == Flow::Stop {
                if self.ended {
                    return Ok(false);
                }
                return Ok(true);
            }
            if pace {
                // Let the views show what this stats item made.
                return Ok(true);
            }
        }
        Ok(true)
    }

    fn stop(&mut self, f: &mut dyn FnMut(Item) -> Flow) {
        self.end(f);
    }

    fn start_ns(&self) -> u64 {
        self.window.since_ns.unwrap_or(self.header.start_mono_ns)
    }

    fn clock(&self) -> WallClock {
        self.header.clock()
    }

    fn problems(&self) -> Vec<String> {
        self.reader
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}
