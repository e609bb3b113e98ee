//! The recording format: round trips of every record type, damage of every kind, and a property
//! test feeding arbitrary and mutated files to the reader.

use std::{
    io::Cursor,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use bytes::BytesMut;
use proptest::prelude::*;

use super::{
    format::{self, CHUNK_HEADER_LEN, PREAMBLE_LEN, decode_items, encode},
    *,
};
use crate::{
    event::{Attribution, Call, Comm, Errno, Family, Reset, SyscallFailure, Transition},
    model::KernelSocket,
    state::TcpState,
    stream::{Item, KernelStats, KernelTruth, Stats},
};

pub(crate) fn header() -> Header {
    Header {
        format: format::FORMAT_NAME.into(),
        version: format::VERSION,
        twtrace: "0.1.0".into(),
        hostname: "box".into(),
        kernel: "6.18.0".into(),
        start_time: "2026-11-25T16:00:00.000000Z".into(),
        start_mono_ns: 1_000_000_000,
        mono_to_wall_ns: 1_795_564_800_000_000_000,
        sysctls: vec![("net.ipv4.tcp_tw_reuse".into(), "2".into())],
        command_line: vec!["twtrace".into(), "record".into()],
        filters: Filters {
            ports: vec![8080],
            ..Filters::default()
        },
        note: None,
    }
}

pub(crate) fn event(i: u64) -> Transition {
    Transition {
        netns: 4_026_531_840,
        mono_ns: 1_000_000_000 + i * 1000,
        skaddr: 0xffff_8880_0000_0000 + i,
        cookie: i.is_multiple_of(3).then_some(i * 7),
        pid: 4242,
        comm: Comm::from("curl"),
        cgroup_id: 77,
        attribution: Attribution::Owner,
        current_pid: 99,
        family: Family::Ipv4,
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000 + (i % 1000) as u16),
        remote: "127.0.0.1:8080".parse().expect("addr"),
        old: TcpState::FinWait2,
        new: TcpState::TimeWait,
        reset: None,
        failure: None,
        orphan: false,
    }
}

pub(crate) fn kernel_truth() -> KernelTruth {
    KernelTruth {
        dump_ns: 3_000_000_000,
        sockets: vec![
            KernelSocket {
                netns: 0,
                state: TcpState::TimeWait,
                local: "127.0.0.1:40001".parse().expect("addr"),
                remote: "127.0.0.1:8080".parse().expect("addr"),
                cookie: 5,
                inode: 0,
                timewait: true,
                expires_ns: 59_000_000_000,
            },
            KernelSocket {
                netns: 4_026_532_999,
                state: TcpState::CloseWait,
                local: "[::1]:40002".parse().expect("addr"),
                remote: "[2001:db8::1]:443".parse().expect("addr"),
                cookie: 6,
                inode: 12345,
                timewait: false,
                expires_ns: 0,
            },
        ],
        owners: vec![(12345, 777, Comm::from("java"))],
        timewait_kernel: Some(1),
        port_settings: Vec::new(),
    }
}

pub(crate) fn stats() -> Stats {
    Stats {
        namespaces: Some(3),
        mono_ns: 4_000_000_000,
        kernel: KernelStats {
            accept_miss: 2,
            events: 1,
            lost: 2,
            table_full: 3,
            unattributed: 4,
            listener_miss: 5,
            filtered: 6,
            skipped: 7,
        },
        timewait_kernel: None,
    }
}

