//! Render and input tests on hand-built snapshots, drawn to ratatui's `TestBackend`.
//! `cargo test -p twtrace tui::tests::demo_screen -- --nocapture` prints a realistic screen.

use std::sync::Arc;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;

use super::*;
use crate::model::snapshot::{BEFORE_START, PeerKey, PeerRow, ProcessRow, Snapshot, Totals};

// ---- builders ----------------------------------------------------------------------------

fn out(raddr: &str, rport: u16) -> PeerKey {
    PeerKey::Out {
        raddr: raddr.parse().expect("address"),
        rport,
    }
}

fn counts(peer: PeerKey, tw: u64, tw_now: u64, cw: u64, est: u64) -> PeerRow {
    PeerRow {
        peer,
        timewait_entered: tw,
        timewait_now: tw_now,
        close_wait_now: cw,
        established_now: est,
        ..PeerRow::new(peer)
    }
}

fn peer(raddr: &str, rport: u16, tw: u64, tw_now: u64, cw: u64, est: u64) -> PeerRow {
    counts(out(raddr, rport), tw, tw_now, cw, est)
}

fn accepted(raddr: &str, lport: u16, tw: u64, est: u64) -> PeerRow {
    let peer = PeerKey::In {
        raddr: raddr.parse().expect("address"),
        lport,
    };
    counts(peer, tw, 0, 0, est)
}

fn process(pid: u32, comm: &str, tw_per_s: f64, tw: u64, peers: Vec<PeerRow>) -> ProcessRow {
    ProcessRow {
        netns: 0,
        cgroup_id: 0,
        container: None,
        runtime: None,
        pod_uid: None,
        cmdline: None,
        pid,
        comm: comm.to_owned(),
        exited: false,
        timewait_entered: tw,
        timewait_per_s: tw_per_s,
        timewait_now: peers.iter().map(|p| p.timewait_now).sum(),
        fin_wait2_entered: peers.iter().map(|p| p.fin_wait2_entered).sum(),
        fin_wait2_now: peers.iter().map(|p| p.fin_wait2_now).sum(),
        close_wait_now: peers.iter().map(|p| p.close_wait_now).sum(),
        established_now: peers.iter().map(|p| p.established_now).sum(),
        opens: tw + 10,
        opens_per_s: tw_per_s + 0.5,
        closes: tw,
        closes_per_s: tw_per_s,
        resets: 0,
        connect_failures: 0,
        bind_failures: 0,
        failures: Vec::new(),
        timewait_history: Vec::new(),
        close_wait_history: Vec::new(),
        peers,
        ..ProcessRow::default()
    }
}

/// What an on-call screen might look like: a Java service churning connections to Postgres,
/// a curl loop, an nginx with CLOSE_WAIT piling up, and sockets older than twtrace.
pub(super) fn demo_snapshot() -> Snapshot {
    let mut java = process(
        4242,
        "java",
        812.4,
        48_113,
        vec![
            peer("10.0.3.17", 5432, 40_002, 28_950, 0, 12),
            peer("10.0.3.18", 5432, 7_900, 5_610, 0, 4),
            peer("2001:db8::7", 443, 211, 140, 0, 2),
        ],
    );
    java.resets = 37;
    java.timewait_history = (0..60u64).map(|s| 700 + (s * 37) % 230).collect();
    java.close_wait_history = (0..60u64).map(|s| s / 2).collect();
    let mut curl = process(
        31337,
        "curl",
        2.0,
        118,
        vec![peer("93.184.216.34", 443, 118, 59, 0, 0)],
    );
    curl.timewait_history = vec![2; 60];
    let nginx = process(
        811,
        "nginx",
        0.3,
        950,
        vec![
            accepted("10.0.9.4", 443, 600, 30),
            PeerRow {
                close_wait_now: 212,
                ..peer("10.0.3.17", 5432, 350, 2, 212, 3)
            },
            counts(PeerKey::Other, 0, 0, 5, 40),
        ],
    );
    let before = process(
        0,
        BEFORE_START,
        0.0,
        0,
        vec![peer("10.0.3.17", 5432, 0, 3_120, 0, 0)],
    );
    Snapshot {
        schema: crate::model::snapshot::Schema,
        time: "2025-06-01T03:14:15.926Z".parse().expect("time"),
        interval_s: 1.0,
        uptime_s: 3_725.0,
        lost_events: 0,
        unattributed_events: 12,
        totals: Totals {
            namespaces: None,
            timewait_now: 37_881,
            fin_wait2_now: 21,
            timewait_kernel: Some(37_902),
            close_wait_now: 217,
            established_now: 111,
            timewait_entered: 49_181,
            fin_wait2_entered: 30,
            timewait_per_s: 814.7,
            timewait_recovered: 0,
            connect_failures: 0,
            bind_failures: 0,
        },
        processes: vec![java, curl, nginx, before],
        destinations: Vec::new(),
        port_settings: Vec::new(),
    }
}

/// The host's network namespace in [`containerised`].
const HOST_NS: u32 = 4_026_531_833;
/// A pod's namespace whose runtime no cgroup layout names.
const POD_NS: u32 = 4_026_532_417;
const JAVA_ID: &str = "3f9a8b7c6d5e4f30a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";
const JAVA_POD: &str = "6b1e0c5a-2f4d-4c1b-9e8a-7d6c5b4a3f21";

