//! handoff: opens loopback TCP connections in one process and leaves them to another, then the
//! first process exits. This is how sockets change owner in real programs (a pre-fork server,
//! a daemon that forks, a process that passes sockets over a Unix socket), and why the owner
//! twtrace's kernel program remembers can be a process that no longer exists.
//!
//! ```text
//! handoff --connect <ADDR> --count <N> --how <fork|scm> --comm <NAME> --child-comm <NAME> [--hold-ms <T>]
//! ```
//!
//! - `fork`: the parent connects N times, forks a child that inherits the sockets, and exits.
//! - `scm`: the parent forks a child first (so it inherits no TCP socket), connects N times,
//!   passes the sockets to the child over a Unix socket pair with SCM_RIGHTS, closes its own
//!   copies and exits.
//!
//! Both processes print one line on stdout, `parent <pid>` and `child <pid>`; the child prints
//! its line once it holds every socket. It keeps them open (reading nothing, so they sit in
//! CLOSE_WAIT once the server closes) for `--hold-ms`, then exits. A test should kill it when
//! done.

use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpStream},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, ValueEnum};
use twtrace_tests::child::{say, set_comm};

/// The kernel keeps 15 bytes of a process name.
const MAX_COMM: usize = 15;
/// Sockets passed in one SCM_RIGHTS message at most (the kernel's SCM_MAX_FD is 253).
const MAX_COUNT: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum How {
    /// The child inherits the sockets across fork().
    Fork,
    /// The sockets are passed to the child with SCM_RIGHTS.
    Scm,
}

/// Opens loopback connections in one process and leaves them to another.
#[derive(Debug, Parser)]
#[command(name = "handoff")]
struct Cli {
    /// Address to connect to, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    connect: SocketAddr,
    /// How many connections.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    count: u64,
    /// How the sockets reach the child.
    #[arg(long, value_enum)]
    how: How,
    /// The parent's process name.
    #[arg(long, value_name = "NAME", value_parser = parse_comm)]
    comm: String,
    /// The child's process name.
    #[arg(long, value_name = "NAME", value_parser = parse_comm)]
    child_comm: String,
    /// How long the child keeps the sockets, in ms.
    #[arg(long, value_name = "T", default_value_t = 30_000)]
    hold_ms: u64,
}

fn parse_comm(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > MAX_COMM || value.contains('\0') {
        return Err(format!("1 to {MAX_COMM} bytes without NUL"));
    }
    Ok(value.to_owned())
}

fn connect_all(addr: SocketAddr, count: u64) -> io::Result<Vec<TcpStream>> {
    (0..count).map(|_| TcpStream::connect(addr)).collect()
}

/// Forks; returns the child's pid in the parent, 0 in the child.
fn fork() -> io::Result<libc::pid_t> {
    // Flushed first, so the child does not print the parent's buffered output again.
    io::stdout().flush()?;
    // SAFETY: this program is single-threaded at every fork (no thread is ever spawned), so
    // the child may run arbitrary code afterwards.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        pid => Ok(pid),
    }
}

/// Sends `fds` in one SCM_RIGHTS message.
fn send_fds(sock: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` bytes, enough for one header with `fd_bytes` of
    // data, so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for every fd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
    }
    // SAFETY: `msg` is fully initialised above and the socket fd is open.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives up to `max` fds sent by [`send_fds`].
fn recv_fds(sock: &UnixStream, max: usize) -> io::Result<Vec<OwnedFd>> {
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let fd_bytes = max * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` describes valid buffers for the kernel to fill.
    if unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with well-formed headers; CMSG_FIRSTHDR and
    // CMSG_NXTHDR walk them within msg_controllen, and an SCM_RIGHTS header's data holds
    // (cmsg_len - CMSG_LEN(0)) / 4 fds that are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let n = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..n {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(fds)
}

/// The child: takes its name, says it holds the sockets, keeps them for `hold`.
fn child(comm: &str, held: usize, hold: Duration) -> io::Result<()> {
    set_comm(comm)?;
    say(&format!("child {} holding {held}", std::process::id()))?;
    std::thread::sleep(hold);
    Ok(())
}

fn run(cli: &Cli) -> io::Result<()> {
    set_comm(&cli.comm)?;
    let hold = Duration::from_millis(cli.hold_ms);
    match cli.how {
        How::Fork => {
            let streams = connect_all(cli.connect, cli.count)?;
            if fork()? == 0 {
                return child(&cli.child_comm, streams.len(), hold);
            }
            say(&format!("parent {}", std::process::id()))?;
            // Exiting closes the parent's copies; the child's keep the connections open.
            Ok(())
        }
        How::Scm => {
            let (ours, theirs) = UnixStream::pair()?;
            if fork()? == 0 {
                drop(ours);
                let fds = recv_fds(&theirs, usize::try_from(cli.count).unwrap_or(1))?;
                return child(&cli.child_comm, fds.len(), hold);
            }
            drop(theirs);
            let streams = connect_all(cli.connect, cli.count)?;
            let fds: Vec<RawFd> = streams.iter().map(|s| s.as_raw_fd()).collect();
            send_fds(&ours, &fds)?;
            say(&format!("parent {}", std::process::id()))?;
            // The parent's copies go now: the child holds the only ones.
            drop(streams);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "handoff: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments() {
        let ok = "handoff --connect 127.0.0.1:80 --count 3 --how scm --comm p --child-comm c";
        let cli = Cli::try_parse_from(ok.split(' ')).expect("parses");
        assert_eq!((cli.count, cli.how, cli.hold_ms), (3, How::Scm, 30_000));
        for bad in [
            "handoff --connect 127.0.0.1:80 --count 0 --how scm --comm p --child-comm c",
            "handoff --connect 127.0.0.1:80 --count 201 --how scm --comm p --child-comm c",
            "handoff --connect 127.0.0.1:80 --count 1 --how dup --comm p --child-comm c",
            "handoff --connect 127.0.0.1:80 --count 1 --how fork --comm p",
            "handoff --connect 127.0.0.1:80 --count 1 --how fork --comm sixteen-bytes-xx --child-comm c",
        ] {
            assert!(Cli::try_parse_from(bad.split(' ')).is_err(), "{bad}");
        }
    }
}