fn round_trip(r: &Item) -> Item {
    let mut buf = BytesMut::new();
    encode(&mut buf, r);
    let mut out = Vec::new();
    decode_items(&buf, &mut out).expect("decodes");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn every_event_field_round_trips() {
    let mut e = event(3);
    assert_eq!(round_trip(&Item::Event(e)), Item::Event(e));
    e.cookie = None;
    e.attribution = Attribution::Listener;
    e.reset = Some(Reset::Sent);
    e.family = Family::Ipv6;
    e.local = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
    e.remote = "[2001:db8::7]:65535".parse().expect("addr");
    e.comm = Comm::from("abcdefghijklmno");
    e.old = TcpState::Established;
    e.new = TcpState::Close;
    assert_eq!(round_trip(&Item::Event(e)), Item::Event(e));
    e.attribution = Attribution::Unknown;
    e.reset = Some(Reset::Received);
    e.cookie = Some(0);
    e.pid = 0;
    assert_eq!(round_trip(&Item::Event(e)), Item::Event(e));
    // An orphan's FIN_WAIT2 timewait entry.
    let mut o = event(4);
    (o.new, o.orphan) = (TcpState::FinWait2, true);
    assert_eq!(round_trip(&Item::Event(o)), Item::Event(o));
}

/// Written as the TIME_WAIT entry it was before they were told apart, plus the byte that says
/// otherwise: without that byte (a reader that predates it skips it; a file written before
/// it lacks it) it reads as TIME_WAIT.
#[test]
fn an_orphan_entry_reads_as_time_wait_without_its_last_byte() {
    let mut o = event(4);
    (o.new, o.orphan) = (TcpState::FinWait2, true);
    let mut buf = BytesMut::new();
    encode(&mut buf, &Item::Event(o));
    let mut out = Vec::new();
    decode_items(&shortened(&buf, 1), &mut out).expect("decodes");
    let before = Transition {
        new: TcpState::TimeWait,
        orphan: false,
        ..o
    };
    assert_eq!(out, vec![Item::Event(before)]);
    // The byte on any other transition is damage.
    let mut bad = BytesMut::new();
    encode(&mut bad, &Item::Event(o));
    let state_at = bad.len() - 1 - 4 - 1 - 1;
    bad[state_at] = format::state_code(TcpState::Close);
    assert!(decode_items(&bad, &mut Vec::new()).is_err());
}

#[test]
fn kernel_truth_and_stats_round_trip() {
    let k = Item::Kernel(kernel_truth());
    assert_eq!(round_trip(&k), k);
    let empty = Item::Kernel(KernelTruth::default());
    assert_eq!(round_trip(&empty), empty);
    // Varint and timer extremes.
    let mut k = kernel_truth();
    for (cookie, inode, expires_ns) in [
        (u64::MAX, 0, 1_999_999),
        (127, 128, u64::MAX),
        (0, u64::MAX, 18_446_744_073_709_000_000),
    ] {
        k.sockets[0].cookie = cookie;
        k.sockets[0].inode = inode;
        k.sockets[0].expires_ns = expires_ns;
        let r = Item::Kernel(k.clone());
        assert_eq!(round_trip(&r), r);
    }
    // A typical TIME_WAIT socket of a dump is small.
    let mut buf = BytesMut::new();
    encode(&mut buf, &Item::Kernel(kernel_truth()));
    let one = buf.len();
    let mut two = kernel_truth();
    two.sockets.push(two.sockets[0]);
    buf.clear();
    encode(&mut buf, &Item::Kernel(two));
    assert!(
        buf.len() - one <= 22,
        "{} bytes per socket",
        buf.len() - one
    );
    let s = Item::Stats(stats());
    assert_eq!(round_trip(&s), s);
}

/// A record as an older version wrote it: `buf`'s single record without its last `cut` bytes.
fn shortened(buf: &[u8], cut: usize) -> Vec<u8> {
    let len = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes")) - cut as u32;
    let mut old = vec![buf[0]];
    old.extend_from_slice(&len.to_le_bytes());
    old.extend_from_slice(&buf[5..buf.len() - cut]);
    old
}

/// What version 3 added at the end of a stats record: accept misses and the namespace count
/// (8 bytes, and 9 for an optional number).
const STATS_V3_TAIL: usize = 8 + 9;

#[test]
fn a_stats_record_from_before_the_skipped_counter_reads_as_zero_skipped() {
    let mut buf = BytesMut::new();
    let s = Stats {
        namespaces: None,
        ..stats()
    };
    encode(&mut buf, &Item::Stats(s));
    // The same record as the first release of version 1 wrote it: without the skipped count
    // and what version 3 added.
    let old = shortened(&buf, 8 + STATS_V3_TAIL);
    let mut out = Vec::new();
    decode_items(&old, &mut out).expect("decodes");
    let want = Stats {
        kernel: KernelStats {
            skipped: 0,
            accept_miss: 0,
            ..s.kernel
        },
        ..s
    };
    assert_eq!(out, vec![Item::Stats(want)]);
}

#[test]
fn a_version_2_stats_record_has_no_accept_misses_and_no_namespace_count() {
    let mut buf = BytesMut::new();
    let s = Stats {
        namespaces: None,
        ..stats()
    };
    encode(&mut buf, &Item::Stats(s));
    let mut out = Vec::new();
    decode_items(&shortened(&buf, STATS_V3_TAIL), &mut out).expect("decodes");
    let want = Stats {
        kernel: KernelStats {
            accept_miss: 0,
            ..s.kernel
        },
        ..s
    };
    assert_eq!(out, vec![Item::Stats(want)]);
}

#[test]
fn a_version_2_event_has_namespace_zero() {
    let mut buf = BytesMut::new();
    let t = event(3);
    assert_ne!(t.netns, 0, "the fixture has a namespace");
    encode(&mut buf, &Item::Event(t));
    let mut out = Vec::new();
    // Its namespace and the orphan byte after it.
    decode_items(&shortened(&buf, 5), &mut out).expect("decodes");
    assert_eq!(out, vec![Item::Event(Transition { netns: 0, ..t })]);
}

/// A failed connect() as the live source hands it over.
fn failure(i: u64, call: Call, errno: Errno) -> Transition {
    Transition {
        old: TcpState::Close,
        new: TcpState::Close,
        cookie: None,
        local: "0.0.0.0:0".parse().expect("addr"),
        remote: "10.0.0.5:8080".parse().expect("addr"),
        failure: Some(SyscallFailure { call, errno }),
        ..event(i)
    }
}

#[test]
fn failures_round_trip_as_records_of_their_own() {
    for (call, errno) in [
        (Call::Connect, Errno::EADDRNOTAVAIL),
        (Call::Connect, Errno::ENOBUFS),
        (Call::Bind, Errno::EADDRINUSE),
        (Call::Bind, Errno(4095)),
    ] {
        let f = Item::Event(failure(1, call, errno));
        assert_eq!(round_trip(&f), f);
    }
    // Tag 7, the event's body plus 3 bytes, between ordinary records that read as before: a
    // reader that predates the tag skips it (`unknown_record_tags_are_skipped`) and misreads
    // nothing.
    let items = vec![
        Item::Event(event(1)),
        Item::Event(failure(2, Call::Connect, Errno::EADDRNOTAVAIL)),
        Item::Event(event(3)),
    ];
    let mut buf = BytesMut::new();
    for item in &items {
        encode(&mut buf, item);
    }
    let mut out = Vec::new();
    decode_items(&buf, &mut out).expect("decodes");
    assert_eq!(out, items);
    let mut framed = format::chunk_header(&buf, 3).to_vec();
    framed.extend_from_slice(&buf);
    assert_eq!(record_tags(&framed), [1, 7, 1]);
    let mut one = BytesMut::new();
    encode(&mut one, &items[0]);
    let mut other = BytesMut::new();
    encode(
        &mut other,
        &Item::Event(failure(1, Call::Bind, Errno::EADDRINUSE)),
    );
    assert_eq!(other.len(), one.len() + 3);
    // The event's body is whole, its last byte (`EVENT_ORPHAN` clear) before the call.
    assert_eq!(other[other.len() - 4], 0);

    // A call this reader does not know is an error, not a guess.
    let mut bad = other.to_vec();
    let at = bad.len() - 3;
    bad[at] = 9;
    let mut out = Vec::new();
    assert!(decode_items(&bad, &mut out).is_err());
}

#[test]
fn unknown_record_tags_are_skipped() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[99, 3, 0, 0, 0, 1, 2, 3]);
    encode(&mut buf, &Item::Stats(stats()));
    let mut out = Vec::new();
    decode_items(&buf, &mut out).expect("decodes");
    assert_eq!(out, vec![Item::Stats(stats())]);
}

