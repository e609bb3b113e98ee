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
///   the connection to a timewait socket, which counts in sockstat's `tw`. Its substate is what
///   `ss` shows as its state: TIME_WAIT, or FIN_WAIT2 when the kernel side saw an orphan the
///   peer had not sent its FIN to (`flags::ORPHAN_FIN_WAIT2`, read at `FIN_WAIT2 -> CLOSE`):
///   reported as `FIN_WAIT2 -> FIN_WAIT2`, the only close reported with its old state as new.
///   Without that flag (no BTF, an older recording) it is TIME_WAIT, as before; the reconcile
///   corrects it from the kernel's table.
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
        TcpState::FinWait2 if raw_flags & flags::ORPHAN_FIN_WAIT2 != 0 => {
            (TcpState::FinWait2, None)
        }
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
    fn an_orphan_the_peer_has_not_closed_stays_fin_wait2() {
        let orphan = flags::ORPHAN_FIN_WAIT2 | flags::DESTROYED;
        assert_eq!(reported(FinWait2, Close, orphan), (FinWait2, None));
        // The kernel side sets it only at FIN_WAIT2 -> CLOSE; anywhere else it means nothing.
        assert_eq!(reported(FinWait1, Close, orphan), (TimeWait, None));
        assert_eq!(reported(Closing, Close, orphan), (TimeWait, None));
        assert_eq!(reported(LastAck, Close, orphan), (Close, None));
        // A reset still wins: no timewait socket was made.
        assert_eq!(
            reported(FinWait2, Close, orphan | flags::RESET_SENT),
            (Close, Some(Reset::Sent))
        );
        assert_eq!(
            reported(FinWait2, Close, orphan | flags::RESET_RECEIVED),
            (Close, Some(Reset::Received))
        );
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
