//! Output written by a thread of its own, for views that print a whole picture at a time.
//!
//! The pipeline's loop also drains the kernel's ring buffers. A leaderboard printing into a pipe
//! whose reader stopped reading (`| less` left on one page, a stalled log shipper) used to block
//! that loop in `write`: at four churn generators the rings then overflowed, and one 8 s run
//! into `| sleep 25` lost 1,339,707 of 2,324,198 events (0 of 3,595,941 with this). Here the loop only hands each finished picture to a queue
//! and goes on; a writer thread blocks instead. A picture is whole on its own (every snapshot
//! repeats the totals), so when the reader falls behind by more than the queue holds the oldest
//! waiting pictures are dropped, counted, and the newest still go out once the reader is back.
//! The event stream (`trace`) does not use this: dropping part of it would lose events.

use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::{self, JoinHandle},
};

/// Pictures waiting for the reader, at most. A snapshot is a few kilobytes to a few hundred
/// (the JSON of a busy host); at one per second this is more than the pipe's own buffer
/// holds, and bounds the memory a reader that never reads can cost.
pub const QUEUE: usize = 16;

/// A [`Write`] whose `flush` hands what was written since the last one to a writer thread as
/// one piece, without waiting for it to be written. `finish` waits for the rest.
pub struct Detached {
    buf: Vec<u8>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    cap: usize,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    pieces: VecDeque<Vec<u8>>,
    /// No more pieces will come: the writer ends once the queue is empty.
    closed: bool,
    /// Pieces dropped because the queue was full.
    dropped: u64,
    /// The writer's error; it writes nothing more after one.
    failed: Option<io::Error>,
}

impl Shared {
    /// The queue, also after a panic elsewhere: its fields stay consistent between statements
    /// (a piece is in the queue or written), so a poisoned lock is still a usable one.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Detached {
    /// Writes to `inner` from a new thread, keeping at most `cap` (at least 1) pieces waiting.
    pub fn new<W: Write + Send + 'static>(inner: W, cap: usize) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("twtrace-output".into())
            .spawn(move || write_pieces(inner, &theirs))?;
        Ok(Self {
            buf: Vec::new(),
            shared,
            thread: Some(thread),
            cap: cap.max(1),
        })
    }

    /// Sends what is buffered, waits until every piece is written (or writing failed), and
    /// returns how many pieces were dropped along the way. Like any writer to a pipe, this
    /// waits for a reader that is slow; it never returns early while the reader reads.
    pub fn finish(&mut self) -> io::Result<u64> {
        let sent = self.flush();
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // The writer does not panic (no indexing, no unwrap); if it did, what it had not
            // written is lost, and said so below as a failure.
            if thread.join().is_err() {
                return Err(io::Error::other("the output thread failed"));
            }
        }
        sent?;
        let mut q = self.shared.lock();
        match q.failed.take() {
            Some(e) => Err(e),
            None => Ok(q.dropped),
        }
    }
}

