//! Harness for twtrace's privileged integration tests.
//!
//! The tests run the real `twtrace` binary (its eBPF program loaded into the running kernel) and
//! drive real loopback TCP traffic with `tcpdrive` child processes whose pids and comm names are
//! known, then check exact numbers in twtrace's JSON Lines output. Nothing is mocked, so they need
//! root; without it they skip loudly.
//!
//! Every wait has a timeout, and every child process is killed when its guard is dropped, so a
//! failing or panicking test never leaves a tracer or a driver behind.

pub mod cgroup;
pub mod child;
pub mod live;
pub mod netns;
pub mod record;
pub mod staged;

mod drive;
mod events;
mod proc;
mod runner;

pub use drive::*;
pub use events::*;
pub use proc::*;
pub use runner::*;

use std::time::Duration;

/// How long twtrace may take to load and attach before the test gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a driver may run. 3000 loopback connections take about a second.
pub const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long twtrace may take to drain and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between the traffic ending and SIGTERM, so the last softirq-driven transitions (the
/// final TIME_WAIT entries) have been submitted before twtrace drains.
pub const SETTLE: Duration = Duration::from_millis(300);

pub const TIME_WAIT: &str = "TIME_WAIT";
pub const CLOSE_WAIT: &str = "CLOSE_WAIT";