/// A file of `chunks` chunks, and the records of each.
fn file_with(chunks: &[Vec<Item>]) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut w = Writer::new(Vec::new(), &header(), None).expect("header");
    let mut ranges = Vec::new();
    for records in chunks {
        let start = w.bytes_written() as usize;
        for r in records {
            w.record(r).expect("vec write");
        }
        w.flush().expect("vec write");
        ranges.push(start..w.bytes_written() as usize);
    }
    (w.into_inner(), ranges)
}

fn sample_chunks() -> Vec<Vec<Item>> {
    vec![
        (0..10).map(|i| Item::Event(event(i))).collect(),
        vec![Item::Kernel(kernel_truth()), Item::Stats(stats())],
        (10..20).map(|i| Item::Event(event(i))).collect(),
        (20..25).map(|i| Item::Event(event(i))).collect(),
        vec![Item::End {
            mono_ns: 5_000_000_000,
        }],
    ]
}

pub(crate) fn read_all(bytes: &[u8]) -> anyhow::Result<(Vec<Item>, Vec<Problem>)> {
    let mut r = Reader::new(Cursor::new(bytes))?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok((out, r.problems().to_vec()))
}

#[test]
fn writer_and_reader_round_trip_a_file() {
    let chunks = sample_chunks();
    let (bytes, _) = file_with(&chunks);
    let (records, problems) = read_all(&bytes).expect("reads");
    assert_eq!(records, chunks.concat());
    assert!(problems.is_empty(), "{problems:?}");
    let r = Reader::new(Cursor::new(&bytes)).expect("header");
    assert_eq!(r.header(), &header());
}