impl Write for Detached {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Queues the buffered bytes as one piece, dropping the oldest waiting piece when `cap`
    /// are waiting. Fails with the writer's error once it had one (a reader that went away
    /// gives `BrokenPipe`, which ends a pipeline quietly).
    fn flush(&mut self) -> io::Result<()> {
        let mut q = self.shared.lock();
        if let Some(e) = &q.failed {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        if q.pieces.len() >= self.cap {
            q.pieces.pop_front();
            q.dropped += 1;
        }
        q.pieces.push_back(std::mem::take(&mut self.buf));
        drop(q);
        self.shared.changed.notify_all();
        Ok(())
    }
}

impl Drop for Detached {
    /// Lets the writer end without waiting for it: `finish` is where output is waited for.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

/// The writer thread: each piece in order, flushed, until the queue is closed and empty or a
/// write fails.
fn write_pieces<W: Write>(mut inner: W, shared: &Shared) {
    loop {
        let piece = {
            let mut q = shared.lock();
            loop {
                if let Some(piece) = q.pieces.pop_front() {
                    break piece;
                }
                if q.closed {
                    return;
                }
                q = shared
                    .changed
                    .wait(q)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        if let Err(e) = inner.write_all(&piece).and_then(|()| inner.flush()) {
            shared.lock().failed = Some(e);
            return;
        }
    }
}

/// Ends a view's output: waits for it to be written, and says on stderr how many of its
/// pictures (`what`, singular) the reader was too slow for.
pub fn finish(out: &mut Detached, what: &str) -> anyhow::Result<()> {
    let dropped = out.finish()?;
    if dropped > 0 {
        let (s, they) = if dropped == 1 {
            ("", "it")
        } else {
            ("s", "they")
        };
        let _ = writeln!(
            io::stderr(),
            "twtrace: {dropped} {what}{s} not printed: standard output was not read fast \
             enough; counting went on, and each later {what} includes what {they} had"
        );
    }
    Ok(())
}

/// Standard output, written by its own thread (see the module's comment).
pub fn stdout() -> io::Result<Detached> {
    Detached::new(io::stdout(), QUEUE)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{self, Receiver, Sender};

    use super::*;

    /// A writer that collects what it is given, and blocks in its first write until `release`
    /// says so (after telling `entered`).
    struct Gated {
        out: Arc<Mutex<Vec<u8>>>,
        entered: Option<Sender<()>>,
        release: Option<Receiver<()>>,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if let Some(entered) = self.entered.take() {
                entered.send(()).expect("test waits");
            }
            if let Some(release) = self.release.take() {
                let _ = release.recv();
            }
            self.out.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn piece(d: &mut Detached, text: &str) {
        d.write_all(text.as_bytes()).expect("write");
        d.flush().expect("flush");
    }

    #[test]
    fn pieces_come_out_whole_and_in_order() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let gated = Gated {
            out: Arc::clone(&out),
            entered: None,
            release: None,
        };
        let mut d = Detached::new(gated, 4).expect("thread");
        for i in 0..100 {
            write!(d, "line {i}").expect("write");
            d.write_all(b"\n").expect("write");
            d.flush().expect("flush");
            // Flushing nothing queues nothing.
            d.flush().expect("flush");
        }
        // Less than a piece: `finish` sends it too.
        d.write_all(b"tail").expect("write");
        // The writer keeps up or not; either way every piece is out or counted.
        let dropped = d.finish().expect("finish");
        let text = String::from_utf8(out.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64 + dropped, 101, "{text}");
        assert_eq!(lines.last(), Some(&"tail"));
        let numbers: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    }

    #[test]
    fn a_reader_that_stops_costs_the_oldest_waiting_pieces_not_the_caller() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let gated = Gated {
            out: Arc::clone(&out),
            entered: Some(entered_tx),
            release: Some(release_rx),
        };
        let mut d = Detached::new(gated, 3).expect("thread");
        piece(&mut d, "0\n");
        // The writer holds piece 0 and blocks: the reader stopped reading.
        entered.recv().expect("writer started");
        // None of these wait for it; 1 and 2 are pushed out by 4 and 5.
        for i in 1..=5 {
            piece(&mut d, &format!("{i}\n"));
        }
        release.send(()).expect("writer waits");
        assert_eq!(d.finish().expect("finish"), 2);
        assert_eq!(*out.lock().expect("lock"), b"0\n3\n4\n5\n");
    }

    /// A writer whose reader went away.
    struct Gone;

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writers_error_reaches_the_caller() {
        let mut d = Detached::new(Gone, 4).expect("thread");
        piece(&mut d, "x\n");
        let e = d.finish().expect_err("the write failed");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        // Later flushes say so too, so the pipeline stops at its next picture.
        let mut d = Detached::new(Gone, 4).expect("thread");
        piece(&mut d, "x\n");
        let failed = (0..1000).find_map(|_| {
            thread::sleep(std::time::Duration::from_millis(5));
            d.write_all(b"y\n").expect("write");
            d.flush().err()
        });
        assert_eq!(failed.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
    }
}
