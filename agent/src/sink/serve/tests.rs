//! The folding rule and the exposition, parsed back.

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::model::snapshot::{ProcessRow, Snapshot};

fn label(comm: &str) -> CommLabels {
    CommLabels {
        comm: comm.to_owned(),
        container: String::new(),
    }
}

fn row(pid: u32, comm: &str, timewait_entered: u64) -> ProcessRow {
    ProcessRow {
        pid,
        comm: comm.to_owned(),
        timewait_entered,
        closes: timewait_entered,
        timewait_now: timewait_entered,
        ..ProcessRow::default()
    }
}

/// Parses the Prometheus text format back: `name{labels} value` lines into a map from the
/// series (name and labels as written) to the value; comments left out.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value.parse().expect("a number");
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "series {series} twice"
        );
    }
    out
}

fn series(state: &State) -> BTreeMap<String, f64> {
    let (text, ct) = exposition(state, Some((1.5, 4096)), false).expect("encodes");
    assert!(ct.starts_with("text/plain; version=0.0.4"));
    parse(&text)
}

#[test]
fn five_hundred_comms_give_at_most_k_plus_one_series() {
    let k = 20;
    let mut state = State::default();
    let mut seen = Seen::new();
    for round in 1..=3u64 {
        let snap = Snapshot {
            processes: (0..500)
                .map(|i| row(1000 + i, &format!("comm{i}"), u64::from(i) * round))
                .collect(),
            ..Snapshot::default()
        };
        fold_snapshot(&mut state, &mut seen, &snap, k);
        let all = series(&state);
        for name in [
            "twtrace_timewait_entered_total",
            "twtrace_closes_total",
            "twtrace_timewait_sockets",
        ] {
            let n = all
                .keys()
                .filter(|s| s.starts_with(&format!("{name}{{")))
                .count();
            assert!(n <= k + 1, "{name}: {n} series");
            assert_eq!(n, k + 1, "{name}: K own and other");
            // The sum over the series is the host's total.
            let sum: f64 = all
                .iter()
                .filter(|(s, _)| s.starts_with(&format!("{name}{{")))
                .map(|(_, v)| v)
                .sum();
            let total: u64 = (0..500u64).map(|i| i * round).sum();
            assert_eq!(sum, total as f64, "{name}");
        }
        // The largest by value have their own series.
        assert_eq!(
            all.get(r#"twtrace_timewait_entered_total{comm="comm499",container=""}"#),
            Some(&(499.0 * round as f64)),
        );
        assert!(!all.contains_key(r#"twtrace_timewait_entered_total{comm="comm0",container=""}"#));
    }
}

#[test]
fn counters_stay_monotonic_as_labels_enter_and_leave_the_top() {
    let mut fold = CounterFold::default();
    let mut last: HashMap<CommLabels, u64> = HashMap::new();
    let mut check = |fold: &CounterFold| {
        let (own, other) = fold.series();
        let mut now: HashMap<CommLabels, u64> = own.into_iter().collect();
        now.insert(CommLabels::other(), other);
        for (l, v) in &now {
            if let Some(before) = last.get(l) {
                assert!(v >= before, "{l:?} fell from {before} to {v}");
            }
        }
        // A label without a series now starts again from 0 if it comes back.
        last = now;
    };
    // a leads, then b overtakes it, then a comes back.
    fold.add(&label("a"), 10);
    fold.add(&label("b"), 5);
    fold.refold(1);
    check(&fold);
    assert_eq!(fold.series(), (vec![(label("a"), 10)], 5));
    fold.add(&label("b"), 10);
    fold.refold(1);
    check(&fold);
    // b's first 5 stay in "other" (already reported there), its series counts the next 10;
    // a's 10 go back to "other".
    assert_eq!(fold.series(), (vec![(label("b"), 10)], 15));
    fold.add(&label("a"), 20);
    fold.refold(1);
    check(&fold);
    // a (30) leads again: "other" keeps its earlier 10, its new series holds the last 20.
    assert_eq!(fold.series(), (vec![(label("a"), 20)], 25));
    let (own, other) = fold.series();
    assert_eq!(own.iter().map(|(_, v)| v).sum::<u64>() + other, 45);
}

#[test]
fn a_label_seen_first_in_the_top_counts_from_zero_exactly() {
    let mut state = State::default();
    let mut seen = Seen::new();
    let snap = |n| Snapshot {
        processes: vec![row(7, "client", n), row(8, "server", 0)],
        ..Snapshot::default()
    };
    fold_snapshot(&mut state, &mut seen, &snap(3), 20);
    fold_snapshot(&mut state, &mut seen, &snap(40), 20);
    // The process's row goes (it exited and went idle): its count stays.
    fold_snapshot(&mut state, &mut seen, &Snapshot::default(), 20);
    // A new process behind the same pid and name counts from its own 0.
    fold_snapshot(&mut state, &mut seen, &snap(2), 20);
    let all = series(&state);
    assert_eq!(
        all[r#"twtrace_timewait_entered_total{comm="client",container=""}"#],
        42.0
    );
    assert_eq!(
        all[r#"twtrace_timewait_entered_total{comm="other",container=""}"#],
        0.0
    );
    assert!(!all.contains_key(r#"twtrace_timewait_entered_total{comm="server",container=""}"#));
}

#[test]
fn gauges_fold_by_sum_and_ages_by_max() {
    let values: HashMap<CommLabels, f64> = [("a", 5.0), ("b", 3.0), ("c", 2.0), ("d", 0.0)]
        .into_iter()
        .map(|(c, v)| (label(c), v))
        .collect();
    assert_eq!(
        fold_gauge(&values, 1, Rest::Sum),
        (vec![(label("a"), 5.0)], 5.0)
    );
    assert_eq!(
        fold_gauge(&values, 1, Rest::Max),
        (vec![(label("a"), 5.0)], 3.0)
    );
}

#[test]
fn exposition_names_units_escaping_and_openmetrics() {
    let mut state = State::default();
    let mut seen = Seen::new();
    let mut r = row(7, "we\"ird\nname", 4);
    r.container = Some("abc123".to_owned());
    r.close_wait_now = 2;
    r.close_wait_oldest_s = 12.5;
    let snap = Snapshot {
        processes: vec![r],
        ..Snapshot::default()
    };
    fold_snapshot(&mut state, &mut seen, &snap, 20);
    state.lost = 3;
    state.skipped = 1;
    state.timewait_kernel = Some(9);
    state.port_pool = vec![("127.0.0.1:80".to_owned(), 0.25)];
    let all = series(&state);
    let want = [
        (
            r#"twtrace_timewait_entered_total{comm="we\"ird\nname",container="abc123"}"#,
            4.0,
        ),
        (
            r#"twtrace_close_wait_sockets{comm="we\"ird\nname",container="abc123"}"#,
            2.0,
        ),
        (
            r#"twtrace_close_wait_oldest_seconds{comm="we\"ird\nname",container="abc123"}"#,
            12.5,
        ),
        ("twtrace_kernel_timewait_sockets", 9.0),
        (
            r#"twtrace_port_pool_used_ratio{destination="127.0.0.1:80"}"#,
            0.25,
        ),
        ("twtrace_events_lost_total", 3.0),
        ("twtrace_events_skipped_total", 1.0),
        ("twtrace_agent_cpu_seconds_total", 1.5),
        ("twtrace_agent_resident_memory_bytes", 4096.0),
    ];
    for (s, v) in want {
        assert_eq!(all.get(s), Some(&v), "{s} in {all:#?}");
    }
    for name in METRICS {
        assert!(
            all.keys()
                .any(|s| s == name || s.starts_with(&format!("{name}{{"))),
            "{name} not served"
        );
    }
    let (om, ct) = exposition(&state, None, true).expect("encodes");
    assert!(ct.starts_with("application/openmetrics-text"));
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# UNIT twtrace_close_wait_oldest_seconds seconds"));
}

#[test]
fn health_needs_fresh_stats_without_losses() {
    let now = std::time::Instant::now();
    let mut state = State::default();
    assert!(state.unhealthy(now).is_some());
    state.last_stats = Some(now);
    assert_eq!(state.unhealthy(now), None);
    state.lost_last_interval = 4;
    assert!(
        state
            .unhealthy(now)
            .is_some_and(|w| w.starts_with("4 events lost"))
    );
    state.lost_last_interval = 0;
    assert!(
        state
            .unhealthy(now + std::time::Duration::from_secs(6))
            .is_some_and(|w| w.contains("no statistics"))
    );
}

#[test]
fn requests_are_parsed() {
    use super::http::{Request, parse};
    assert_eq!(
        parse(
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
        ),
        Some(Request {
            method: "GET".into(),
            path: "/metrics".into(),
            openmetrics: true
        })
    );
    assert_eq!(
        parse("GET /healthz HTTP/1.0\r\n\r\n").map(|r| (r.path, r.openmetrics)),
        Some(("/healthz".into(), false))
    );
}

/// The Grafana dashboard (deploy/grafana/twtrace.json) queries only metrics the exporter serves.
#[test]
fn the_dashboard_queries_served_metrics() {
    let text = include_str!("../../../../deploy/grafana/twtrace.json");
    let json: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("expr", Some(e)) => out.push(e),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    assert!(exprs.len() >= 4, "queries: {exprs:?}");
    let mut names = 0;
    for expr in exprs {
        let mut rest = expr;
        while let Some(at) = rest.find("twtrace_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            assert!(METRICS.contains(&name), "{name} in {expr:?} is not served");
            names += 1;
            rest = &tail[end..];
        }
    }
    assert!(names >= 4);
}

/// A pid reused by a new process of the same name (the model shows both rows), the old row
/// going later, and a process that calls exec(): every connection counted once.
#[test]
fn reused_pids_and_exec_count_once() {
    let mut state = State::default();
    let mut seen = Seen::new();
    let snap = |rows: Vec<ProcessRow>| Snapshot {
        processes: rows,
        ..Snapshot::default()
    };
    fold_snapshot(&mut state, &mut seen, &snap(vec![row(7, "w", 5)]), 20);
    let exited = ProcessRow {
        exited: true,
        ..row(7, "w", 5)
    };
    fold_snapshot(
        &mut state,
        &mut seen,
        &snap(vec![row(7, "w", 1), exited.clone()]),
        20,
    );
    fold_snapshot(
        &mut state,
        &mut seen,
        &snap(vec![exited, row(7, "w", 3)]),
        20,
    );
    // The old row ages out.
    fold_snapshot(&mut state, &mut seen, &snap(vec![row(7, "w", 4)]), 20);
    // The new process execs: its row keeps its counts under its new name.
    fold_snapshot(&mut state, &mut seen, &snap(vec![row(7, "curl", 6)]), 20);
    let all = series(&state);
    assert_eq!(
        all[r#"twtrace_timewait_entered_total{comm="w",container=""}"#],
        9.0
    );
    assert_eq!(
        all[r#"twtrace_timewait_entered_total{comm="curl",container=""}"#],
        2.0
    );
}
