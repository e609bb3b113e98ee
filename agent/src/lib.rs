//! twtrace: which process, talking to which peer, is churning or leaking TCP connections.
//!
//! One stream, many views. Items flow one way:
//!
//! ```text
//! source (live kernel | recording) -> pipeline -> model -> sinks (trace, table/JSON, TUI,
//!                                                   recorder, flight recorder, report, exporter)
//! ```
//!
//! [`source`] yields [`stream::Item`]s; [`pipeline`] runs the one loop, feeds the [`model`] (plain
//! logic, no I/O) and hands items and snapshots to every [`sink`]. [`kernel`] holds the only code
//! that needs privileges; [`recording`] the file format. [`run`] wires commands to these parts.

pub mod cli;
pub mod clock;
pub mod container;
pub mod diagnosis;
pub mod distfiles;
pub mod doctor;
pub mod event;
pub mod infer;
pub mod kernel;
pub mod model;
pub mod pipeline;
pub mod recording;
pub mod run;
pub mod sink;
pub mod source;
pub mod state;
pub mod stream;
pub mod text;
