//! TCP states as the kernel numbers them, plus the names users know.

use std::fmt;

use twtrace_ebpf::tcp_state as raw;

/// A TCP state. `TimeWait` never comes from the tracepoint itself: it is inferred (see
/// `crate::infer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
}

/// A state number the kernel sent that this build does not know.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCP state {0}")]
pub struct UnknownState(pub u32);

impl TryFrom<u32> for TcpState {
    type Error = UnknownState;

    fn try_from(v: u32) -> Result<Self, Self::Error> {
        Ok(match v {
            raw::ESTABLISHED => Self::Established,
            raw::SYN_SENT => Self::SynSent,
            raw::SYN_RECV => Self::SynRecv,
            raw::FIN_WAIT1 => Self::FinWait1,
            raw::FIN_WAIT2 => Self::FinWait2,
            raw::TIME_WAIT => Self::TimeWait,
            raw::CLOSE => Self::Close,
            raw::CLOSE_WAIT => Self::CloseWait,
            raw::LAST_ACK => Self::LastAck,
            raw::LISTEN => Self::Listen,
            raw::CLOSING => Self::Closing,
            raw::NEW_SYN_RECV => Self::NewSynRecv,
            raw::BOUND_INACTIVE => Self::BoundInactive,
            other => return Err(UnknownState(other)),
        })
    }
}

impl TcpState {
    /// The states of a socket that closed first, on its way to a timewait socket (which a reset
    /// can still cut short): FIN_WAIT1, FIN_WAIT2, CLOSING.
    pub const fn before_timewait(self) -> bool {
        matches!(self, Self::FinWait1 | Self::FinWait2 | Self::Closing)
    }

    /// The kernel's name without the `TCP_` prefix, as `ss` and the JSON output spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::BoundInactive => "BOUND_INACTIVE",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Which side's reset ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reset {
    Received,
    Sent,
}

impl Reset {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Sent => "sent",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_state_round_trips_to_its_name() {
        let expected = [
            (1, "ESTABLISHED"),
            (2, "SYN_SENT"),
            (3, "SYN_RECV"),
            (4, "FIN_WAIT1"),
            (5, "FIN_WAIT2"),
            (6, "TIME_WAIT"),
            (7, "CLOSE"),
            (8, "CLOSE_WAIT"),
            (9, "LAST_ACK"),
            (10, "LISTEN"),
            (11, "CLOSING"),
            (12, "NEW_SYN_RECV"),
            (13, "BOUND_INACTIVE"),
        ];
        for (n, name) in expected {
            assert_eq!(TcpState::try_from(n).map(TcpState::name), Ok(name));
        }
    }

    #[test]
    fn unknown_numbers_are_errors_not_garbage() {
        assert_eq!(TcpState::try_from(0), Err(UnknownState(0)));
        assert_eq!(TcpState::try_from(14), Err(UnknownState(14)));
        assert_eq!(TcpState::try_from(u32::MAX), Err(UnknownState(u32::MAX)));
    }

    #[test]
    fn display_pads_for_tables() {
        assert_eq!(format!("{:<12}|", TcpState::Close), "CLOSE       |");
    }
}