#[test]
fn a_damaged_middle_chunk_is_skipped_with_one_warning_naming_its_offset() {
    let chunks = sample_chunks();
    let (mut bytes, ranges) = file_with(&chunks);
    let bad = ranges[1].clone();
    bytes[bad.start + CHUNK_HEADER_LEN + 3] ^= 0x40;
    let (records, problems) = read_all(&bytes).expect("reads");
    let want: Vec<Item> = [
        &chunks[0][..],
        &chunks[2][..],
        &chunks[3][..],
        &chunks[4][..],
    ]
    .concat();
    assert_eq!(records, want);
    assert_eq!(
        problems,
        vec![Problem::Skipped {
            offset: bad.start as u64,
            why: "checksum mismatch".into()
        }]
    );
    assert!(
        problems[0]
            .to_string()
            .contains(&format!("byte {}", bad.start))
    );
}

#[test]
fn a_damaged_length_or_magic_resyncs_on_the_next_chunk() {
    let chunks = sample_chunks();
    for (field, value) in [(0usize, b'X'), (9, 0x7f), (11, 0xff)] {
        let (mut bytes, ranges) = file_with(&chunks);
        bytes[ranges[2].start + field] = value;
        let (records, problems) = read_all(&bytes).expect("reads");
        let want: Vec<Item> = [
            &chunks[0][..],
            &chunks[1][..],
            &chunks[3][..],
            &chunks[4][..],
        ]
        .concat();
        assert_eq!(records, want, "byte {field} damaged");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            matches!(problems[0], Problem::Skipped { offset, .. } if offset == ranges[2].start as u64)
        );
    }
}

