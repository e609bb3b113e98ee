//! What the kernel counts about a loaded program that aya 0.14 does not expose: how often it was
//! skipped.
//!
//! The kernel does not run a tracepoint program while another BPF program runs on the same CPU
//! (a softirq interrupting one, for example). It counts each skip in the program's
//! `recursion_misses` (`bpf_prog_info`, Linux 5.12+, kernel/trace/bpf_trace.c and
//! kernel/bpf/syscall.c), and nothing reaches the ring buffer: without this counter those events
//! are lost silently. `bpftool prog show` prints the same number.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

/// The program's `recursion_misses` since it was loaded.
pub fn recursion_misses(prog: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(prog_info(prog)?.recursion_misses)
}

/// Opens the loaded program with this id (as `bpftool prog show id N` does; needs
/// CAP_SYS_ADMIN). For checks from outside the process that loaded it.
pub fn program_by_id(id: u32) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_attr is valid and what the kernel expects in unused fields.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    // SAFETY: BPF_PROG_GET_FD_BY_ID reads `attr` (size given) and returns a new fd or -1.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_GET_FD_BY_ID as libc::c_long,
            std::ptr::from_mut(&mut attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn prog_info(prog: BorrowedFd<'_>) -> io::Result<bpf_prog_info> {
    // SAFETY: both are plain C structs for which all-zero bytes are a valid value (and what the
    // kernel expects in every field it does not read).
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    let fd = u32::try_from(prog.as_raw_fd()).map_err(io::Error::other)?;
    attr.info.bpf_fd = fd;
    // A kernel older than this struct fills what it knows and leaves the rest zero.
    attr.info.info_len = u32::try_from(size_of::<bpf_prog_info>()).map_err(io::Error::other)?;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD reads `attr` (size given) and writes at most `info_len`
    // bytes to `info`, which lives until the call returns; `prog` is an open program fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}
