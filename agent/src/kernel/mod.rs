//! Everything that needs privileges: the kernel program and its loading ([`tracer`]), tracefs,
//! the capability check, the kernel's socket table ([`sockdiag`]) and other processes' /proc
//! entries ([`procnet`]), and what `twtrace doctor` reads: settings ([`sysctl`]), counters
//! ([`netstat`]) and open files ([`nofile`]). Nothing outside this folder, `crate::source::live`
//! and `crate::doctor` touches them.

pub mod btf;
pub mod netns;
pub mod netstat;
pub mod nofile;
pub mod privilege;
pub mod procnet;
pub mod progstats;
pub mod sockdiag;
pub mod sysctl;
pub mod tracefs;
pub mod tracer;
