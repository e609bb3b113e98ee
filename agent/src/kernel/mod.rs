//! Everything that needs privileges: the kernel program and its loading ([`tracer`]), tracefs,
//! the capability check, the kernel's socket table ([`sockdiag`]) and other processes' /proc
//! entries ([`procnet`]). Nothing outside this folder and `crate::source::live` touches them.

pub mod btf;
pub mod netns;
pub mod privilege;
pub mod procnet;
pub mod progstats;
pub mod sockdiag;
pub mod sysctl;
pub mod tracefs;
pub mod tracer;