#[test]
fn garbage_between_chunks_is_one_warning() {
    let chunks = sample_chunks();
    let (bytes, ranges) = file_with(&chunks);
    let mut damaged = bytes[..ranges[1].end].to_vec();
    damaged.extend_from_slice(&[0xAB; 1000]);
    damaged.extend_from_slice(&bytes[ranges[2].start..]);
    let (records, problems) = read_all(&damaged).expect("reads");
    assert_eq!(records, chunks.concat());
    assert_eq!(
        problems,
        vec![Problem::Skipped {
            offset: ranges[1].end as u64,
            why: "no chunk magic".into()
        }]
    );
}

#[test]
fn a_truncated_last_chunk_is_reported_and_everything_before_is_read() {
    let chunks = sample_chunks();
    let (bytes, ranges) = file_with(&chunks);
    for cut in [ranges[3].start + 5, ranges[3].start + 30, ranges[3].end - 1] {
        let (records, problems) = read_all(&bytes[..cut]).expect("reads");
        assert_eq!(records, chunks[..3].concat(), "cut at {cut}");
        assert_eq!(
            problems,
            vec![Problem::Truncated {
                offset: ranges[3].start as u64
            }]
        );
        assert_eq!(
            problems[0].to_string(),
            format!(
                "file ends inside a chunk at byte {}: the recording was cut short; everything \
                 before it was read",
                ranges[3].start
            )
        );
    }
    // Cut right after a chunk (killed between two writes): no end mark.
    let (records, problems) = read_all(&bytes[..ranges[3].start]).expect("reads");
    assert_eq!(records, chunks[..3].concat());
    assert_eq!(problems, vec![Problem::NoEnd]);
    assert!(problems[0].to_string().contains("no end mark"));
}

