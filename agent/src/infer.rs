//! What a raw transition means: the tracepoint never reports TIME_WAIT (the full socket is
//! replaced by a timewait socket and shows `X -> CLOSE`, see docs/kernel.md), and
//! a reset-driven close looks the same apart from the reset tracepoints the kernel side records.

use twtrace_ebpf::flags;

use crate::state::{Reset, TcpState};

/// The state and reset to report for a raw `old -> new` with the kernel side's flags.
///
/// - A reset received before the close (`tcp_reset()` runs before `tcp_done()`) makes it a reset
///   close, whatever the old state.
/// - A reset sent (an abort: SO_LINGER 0, unread data, `tcp_disconnect()`) likewise.
/// - Otherwise leaving FIN_WAIT1, FIN_WAIT2 or CLOSING for CLOSE is `tcp_time_wait()` handing
///   the connection to a timewait socket: the TIME_WAIT entry (including orphaned FIN_WAIT2
///   sockets, which become timewait sockets with a FIN_WAIT2 substate and count in sockstat's
///   `tw` too).
pub fn reported(old: TcpState, new: TcpState, raw_flags: u32) -> (TcpState, Option<Reset>) {
    if new != TcpState::Close {
        return (new, None);
    }
    if raw_flags & flags::RESET_RECEIVED != 0 {
        return (TcpState::Close, Some(Reset::Received));
    }
    if raw_flags & flags::RESET_SENT != 0 {
        return (TcpState::Close, Some(Reset::Sent));
    }
    match old {
        TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing => (TcpState::TimeWait, None),
        _ => (TcpState::Close, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    #[test]
    fn active_close_paths_enter_time_wait() {
        for old in [FinWait1, FinWait2, Closing] {
            assert_eq!(reported(old, Close, 0), (TimeWait, None), "{old}");
            assert_eq!(
                reported(old, Close, flags::DESTROYED),
                (TimeWait, None),
                "{old}"
            );
        }
    }

    #[test]
    fn a_received_reset_is_not_time_wait() {
        for old in [
            FinWait1,
            FinWait2,
            Closing,
            Established,
            SynSent,
            CloseWait,
            LastAck,
        ] {
            assert_eq!(
                reported(old, Close, flags::RESET_RECEIVED),
                (Close, Some(Reset::Received))
            );
        }
    }

    #[test]
    fn a_sent_reset_is_not_time_wait() {
        assert_eq!(
            reported(FinWait2, Close, flags::RESET_SENT | flags::DESTROYED),
            (Close, Some(Reset::Sent))
        );
        assert_eq!(
            reported(Established, Close, flags::RESET_SENT),
            (Close, Some(Reset::Sent))
        );
    }

    #[test]
    fn received_wins_when_both_resets_were_seen() {
        assert_eq!(
            reported(FinWait1, Close, flags::RESET_SENT | flags::RESET_RECEIVED),
            (Close, Some(Reset::Received))
        );
    }

    #[test]
    fn passive_and_failed_closes_stay_close() {
        assert_eq!(reported(LastAck, Close, 0), (Close, None));
        assert_eq!(reported(SynSent, Close, 0), (Close, None));
        assert_eq!(reported(Listen, Close, 0), (Close, None));
    }

    #[test]
    fn other_transitions_pass_through_and_carry_no_reset() {
        assert_eq!(
            reported(Established, CloseWait, flags::RESET_SENT),
            (CloseWait, None)
        );
        assert_eq!(reported(Established, FinWait1, 0), (FinWait1, None));
    }
}
