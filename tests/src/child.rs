//! What the test binaries (src/bin) do for themselves: take a known name, and say what the
//! harness waits for on stdout.

use std::{
    ffi::CString,
    io::{self, Write as _},
};

/// Sets the calling thread's comm (what the kernel reports as the owner's name); at most 15
/// bytes, longer names are cut by the kernel.
pub fn set_comm(comm: &str) -> io::Result<()> {
    let name = CString::new(comm).map_err(io::Error::other)?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer,
    // which stays valid for the call.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One line on stdout, flushed at once: the harness reads it while the process keeps running
/// (and a forked copy of a buffered line would be printed twice).
pub fn say(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
