//! twtrace: which process, talking to which peer, is churning or leaking TCP connections.
//!
//! Data flows one way: kernel program -> ring buffer -> [`tracer`] -> [`event::Transition`] ->
//! views ([`trace`]). Everything but `tracer` and `tracefs` is plain logic, tested without root.

pub mod cli;
pub mod clock;
pub mod event;
pub mod infer;
pub mod leaderboard;
pub mod model;
pub mod privilege;
pub mod procnet;
pub mod record;
pub mod run;
pub mod snapshot;
pub mod sockdiag;
pub mod state;
pub mod trace;
pub mod tracefs;
pub mod tracer;
pub mod tui;