fn open_error(bytes: &[u8]) -> String {
    match Reader::new(Cursor::new(bytes)) {
        Ok(_) => panic!("opened"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn files_that_are_not_readable_recordings_are_one_clear_error() {
    assert!(open_error(b"").contains("empty"));
    assert!(open_error(b"hello, world, this is text\n").contains("not a twtrace recording"));
    assert!(open_error(&[0u8; 4096]).contains("not a twtrace recording"));
    let (bytes, _) = file_with(&sample_chunks());
    let mut newer = bytes.clone();
    newer[8] = 4;
    let e = open_error(&newer);
    assert!(e.contains("version 4 is newer"), "{e}");
    let mut bad_header = bytes.clone();
    bad_header[PREAMBLE_LEN + 3] ^= 1;
    assert!(open_error(&bad_header).contains("header is damaged"));
    assert!(open_error(&bytes[..PREAMBLE_LEN + 2]).contains("ends inside its header"));
    assert!(open_error(&bytes[..5]).contains("ends inside its header"));
}

#[test]
fn a_directory_is_one_clear_error() {
    let dir = std::env::temp_dir();
    let e = match Reader::open(&dir) {
        Ok(_) => panic!("opened a directory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("is a directory"), "{e}");
    let missing = dir.join("twtrace-no-such-recording.twr");
    assert!(Reader::open(&missing).is_err());
}

#[test]
fn a_file_with_only_a_header_has_no_records_and_says_it_was_cut() {
    let (bytes, _) = file_with(&[]);
    let (records, problems) = read_all(&bytes).expect("reads");
    assert!(records.is_empty());
    assert_eq!(problems, vec![Problem::NoEnd]);
}

#[test]
fn files_are_created_0600_and_not_replaced_without_force() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("twtrace-test-{}.twr", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let f = writer::create_file(&path, false).expect("creates");
    drop(f);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let e = writer::create_file(&path, false).expect_err("exists");
    assert!(e.to_string().contains("--force"), "{e}");
    writer::create_file(&path, true).expect("force replaces");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn size_limit_keeps_the_file_under_it() {
    let limit = 2000;
    let mut w = Writer::new(Vec::new(), &header(), Some(limit)).expect("header");
    for i in 0..100 {
        w.event(&event(i)).expect("write");
        if (i + 1).is_multiple_of(10) {
            w.flush().expect("write");
        }
    }
    assert!(w.limit_reached());
    w.end(9).expect("write");
    let bytes = w.into_inner();
    assert!(bytes.len() as u64 <= limit);
    let (records, problems) = read_all(&bytes).expect("reads");
    assert!(!records.is_empty() && problems.is_empty());
}

#[test]
fn chunks_close_at_their_target_size() {
    let mut w = Writer::new(Vec::new(), &header(), None).expect("header");
    let n = 2000;
    for i in 0..n {
        w.event(&event(i)).expect("write");
    }
    // ~80 bytes per event: 2000 events fill two 64 KiB chunks, written without a flush.
    assert!(w.events_written() > 0 && w.events_written() < n);
    w.flush().expect("write");
    assert_eq!(w.events_written(), n);
}

#[test]
fn sizes_parse_with_suffixes() {
    assert_eq!(parse_size("500M"), Ok(500 << 20));
    assert_eq!(parse_size("64k"), Ok(64 << 10));
    assert_eq!(parse_size("2G"), Ok(2 << 30));
    assert_eq!(parse_size("1234"), Ok(1234));
    assert!(parse_size("0").is_err());
    assert!(parse_size("12X").is_err());
    assert!(parse_size("M").is_err());
    assert!(parse_size("").is_err());
    assert_eq!(human_size(1536), "1.5 KiB");
    assert_eq!(human_size(10), "10 B");
}

// ---- property tests -------------------------------------------------------------------------

fn arb_state() -> impl Strategy<Value = TcpState> {
    (1u32..=13).prop_map(|n| TcpState::try_from(n).expect("valid"))
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(o, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(o, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), p)),
    ]
}

fn arb_event() -> impl Strategy<Value = Transition> {
    (
        (
            any::<u64>(),
            any::<u64>(),
            any::<Option<u64>>(),
            any::<u32>(),
        ),
        ("[a-z0-9/._-]{0,15}", any::<u64>(), 0u8..3, any::<u32>()),
        (any::<bool>(), arb_addr(), arb_addr()),
        (
            arb_state(),
            arb_state(),
            0u8..3,
            prop::option::of((any::<bool>(), any::<u16>())),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (mono_ns, skaddr, cookie, pid),
                (comm, cgroup_id, attr, current_pid),
                (v6, local, remote),
                (old, new, reset, failure, orphan),
            )| {
                // Only a close from FIN_WAIT2 can be an orphan's entry, and a failed call is
                // no close.
                let orphan = orphan && old == TcpState::FinWait2 && failure.is_none();
                Transition {
                    netns: 0,
                    mono_ns,
                    skaddr,
                    cookie,
                    pid,
                    comm: Comm::from(comm.as_str()),
                    cgroup_id,
                    attribution: [
                        Attribution::Owner,
                        Attribution::Listener,
                        Attribution::Unknown,
                    ][attr as usize],
                    current_pid,
                    family: if v6 { Family::Ipv6 } else { Family::Ipv4 },
                    local,
                    remote,
                    old,
                    new: if orphan { TcpState::FinWait2 } else { new },
                    reset: [None, Some(Reset::Received), Some(Reset::Sent)][reset as usize],
                    failure: failure.map(|(connect, errno)| SyscallFailure {
                        call: if connect { Call::Connect } else { Call::Bind },
                        errno: Errno(errno),
                    }),
                    orphan,
                }
            },
        )
}

fn arb_kernel() -> impl Strategy<Value = KernelTruth> {
    let socket = (
        arb_state(),
        arb_addr(),
        arb_addr(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(state, local, remote, cookie, inode, timewait, expires_ns)| KernelSocket {
                netns: 0,
                state,
                local,
                remote,
                cookie,
                inode,
                timewait,
                expires_ns,
            },
        );
    (
        any::<u64>(),
        prop::collection::vec(socket, 0..20),
        prop::collection::vec((any::<u64>(), any::<u32>(), "[a-z]{0,15}"), 0..5),
        any::<Option<u64>>(),
    )
        .prop_map(|(dump_ns, sockets, owners, timewait_kernel)| KernelTruth {
            dump_ns,
            sockets,
            owners: owners
                .into_iter()
                .map(|(i, p, c)| (i, p, Comm::from(c.as_str())))
                .collect(),
            timewait_kernel,
            port_settings: Vec::new(),
        })
}

pub(crate) fn arb_record() -> impl Strategy<Value = Item> {
    prop_oneof![
        8 => arb_event().prop_map(Item::Event),
        1 => arb_kernel().prop_map(Item::Kernel),
        1 => (any::<u64>(), any::<[u64; 7]>(), any::<Option<u64>>()).prop_map(|(mono_ns, k, tw)| {
            Item::Stats(Stats {
                namespaces: None,
                mono_ns,
                kernel: KernelStats {
                    accept_miss: 0,
                    events: k[0],
                    lost: k[1],
                    table_full: k[2],
                    unattributed: k[3],
                    listener_miss: k[4],
                    filtered: k[5],
                    skipped: k[6],
                },
                timewait_kernel: tw,
            })
        }),
    ]
}

/// A byte-level change to a file.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
    ]
}

/// Applies the mutations. Each byte of the result remembers which original byte it is (None for
/// inserted ones), so a chunk is intact when its original bytes are still contiguous and equal.
fn mutate(bytes: &[u8], muts: &[Mutation]) -> Vec<(u8, Option<usize>)> {
    let mut data: Vec<(u8, Option<usize>)> = bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| (b, Some(i)))
        .collect();
    for m in muts {
        if data.is_empty() {
            break;
        }
        match m {
            Mutation::Flip { at, bits } => {
                let at = at % data.len();
                data[at].0 ^= bits;
            }
            Mutation::Truncate { at } => data.truncate(at % data.len()),
            Mutation::Insert { at, bytes: ins } => {
                let at = at % data.len();
                data.splice(at..at, ins.iter().map(|&b| (b, None)));
            }
            Mutation::Delete { at, len } => {
                let at = at % data.len();
                let end = (at + len).min(data.len());
                data.drain(at..end);
            }
        }
    }
    data
}

/// The original bytes `range` are in `data`, unchanged: from where its first byte still is, the
/// same values follow. (By value: deleting a chunk's last byte and the next chunk's first ones
/// can leave the same bytes behind, and then the chunk is intact as far as anyone can tell.)
fn intact(original: &[u8], data: &[(u8, Option<usize>)], range: std::ops::Range<usize>) -> bool {
    let Some(j) = data.iter().position(|&(_, o)| o == Some(range.start)) else {
        return false;
    };
    range.len() <= data.len() - j
        && range
            .clone()
            .zip(&data[j..])
            .all(|(i, &(b, _))| b == original[i])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_record_round_trips(r in arb_record()) {
        prop_assert_eq!(round_trip(&r), r);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(mut r) = Reader::new(Cursor::new(&bytes)) {
            while let Ok(Some(_)) = r.next_record() {}
        }
        // And after a valid header.
        let mut file = format::encode_header(&header());
        file.extend_from_slice(&bytes);
        let mut r = Reader::new(Cursor::new(&file)).expect("valid header");
        while let Ok(Some(_)) = r.next_record() {}
    }

    #[test]
    fn mutated_files_never_panic_and_intact_chunks_are_read_exactly(
        chunks in arb_chunks(),
        muts in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let (bytes, ranges) = file_with(&chunks);
        let data = mutate(&bytes, &muts);
        let mutated: Vec<u8> = data.iter().map(|&(b, _)| b).collect();
        let header_len = ranges.first().map_or(bytes.len(), |r| r.start);
        let Ok(mut reader) = Reader::new(Cursor::new(&mutated)) else {
            // Refusing is fine only when the header itself was hit or moved.
            prop_assert!(data.first().map(|d| d.1) != Some(Some(0)) || !intact(&bytes, &data, 0..header_len));
            return Ok(());
        };
        let mut got = Vec::new();
        while let Ok(Some(r)) = reader.next_record() {
            got.push(r);
        }
        // Every record of an intact chunk, except a kernel delta whose base (the kernel record
        // before it) was not read: that one is dropped, never decoded against another dump.
        let mut want = Vec::new();
        let mut base_read = false;
        for (records, range) in chunks.iter().zip(&ranges) {
            let read = intact(&bytes, &data, range.clone());
            for (item, tag) in records.iter().zip(record_tags(&bytes[range.clone()])) {
                let read = match tag {
                    2 => read,
                    5 => read && base_read,
                    _ => {
                        if read {
                            want.push(item.clone());
                        }
                        continue;
                    }
                };
                if read {
                    want.push(item.clone());
                }
                base_read = read;
            }
        }
        prop_assert_eq!(got, want);
    }
}

/// Chunks of arbitrary records whose kernel dumps follow one another as the kernel's do (so
/// most are written as deltas).
fn arb_chunks() -> impl Strategy<Value = Vec<Vec<Item>>> {
    (
        prop::collection::vec(prop::collection::vec(arb_record(), 1..6), 1..8),
        super::kernel::tests::arb_dumps(12),
    )
        .prop_map(|(mut chunks, dumps)| {
            let mut dumps = dumps.into_iter();
            for item in chunks.iter_mut().flatten() {
                if let Item::Kernel(k) = item
                    && let Some(next) = dumps.next()
                {
                    *k = next;
                }
            }
            chunks
        })
}

/// The tags of the records in one chunk (header included).
fn record_tags(chunk: &[u8]) -> Vec<u8> {
    let mut payload = &chunk[CHUNK_HEADER_LEN..];
    let mut tags = Vec::new();
    while !payload.is_empty() {
        let len = u32::from_le_bytes(payload[1..5].try_into().expect("4 bytes")) as usize;
        tags.push(payload[0]);
        payload = &payload[5 + len..];
    }
    tags
}

/// What `testdata/version1.twr` holds. It was written by the version-1 writer (commit 771b8b0,
/// before kernel dumps became deltas), with the helpers above as they were then; recordings of
/// that version are in the wild and must keep reading.
fn version1_items() -> Vec<Item> {
    // What version 1 could say: no namespaces, no accept misses.
    let kernel_truth = || {
        let mut k = kernel_truth();
        for s in &mut k.sockets {
            s.netns = 0;
        }
        k
    };
    let event = |i| Transition {
        netns: 0,
        ..event(i)
    };
    let stats = || Stats {
        namespaces: None,
        kernel: KernelStats {
            accept_miss: 0,
            ..stats().kernel
        },
        ..stats()
    };
    let mut later = kernel_truth();
    later.dump_ns += 2_000_000_000;
    later.sockets[0].expires_ns -= 2_000_000_000;
    later.sockets.pop();
    later.owners.clear();
    later.timewait_kernel = None;
    let mut items: Vec<Item> = (0..3).map(|i| Item::Event(event(i))).collect();
    items.extend([
        Item::Kernel(kernel_truth()),
        Item::Stats(stats()),
        Item::Kernel(later),
        Item::Event(event(3)),
        Item::End {
            mono_ns: 6_000_000_000,
        },
    ]);
    items
}

#[test]
fn a_version_1_file_still_reads() {
    let bytes = include_bytes!("testdata/version1.twr");
    assert_eq!(
        u16::from_le_bytes([bytes[8], bytes[9]]),
        1,
        "a version-1 file"
    );
    let (records, problems) = read_all(bytes).expect("reads");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(records, version1_items());
    let r = Reader::new(Cursor::new(&bytes[..])).expect("header");
    assert_eq!(r.header().version, 1);
}