/// [`demo_snapshot`] on a Kubernetes node: java in a containerd container of a pod, nginx in
/// a namespace of its own with no container recognised, curl and the rest on the host, and
/// one row whose namespace is unknown.
fn containerised() -> Snapshot {
    let mut snap = demo_snapshot();
    for p in &mut snap.processes {
        match p.pid {
            4242 => {
                p.netns = 4_026_532_301;
                p.container = Some(JAVA_ID.to_owned());
                p.runtime = Some("containerd");
                p.pod_uid = Some(JAVA_POD.to_owned());
            }
            811 => p.netns = POD_NS,
            31337 => p.netns = HOST_NS,
            _ => {}
        }
    }
    snap.processes.push(process(
        99,
        "sshd",
        0.0,
        1,
        vec![peer("10.0.0.2", 22, 1, 0, 0, 1)],
    ));
    snap.processes.last_mut().expect("row").netns = HOST_NS;
    snap
}

fn app_with(snap: Snapshot) -> App {
    App::new("twtrace — pid 4242", Arc::new(snap))
}

fn draw(app: &App, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    terminal
        .draw(|f| render(f, app, app.snapshot()))
        .expect("draw");
    terminal.backend().buffer().clone()
}

fn lines(buf: &Buffer) -> Vec<String> {
    let area = buf.area;
    (area.top()..area.bottom())
        .map(|y| {
            (area.left()..area.right())
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

fn screen(buf: &Buffer) -> String {
    lines(buf).join("\n")
}

fn has(buf: &Buffer, needle: &str) -> bool {
    lines(buf).iter().any(|l| l.contains(needle))
}

/// The line holding `needle`, and where in it (in cells, which here are chars).
fn find(buf: &Buffer, needle: &str) -> Option<(u16, u16)> {
    lines(buf).iter().enumerate().find_map(|(y, l)| {
        let byte = l.find(needle)?;
        let x = l[..byte].chars().count();
        Some((u16::try_from(x).ok()?, u16::try_from(y).ok()?))
    })
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

/// Types `keys`; `\t` is Tab and `\n` is Enter.
fn press(app: &mut App, keys: &str) -> Flow {
    for c in keys.chars() {
        let code = match c {
            '\t' => KeyCode::Tab,
            '\n' => KeyCode::Enter,
            c => KeyCode::Char(c),
        };
        if handle(app, key(code)) == Flow::Quit {
            return Flow::Quit;
        }
    }
    Flow::Continue
}

fn selected_process(app: &App) -> Option<&ProcessRow> {
    let i = *app.process_rows().get(app.selected())?;
    app.snapshot().processes.get(i)
}

fn many(n: u32) -> Snapshot {
    Snapshot {
        processes: (0..n)
            .map(|i| {
                process(
                    i + 1,
                    &format!("worker{i}"),
                    f64::from(n - i),
                    u64::from(n - i),
                    vec![peer("10.1.0.1", 8000 + (i % 100) as u16, 1, 1, 0, 1)],
                )
            })
            .collect(),
        ..Snapshot::default()
    }
}

// ---- render ------------------------------------------------------------------------------

#[test]
fn demo_screen() {
    let mut app = app_with(demo_snapshot());
    let buf = draw(&app, 120, 12);
    println!("{}\n", screen(&buf));
    assert!(has(&buf, "java"));
    assert!(has(&buf, "10.0.3.17:5432"));
    press(&mut app, "\t");
    println!("{}\n", screen(&draw(&app, 120, 12)));
    press(&mut app, "\t\n");
    println!("{}", screen(&draw(&app, 120, 20)));
}

#[test]
fn empty_snapshot_shows_header_and_waiting_message() {
    let app = app_with(Snapshot::default());
    let buf = draw(&app, 100, 12);
    assert!(has(&buf, "twtrace — pid 4242"), "{}", screen(&buf));
    assert!(
        has(&buf, "TIME_WAIT now 0 +0 orphaned FIN_WAIT2, kernel tw n/a"),
        "{}",
        screen(&buf)
    );
    assert!(has(&buf, "No TCP activity yet"), "{}", screen(&buf));
    assert!(!has(&buf, " UTC"), "no time before the first snapshot");
    // Every view copes with nothing.
    for keys in ["\t", "\t\t\n", "/x\n"] {
        let mut app = app_with(Snapshot::default());
        press(&mut app, keys);
        let buf = draw(&app, 100, 12);
        assert!(has(&buf, "twtrace"), "{}", screen(&buf));
    }
}

#[test]
fn one_row_with_all_columns() {
    let snap = Snapshot {
        processes: vec![{
            let mut p = process(
                77,
                "redis-cli",
                3.25,
                1234,
                vec![peer("127.0.0.1", 6379, 5, 1, 0, 1)],
            );
            p.resets = 9;
            p
        }],
        ..Snapshot::default()
    };
    let app = app_with(snap);
    let buf = draw(&app, 140, 10);
    let text = screen(&buf);
    for col in [
        "PID", "COMM", "TW/s▼", "TW TOTAL", "TW NOW", "CW NOW", "EST NOW", "OPEN/s", "CLOSE/s",
        "RESETS", "CW AGE", "TOP PEER",
    ] {
        assert!(text.contains(col), "{col} missing:\n{text}");
    }
    assert!(has(&buf, "redis-cli"));
    // Rates with one decimal, the top peer formatted.
    assert!(has(&buf, " 3.2 ") || has(&buf, " 3.3 "), "{text}");
    assert!(has(&buf, "127.0.0.1:6379"), "{text}");
    // Numbers are right-aligned under their (right-aligned) titles.
    let (title_x, _) = find(&buf, "TW TOTAL").expect("title");
    let (value_x, _) = find(&buf, "1234").expect("value");
    assert_eq!(title_x + 8, value_x + 4, "{text}");
}

#[test]
fn five_thousand_rows_render_and_select_the_last() {
    let mut app = app_with(many(5_000));
    let buf = draw(&app, 100, 30);
    assert!(has(&buf, "5000 of 5000"), "{}", screen(&buf));
    assert!(has(&buf, "worker0 "));
    handle(&mut app, key(KeyCode::End));
    assert_eq!(app.selected(), 4_999);
    let buf = draw(&app, 100, 30);
    assert!(has(&buf, "worker4999"), "{}", screen(&buf));
    assert!(!has(&buf, "worker0 "));
    // The selected row is drawn reversed.
    let (_, y) = find(&buf, "worker4999").expect("row");
    assert!(
        buf[(3, y)]
            .modifier
            .contains(ratatui::style::Modifier::REVERSED),
        "selected row not highlighted"
    );
    // Paging up from the end moves by what fits: 30 lines less header (2), caption, table
    // header and footer.
    handle(&mut app, key(KeyCode::PageUp));
    assert_eq!(app.selected(), 4_999 - 25);
    handle(&mut app, key(KeyCode::Down));
    assert_eq!(app.selected(), 4_999 - 24);
    let buf = draw(&app, 100, 30);
    assert!(has(&buf, "worker4975"), "{}", screen(&buf));
    // Down at the end stays at the end.
    press(&mut app, "G");
    press(&mut app, "jjj");
    assert_eq!(app.selected(), 4_999);
}

#[test]
fn long_comm_is_truncated() {
    let long = "a-very-long-process-name-that-goes-on-and-on-forever";
    let snap = Snapshot {
        processes: vec![process(5, long, 1.0, 1, vec![])],
        ..Snapshot::default()
    };
    let app = app_with(snap);
    let buf = draw(&app, 100, 8);
    assert!(!has(&buf, long), "{}", screen(&buf));
    assert!(has(&buf, "a-very-long-pr…"), "{}", screen(&buf));
}

#[test]
fn tiny_terminals_do_not_panic() {
    for (w, h) in [(20, 5), (60, 15), (1, 1), (2, 2), (5, 3), (10, 4)] {
        for keys in ["", "\t", "\n", "?", "\t\n", " "] {
            let mut app = app_with(demo_snapshot());
            press(&mut app, keys);
            let _ = draw(&app, w, h);
        }
    }
    // Every size up to 40x8 in every view.
    for w in 0..=40 {
        for h in 0..=8 {
            for keys in ["", "\t", "\n", "?"] {
                let mut app = app_with(demo_snapshot());
                press(&mut app, keys);
                let _ = draw(&app, w, h);
            }
        }
    }
}

#[test]
fn narrow_terminal_keeps_the_essentials() {
    let app = app_with(demo_snapshot());
    let buf = draw(&app, 20, 5);
    let text = screen(&buf);
    assert!(has(&buf, "java"), "{text}");
    assert!(has(&buf, "812.4"), "{text}");

    let buf = draw(&app, 60, 15);
    let text = screen(&buf);
    for s in [
        "PID",
        "COMM",
        "TW/s",
        "TW NOW",
        "java",
        "4242",
        "(before start)",
    ] {
        assert!(text.contains(s), "{s} missing:\n{text}");
    }
    // The least useful columns went first.
    assert!(!text.contains("CLOSE/s"), "{text}");
}

#[test]
fn failed_column_and_header_only_when_calls_failed() {
    let mut snap = demo_snapshot();
    let text = screen(&draw(&app_with(snap.clone()), 160, 14));
    assert!(!text.contains("FAILED"), "{text}");
    assert!(!text.contains("connect() failed"), "{text}");

    let java = snap
        .processes
        .iter_mut()
        .find(|p| p.pid == 4242)
        .expect("java");
    java.connect_failures = 41;
    java.bind_failures = 1;
    java.failures = vec![
        crate::model::snapshot::FailureRow {
            call: crate::event::Call::Connect,
            errno: crate::event::Errno::EADDRNOTAVAIL,
            count: 41,
        },
        crate::model::snapshot::FailureRow {
            call: crate::event::Call::Bind,
            errno: crate::event::Errno::EADDRINUSE,
            count: 1,
        },
    ];
    snap.totals.connect_failures = 41;
    snap.totals.bind_failures = 1;
    let mut app = app_with(snap);
    let buf = draw(&app, 160, 14);
    let text = screen(&buf);
    assert!(text.contains("FAILED"), "{text}");
    assert!(text.contains("connect() failed 41"), "{text}");
    assert!(text.contains("bind() failed 1"), "{text}");
    // Connect and bind failures together in the column.
    let row = text
        .lines()
        .find(|l| l.contains(" java "))
        .expect("java's row");
    assert!(row.contains(" 42 "), "{row}");
    // Sorted on it with `s` from RESETS; the drill-down tells the calls and errnos apart.
    press(&mut app, "0s");
    assert_eq!(app.process_sort(), (ProcCol::Failed, true));
    assert_eq!(selected_process(&app).map(|p| p.pid), Some(4242));
    press(&mut app, "\n");
    let text = screen(&draw(&app, 160, 20));
    assert!(text.contains("connect() EADDRNOTAVAIL 41"), "{text}");
    assert!(text.contains("bind() EADDRINUSE 1"), "{text}");
}

#[test]
fn sorted_column_stays_visible_when_narrow() {
    let mut app = app_with(demo_snapshot());
    press(&mut app, "0"); // RESETS, last to be kept otherwise
    let buf = draw(&app, 40, 10);
    assert!(has(&buf, "RESETS▼"), "{}", screen(&buf));
}

#[test]
fn before_start_row_is_shown_and_set_apart() {
    let app = app_with(demo_snapshot());
    let buf = draw(&app, 120, 12);
    let (x, y) = find(&buf, BEFORE_START).expect("(before start) row");
    assert_eq!(buf[(x, y)].fg, Color::Magenta);
}

#[test]
fn lost_events_are_red_in_the_header() {
    let mut snap = demo_snapshot();
    snap.lost_events = 3;
    let app = app_with(snap);
    let buf = draw(&app, 120, 12);
    let (x, y) = find(&buf, "lost 3").expect("lost in header");
    assert!(y < 2, "lost events not in the header");
    assert_eq!(buf[(x, y)].fg, Color::Red);

    let app = app_with(demo_snapshot());
    let buf = draw(&app, 140, 12);
    let (x, y) = find(&buf, "lost 0").expect("lost in header");
    assert_ne!(buf[(x, y)].fg, Color::Red);
}

#[test]
fn header_shows_kernel_count_beside_ours() {
    let app = app_with(demo_snapshot());
    let buf = draw(&app, 160, 12);
    let text = screen(&buf);
    for s in [
        "TIME_WAIT now 37881 +21 orphaned FIN_WAIT2, kernel tw 37902",
        "CLOSE_WAIT now 217",
        "ESTABLISHED now 111",
        "TW/s 814.7",
        "unattributed 12",
        "up 1h02m",
        "03:14:15 UTC",
    ] {
        assert!(text.contains(s), "{s} missing:\n{text}");
    }
}

#[test]
fn peer_view_groups_and_sums_across_processes() {
    let mut app = app_with(demo_snapshot());
    press(&mut app, "p");
    assert_eq!(app.view(), View::Peers);
    // 10.0.3.17:5432 from java, nginx and (before start) is one row.
    let snap = app.snapshot();
    let g = app
        .groups()
        .iter()
        .find(|g| {
            app.group_peer(snap, g)
                .is_some_and(|r| r.peer == out("10.0.3.17", 5432))
        })
        .expect("group");
    assert_eq!(g.process_count(), 3);
    assert_eq!(g.timewait_entered, 40_002 + 350);
    assert_eq!(g.timewait_now, 28_950 + 2 + 3_120);
    assert_eq!(g.close_wait_now, 212);
    assert_eq!(g.established_now, 12 + 3);
    let behind: Vec<u32> = app.group_processes(snap, g).map(|p| p.pid).collect();
    assert_eq!(behind, [4242, 811, 0], "biggest contributor first");

    let buf = draw(&app, 120, 14);
    let text = screen(&buf);
    assert!(text.contains("40352"), "{text}");
    assert!(
        text.contains("java 4242, nginx 811, (before start)"),
        "{text}"
    );
    assert!(text.contains("10.0.9.4→:443"), "{text}");
    assert!(text.contains("[2001:db8::7]:443"), "{text}");
    // Sorted by TW TOTAL, the capped rest last.
    let first = find(&buf, "10.0.3.17:5432").expect("row").1;
    let second = find(&buf, "10.0.3.18:5432").expect("row").1;
    let other = find(&buf, "(other peers)").expect("row").1;
    assert!(first < second && second < other, "{text}");

    // Enter drills into the first process behind the selected peer.
    handle(&mut app, key(KeyCode::Enter));
    assert_eq!(app.view(), View::Process(4242));
    handle(&mut app, key(KeyCode::Esc));
    assert_eq!(app.view(), View::Peers);
}

#[test]
fn drill_down_shows_peers_and_sparkline() {
    let mut app = app_with(demo_snapshot());
    handle(&mut app, key(KeyCode::Enter));
    assert_eq!(app.view(), View::Process(4242));
    let buf = draw(&app, 120, 24);
    let text = screen(&buf);
    assert!(text.contains("java pid 4242"), "{text}");
    assert!(text.contains("last minute"), "{text}");
    assert!(text.contains("peak 927, latest 813"), "{text}");
    assert!(
        text.contains("CLOSE_WAIT now, last minute: peak 29, latest 29"),
        "{text}"
    );
    assert!(text.contains("10.0.3.18:5432"), "{text}");
    // Sparkline bars.
    assert!(
        text.chars().any(|c| ('▁'..='█').contains(&c)),
        "no sparkline:\n{text}"
    );
    // Without history: a caption instead of bars, no panic.
    press(&mut app, "\t\t");
    let mut snap = demo_snapshot();
    snap.processes[0].timewait_history.clear();
    app.set_snapshot(Arc::new(snap));
    handle(&mut app, key(KeyCode::Enter));
    let buf = draw(&app, 120, 24);
    assert!(has(&buf, "no history yet"), "{}", screen(&buf));
}

#[test]
fn drill_down_into_a_process_that_left() {
    let mut app = app_with(demo_snapshot());
    handle(&mut app, key(KeyCode::Enter));
    let mut snap = demo_snapshot();
    snap.processes.remove(0);
    app.set_snapshot(Arc::new(snap));
    assert_eq!(app.view(), View::Process(4242));
    let buf = draw(&app, 100, 12);
    assert!(has(&buf, "no longer in the snapshot"), "{}", screen(&buf));
    handle(&mut app, key(KeyCode::Backspace));
    assert_eq!(app.view(), View::Processes);
}

#[test]
fn help_overlay() {
    let mut app = app_with(demo_snapshot());
    press(&mut app, "?");
    let buf = draw(&app, 100, 30);
    assert!(has(&buf, "pause / resume"), "{}", screen(&buf));
    assert!(
        has(&buf, "show / hide the CONTAINER column"),
        "{}",
        screen(&buf)
    );
    assert!(has(&buf, "ns:INODE"), "{}", screen(&buf));
    handle(&mut app, key(KeyCode::Esc));
    assert!(!app.help_shown());
    let buf = draw(&app, 100, 30);
    assert!(!has(&buf, "pause / resume"));
    assert!(has(&buf, "? help"), "footer help line:\n{}", screen(&buf));
}

#[test]
fn container_column_toggles_with_c() {
    let mut app = app_with(containerised());
    assert!(!app.containers_shown(), "off by default");
    assert_eq!(app.common_netns(), HOST_NS);
    let buf = draw(&app, 140, 12);
    assert!(!has(&buf, "CONTAINER"), "{}", screen(&buf));
    assert!(!has(&buf, &JAVA_ID[..12]), "{}", screen(&buf));

    press(&mut app, "c");
    assert!(app.containers_shown());
    let buf = draw(&app, 140, 12);
    let text = screen(&buf);
    // After COMM, before TW/s.
    let (comm_x, header_y) = find(&buf, "COMM").expect("COMM");
    let (x, y) = find(&buf, "CONTAINER").expect("CONTAINER");
    let (tw_x, _) = find(&buf, "TW/s").expect("TW/s");
    assert!(y == header_y && comm_x < x && x < tw_x, "{text}");
    // Each row's cell, left-aligned under the title.
    let cell = |comm: &str| {
        let (_, y) = find(&buf, comm).expect("row");
        lines(&buf)[usize::from(y)]
            .chars()
            .skip(usize::from(x))
            .take(13)
            .collect::<String>()
    };
    // The short id, as `docker ps` shows it.
    assert_eq!(cell("java"), format!("{} ", &JAVA_ID[..12]), "{text}");
    assert!(
        !text.contains(&JAVA_ID[..13]),
        "the id is cut at 12:
{text}"
    );
    // No container known, but not the namespace most rows share: it stands out.
    assert_eq!(cell("nginx"), format!("ns:{POD_NS}"), "{text}");
    // On the host.
    assert_eq!(cell("curl").trim_end(), "-", "{text}");
    assert_eq!(cell("sshd").trim_end(), "-", "{text}");
    // Namespace unknown.
    assert_eq!(cell(BEFORE_START).trim_end(), "-", "{text}");

    // The digit keys pick the same columns whether it is shown or not.
    press(&mut app, "4");
    assert_eq!(app.process_sort(), (ProcCol::TwTotal, true));
    let buf = draw(&app, 140, 12);
    assert!(has(&buf, "TW TOTAL▼"), "{}", screen(&buf));

    // In the other views it changes nothing; c again hides it.
    press(&mut app, "\t");
    let buf = draw(&app, 140, 12);
    assert!(!has(&buf, "CONTAINER"), "{}", screen(&buf));
    press(&mut app, "\tc");
    assert!(!app.containers_shown());
    let buf = draw(&app, 140, 12);
    assert!(!has(&buf, "CONTAINER"), "{}", screen(&buf));
    assert!(!has(&buf, &JAVA_ID[..12]), "{}", screen(&buf));
    assert!(!has(&buf, "ns:"), "{}", screen(&buf));
}

#[test]
fn container_column_without_containers_or_namespaces() {
    // A replay (no containers) where every row shares one namespace, or none is known: a
    // column of dashes, as narrow as its title.
    for netns in [0, HOST_NS] {
        let mut snap = demo_snapshot();
        for p in &mut snap.processes {
            p.netns = netns;
        }
        let mut app = app_with(snap);
        press(&mut app, "c");
        assert_eq!(app.common_netns(), netns);
        let buf = draw(&app, 140, 12);
        let text = screen(&buf);
        let header = format!("COMM{}CONTAINER{}TW/s▼", " ".repeat(11), " ".repeat(4));
        assert!(has(&buf, &header), "{text}");
        let row = format!("java{}-{}812.4", " ".repeat(11), " ".repeat(12));
        assert!(has(&buf, &row), "{text}");
        assert!(!text.contains("ns:"), "{text}");
    }
}

#[test]
fn container_column_fits_80_columns() {
    let mut app = app_with(containerised());
    press(&mut app, "c");
    let buf = draw(&app, 80, 14);
    let text = screen(&buf);
    println!("{text}");
    // The id whole, the essentials still there.
    for s in [
        "PID",
        "COMM",
        "CONTAINER",
        "TW/s▼",
        "TW NOW",
        "CW NOW",
        "java",
        "4242",
        "812.4",
        &JAVA_ID[..12],
        "ns:4026532417",
        "(before start)",
    ] {
        assert!(
            text.contains(s),
            "{s} missing:
{text}"
        );
    }
    assert!(
        !text.contains('…'),
        "nothing cut:
{text}"
    );
    // Numbers still right-aligned under their titles, the id left-aligned under its own.
    let (title_x, _) = find(&buf, "TW/s▼").expect("title");
    let (value_x, _) = find(&buf, "812.4").expect("value");
    assert_eq!(title_x, value_x, "{text}");
    let (id_title_x, _) = find(&buf, "CONTAINER").expect("title");
    let (id_x, _) = find(&buf, &JAVA_ID[..12]).expect("id");
    assert_eq!(id_title_x, id_x, "{text}");
    // Without it, the same terminal has room for the top peer again.
    press(&mut app, "c");
    let buf = draw(&app, 80, 14);
    assert!(has(&buf, "TOP PEER"), "{}", screen(&buf));
}

#[test]
fn container_column_on_tiny_terminals_does_not_panic() {
    for w in 0..=50 {
        for h in 0..=8 {
            for keys in ["c", "c\n", "c?"] {
                let mut app = app_with(containerised());
                press(&mut app, keys);
                let _ = draw(&app, w, h);
            }
        }
    }
}

#[test]
fn drill_down_header_says_where_the_process_runs() {
    let mut app = app_with(containerised());
    handle(&mut app, key(KeyCode::Enter));
    assert_eq!(app.view(), View::Process(4242));
    for (w, h) in [(160, 24), (120, 20), (80, 24)] {
        let buf = draw(&app, w, h);
        let text = screen(&buf);
        for s in [
            "java pid 4242".to_owned(),
            format!("container {JAVA_ID}"),
            "runtime containerd".to_owned(),
            format!("pod {JAVA_POD}"),
            "netns 4026532301".to_owned(),
            // The peer table is still there.
            "10.0.3.18:5432".to_owned(),
        ] {
            assert!(text.contains(&s), "{w}x{h}: {s} missing:\n{text}");
        }
        // On lines of their own, under the counts.
        let (_, counts_y) = find(&buf, "java pid 4242").expect("title");
        let (_, id_y) = find(&buf, "container ").expect("id");
        assert!(id_y > counts_y, "{text}");
    }
    // A process with only a namespace says just that; one with nothing known, nothing.
    press(&mut app, "\t\t/nginx\n\n");
    assert_eq!(app.view(), View::Process(811));
    let buf = draw(&app, 120, 24);
    assert!(has(&buf, &format!("netns {POD_NS}")), "{}", screen(&buf));
    assert!(!has(&buf, "container "), "{}", screen(&buf));
    assert!(!has(&buf, "runtime "), "{}", screen(&buf));
    let mut app = app_with(demo_snapshot());
    handle(&mut app, key(KeyCode::Enter));
    let buf = draw(&app, 120, 24);
    assert!(!has(&buf, "netns "), "{}", screen(&buf));
    let mut app = app_with(containerised());
    handle(&mut app, key(KeyCode::Enter));
    // Narrower than the full id: the short one, never a cut one.
    let buf = draw(&app, 60, 20);
    let text = screen(&buf);
    assert!(
        has(&buf, &format!("container {}  ", &JAVA_ID[..12])),
        "{text}"
    );
    assert!(!text.contains(&JAVA_ID[..13]), "{text}");
    // Small drill-downs keep the table.
    for h in 0..=12 {
        let buf = draw(&app, 80, h);
        if h >= 10 {
            assert!(has(&buf, "10.0.3.17:5432"), "{h}:\n{}", screen(&buf));
        }
    }
}

#[test]
fn common_netns_is_the_most_shared_then_the_lowest() {
    use std::collections::HashMap;

    use super::rows::{common_netns, container_label};

    let mut counts = HashMap::new();
    let row = |netns: u32| ProcessRow {
        netns,
        ..ProcessRow::default()
    };
    assert_eq!(common_netns(&[], &mut counts), 0);
    // Unknown namespaces do not count, however many.
    let rows = [row(0), row(0), row(0), row(7)];
    assert_eq!(common_netns(&rows, &mut counts), 7);
    let rows = [row(9), row(8), row(9), row(8), row(5)];
    assert_eq!(
        common_netns(&rows, &mut counts),
        8,
        "a tie goes to the lowest"
    );
    let rows = [row(9), row(8), row(9)];
    assert_eq!(common_netns(&rows, &mut counts), 9);
    // A container wins over its namespace, shared or not.
    let mut p = row(9);
    p.container = Some("abc".to_owned());
    assert_eq!(container_label(&p, 9), "abc", "a short id given as is");
    p.container = Some(JAVA_ID.to_owned());
    assert_eq!(container_label(&p, 1), JAVA_ID[..12]);
    p.container = None;
    assert_eq!(container_label(&p, 9), "-");
    assert_eq!(container_label(&p, 1), "ns:9");
    assert_eq!(container_label(&row(0), 1), "-");
}

#[test]
fn filter_matches_container_ids_and_namespaces() {
    let pids = |app: &App| -> Vec<u32> {
        app.process_rows()
            .iter()
            .map(|&i| app.snapshot().processes[i].pid)
            .collect()
    };
    // With the column hidden too: the filter means the same whatever is shown.
    let mut app = app_with(containerised());
    for f in [&JAVA_ID[..12], JAVA_ID, "3F9A", &JAVA_ID[..3]] {
        press(&mut app, &format!("/{f}\n"));
        assert_eq!(pids(&app), [4242], "{f}");
        handle(&mut app, key(KeyCode::Esc));
    }
    // A prefix, not any substring of the id.
    press(&mut app, &format!("/{}\n", &JAVA_ID[1..13]));
    assert!(pids(&app).is_empty());
    handle(&mut app, key(KeyCode::Esc));
    // An inode, exactly: every process in that namespace.
    press(&mut app, &format!("/{HOST_NS}\n"));
    assert_eq!(pids(&app), [31337, 99]);
    handle(&mut app, key(KeyCode::Esc));
    press(&mut app, &format!("/{}\n", &POD_NS.to_string()[..6]));
    assert!(pids(&app).is_empty(), "not a prefix of an inode");
    handle(&mut app, key(KeyCode::Esc));
    // The peer view keeps the peers of matching processes.
    press(&mut app, &format!("\t/{}\n", &JAVA_ID[..12]));
    assert_eq!(app.peer_rows().len(), 3);
}

// ---- input -------------------------------------------------------------------------------

#[test]
fn sort_cycling_reversing_and_direct_pick() {
    let mut app = app_with(demo_snapshot());
    assert_eq!(app.process_sort(), (ProcCol::TwPerS, true));
    assert_eq!(selected_process(&app).map(|p| p.pid), Some(4242));
    press(&mut app, "s");
    assert_eq!(app.process_sort(), (ProcCol::TwTotal, true));
    press(&mut app, "S");
    assert_eq!(app.process_sort(), (ProcCol::TwTotal, false));
    press(&mut app, "r");
    assert_eq!(app.process_sort(), (ProcCol::TwTotal, true));
    press(&mut app, "1");
    assert_eq!(app.process_sort(), (ProcCol::Pid, false));
    let pids: Vec<u32> = app
        .process_rows()
        .iter()
        .map(|&i| app.snapshot().processes[i].pid)
        .collect();
    assert_eq!(pids, [0, 811, 4242, 31337]);
    // The selection followed java when the rows moved.
    assert_eq!(selected_process(&app).map(|p| p.pid), Some(4242));
    press(&mut app, "1");
    assert_eq!(app.process_sort(), (ProcCol::Pid, true));
    press(&mut app, "2");
    assert_eq!(app.process_sort(), (ProcCol::Comm, false));
    // `s` after the tenth column (RESETS, key 0) reaches FAILED, then wraps around.
    press(&mut app, "0s");
    assert_eq!(app.process_sort(), (ProcCol::Failed, true));
    press(&mut app, "s");
    assert_eq!(app.process_sort(), (ProcCol::Pid, false));
    // Each view has its own sort.
    press(&mut app, "\t");
    assert_eq!(app.peer_sort(), (PeerCol::TwTotal, true));
    press(&mut app, "6");
    assert_eq!(app.peer_sort(), (PeerCol::Processes, true));
    press(&mut app, "9"); // no ninth column here: nothing happens
    assert_eq!(app.peer_sort(), (PeerCol::Processes, true));
    press(&mut app, "\t");
    assert_eq!(app.process_sort(), (ProcCol::Pid, false));
}

#[test]
fn filter_editing() {
    let mut app = app_with(demo_snapshot());
    press(&mut app, "/");
    assert!(app.editing_filter());
    // While editing, keys are text: q does not quit, s does not sort.
    assert_eq!(press(&mut app, "cuq"), Flow::Continue);
    assert_eq!(app.filter(), "cuq");
    assert!(app.process_rows().is_empty());
    let buf = draw(&app, 100, 10);
    assert!(
        has(&buf, "No process matches the filter “cuq”"),
        "{}",
        screen(&buf)
    );
    handle(&mut app, key(KeyCode::Backspace));
    press(&mut app, "R"); // case-insensitive
    assert_eq!(app.filter(), "cuR");
    assert_eq!(app.process_sort(), (ProcCol::TwPerS, true));
    handle(&mut app, key(KeyCode::Enter));
    assert!(!app.editing_filter());
    assert_eq!(
        selected_process(&app).map(|p| p.comm.as_str()),
        Some("curl")
    );
    assert_eq!(app.process_rows().len(), 1);
    let buf = draw(&app, 100, 10);
    assert!(has(&buf, "filter cuR"), "{}", screen(&buf));

    // A port matches the processes with a peer on it; a pid matches the process.
    press(&mut app, "/");
    handle(&mut app, key(KeyCode::Esc));
    assert!(!app.editing_filter());
    assert_eq!(app.filter(), "");
    assert_eq!(app.process_rows().len(), 4);
    press(&mut app, "/5432\n");
    let pids: Vec<u32> = app
        .process_rows()
        .iter()
        .map(|&i| app.snapshot().processes[i].pid)
        .collect();
    assert_eq!(pids, [4242, 811, 0]);
    handle(&mut app, key(KeyCode::Esc)); // clears an accepted filter before quitting
    assert_eq!(app.filter(), "");
    press(&mut app, "/811\n");
    assert_eq!(app.process_rows().len(), 1);
    handle(&mut app, key(KeyCode::Esc));
    // An accepted port (→:443) and an address substring.
    press(&mut app, "/10.0.9\n");
    assert_eq!(selected_process(&app).map(|p| p.pid), Some(811));
    handle(&mut app, key(KeyCode::Esc));
    // In the peer view a filter keeps the peers of matching processes.
    press(&mut app, "\t/curl\n");
    assert_eq!(app.peer_rows().len(), 1);
    // In the drill-down, a port shows only that peer of the process.
    press(&mut app, "\t");
    handle(&mut app, key(KeyCode::Esc));
    press(&mut app, "/443\n");
    handle(&mut app, key(KeyCode::Enter));
    assert_eq!(app.view(), View::Process(4242));
    assert_eq!(app.drill_rows().len(), 1);
}

#[test]
fn pause_freezes_the_snapshot() {
    let mut app = app_with(demo_snapshot());
    press(&mut app, " ");
    assert!(app.is_paused());
    let mut newer = demo_snapshot();
    newer.totals.timewait_now = 1;
    newer.processes.retain(|p| p.pid != 4242);
    app.set_snapshot(Arc::new(newer));
    // Still the old picture.
    assert_eq!(app.snapshot().totals.timewait_now, 37_881);
    assert_eq!(app.process_rows().len(), 4);
    let buf = draw(&app, 120, 12);
    assert!(has(&buf, "PAUSED"), "{}", screen(&buf));
    assert!(has(&buf, "java"));
    // Resuming jumps to the newest.
    press(&mut app, " ");
    assert!(!app.is_paused());
    assert_eq!(app.snapshot().totals.timewait_now, 1);
    assert_eq!(app.process_rows().len(), 3);
    let buf = draw(&app, 120, 12);
    assert!(!has(&buf, "PAUSED"));
    assert!(!has(&buf, "java"));
}

#[test]
fn selection_follows_the_process_across_snapshots() {
    let mut app = app_with(demo_snapshot());
    press(&mut app, "j");
    assert_eq!(selected_process(&app).map(|p| p.pid), Some(31337));
    // curl becomes the busiest: it moves to the top, the selection with it.
    let mut snap = demo_snapshot();
    snap.processes[1].timewait_per_s = 5_000.0;
    app.set_snapshot(Arc::new(snap));
    assert_eq!(app.selected(), 0);
    assert_eq!(selected_process(&app).map(|p| p.pid), Some(31337));
}

#[test]
fn drill_down_and_back() {
    let mut app = app_with(demo_snapshot());
    press(&mut app, "jj");
    handle(&mut app, key(KeyCode::Enter));
    assert_eq!(app.view(), View::Process(811));
    assert_eq!(app.drill_rows().len(), 3);
    press(&mut app, "j");
    assert_eq!(app.selected(), 1);
    // The drill-down has its own sort; "other" stays last whatever the direction.
    press(&mut app, "S");
    assert_eq!(app.drill_sort(), (PeerCol::TwTotal, false));
    let p = &app.snapshot().processes[app.drill_process().expect("drilled")];
    let last = *app.drill_rows().last().expect("rows");
    assert_eq!(p.peers[last].peer, PeerKey::Other);
    // Esc goes back, not out; the list keeps its selection.
    assert_eq!(handle(&mut app, key(KeyCode::Esc)), Flow::Continue);
    assert_eq!(app.view(), View::Processes);
    assert_eq!(selected_process(&app).map(|p| p.pid), Some(811));
    // Tab from a drill-down goes to the other list.
    handle(&mut app, key(KeyCode::Enter));
    handle(&mut app, key(KeyCode::Tab));
    assert_eq!(app.view(), View::Peers);
}

#[test]
fn quitting() {
    let mut app = app_with(demo_snapshot());
    assert_eq!(press(&mut app, "q"), Flow::Quit);
    assert_eq!(handle(&mut app, key(KeyCode::Esc)), Flow::Quit);
    press(&mut app, "/");
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(
        handle(&mut app, ctrl_c),
        Flow::Quit,
        "Ctrl-C quits even while typing"
    );
    // Esc closes the help before it quits.
    let mut app = app_with(demo_snapshot());
    press(&mut app, "?");
    assert_eq!(handle(&mut app, key(KeyCode::Esc)), Flow::Continue);
    assert_eq!(handle(&mut app, key(KeyCode::Esc)), Flow::Quit);
}

#[test]
fn no_color_takes_out_colours_and_keeps_the_other_marks() {
    let mut snap = demo_snapshot();
    snap.lost_events = 3;
    let app = app_with(snap);
    let mut buf = draw(&app, 120, 12);
    let (x, y) = find(&buf, "lost 3").expect("lost in header");
    assert_eq!(buf[(x, y)].fg, Color::Red);
    let text = screen(&buf);
    let marks: Vec<_> = buf.content.iter().map(|c| c.modifier).collect();
    strip_colors(&mut buf);
    assert!(
        buf.content
            .iter()
            .all(|c| c.fg == Color::Reset && c.bg == Color::Reset),
        "a colour is left"
    );
    assert_eq!(screen(&buf), text, "the same text");
    let after: Vec<_> = buf.content.iter().map(|c| c.modifier).collect();
    assert_eq!(after, marks, "bold, reversed and the rest stay");
}
