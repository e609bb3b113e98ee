//! Aggregation: each mode's rounds summed up into one table row, every tracer against the
//! reference (a) of its own round.

use std::collections::BTreeMap;

use super::{
    calibrate::Calibration,
    children::STOP_TIMEOUT,
    measure::{Exactness, Outcome, Sample, TracerSample},
    mode::Mode,
};

/// Minimum, median and maximum of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }
}

/// One table row: a mode over all rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub mode: Mode,
    pub result: RowResult,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RowResult {
    Unavailable(String),
    /// Boxed: the statistics are much larger than the reason.
    Measured(Box<Stats>),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Rounds measured.
    pub rounds: usize,
    pub rate: Option<Spread>,
    /// Rate over the same round's (a).
    pub ratio: Option<Spread>,
    /// Summed over rounds.
    pub expected: u64,
    pub received: Option<u64>,
    pub lost: Option<u64>,
    /// Of the lost, skipped by the kernel; summed over the rounds that said.
    pub skipped: u64,
    pub cpu_us_per_event: Option<Spread>,
    pub startup_cpu_secs: Option<Spread>,
    pub peak_rss_kib: Option<u64>,
    /// The recording's size per event received (`record -o FILE`).
    pub file_bytes_per_event: Option<Spread>,
    /// The leaderboard's per-pid TIME_WAIT counts against the generators' connections.
    pub exactness: Option<ExactnessStats>,
    /// Problems worth a note under the table.
    pub notes: Vec<String>,
}

/// Generators compared over all rounds, and how many of them the leaderboard got wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactnessStats {
    pub checked: usize,
    pub mismatched: usize,
}

impl Row {
    pub fn aggregate(
        mode: Mode,
        results: &BTreeMap<Mode, Vec<Outcome>>,
        cal: &Calibration,
    ) -> Self {
        let outcomes = results.get(&mode).map(Vec::as_slice).unwrap_or_default();
        let references = results
            .get(&Mode::None)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let measured: Vec<(usize, &Sample)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(round, o)| Some((round, o.sample()?)))
            .collect();
        if measured.is_empty() {
            let why = outcomes
                .iter()
                .find_map(|o| match o {
                    Outcome::Unavailable(why) | Outcome::Failed(why) => Some(why.clone()),
                    Outcome::Measured(_) => None,
                })
                .unwrap_or_else(|| "not measured".to_owned());
            return Self {
                mode,
                result: RowResult::Unavailable(why),
            };
        }

        let mut stats = Stats {
            rounds: measured.len(),
            ..Stats::default()
        };
        let rates: Vec<f64> = measured.iter().map(|(_, s)| s.rate).collect();
        stats.rate = Spread::of(&rates);
        let ratios: Vec<f64> = measured
            .iter()
            .filter_map(|&(round, s)| {
                let reference = references.get(round)?.sample()?.rate;
                (reference > 0.0).then(|| s.rate / reference)
            })
            .collect();
        stats.ratio = Spread::of(&ratios);
        let tracers: Vec<(u64, &TracerSample)> = measured
            .iter()
            .filter_map(|(_, s)| {
                Some((
                    cal.expected(s.connections, s.generators),
                    s.tracer.as_deref()?,
                ))
            })
            .collect();
        if !tracers.is_empty() {
            stats.expected = tracers.iter().map(|&(e, _)| e).sum();
            stats.received = tracers.iter().map(|(_, t)| t.received).sum();
            stats.lost = tracers.iter().map(|(_, t)| t.lost).sum();
            stats.skipped = tracers.iter().filter_map(|(_, t)| t.skipped).sum();
            let per_event: Vec<f64> = tracers
                .iter()
                .filter_map(|&(expected, t)| {
                    // Per event received; when the tracer did not say, per event expected.
                    let events = t.received.unwrap_or(expected);
                    (events > 0).then_some(t.cpu_secs? * 1e6 / events as f64)
                })
                .collect();
            stats.cpu_us_per_event = Spread::of(&per_event);
            let startup: Vec<f64> = tracers
                .iter()
                .filter_map(|(_, t)| t.startup_cpu_secs)
                .collect();
            stats.startup_cpu_secs = Spread::of(&startup);
            stats.peak_rss_kib = tracers.iter().filter_map(|(_, t)| t.peak_rss_kib).max();
            let file: Vec<f64> = tracers
                .iter()
                .filter_map(|(_, t)| {
                    let events = t.received.filter(|&r| r > 0)?;
                    Some(t.file_bytes? as f64 / events as f64)
                })
                .collect();
            stats.file_bytes_per_event = Spread::of(&file);
            if tracers.iter().any(|(_, t)| t.received.is_none()) {
                stats.notes.push(
                    "no event count from the tracer in some rounds: CPU per event uses the \
                     expected count there"
                        .to_owned(),
                );
            }
            let checks: Vec<(usize, &Exactness)> = measured
                .iter()
                .filter_map(|&(round, s)| Some((round, s.tracer.as_ref()?.exactness.as_ref()?)))
                .collect();
            if !checks.is_empty() {
                stats.exactness = Some(ExactnessStats {
                    checked: checks.iter().map(|(_, e)| e.checked).sum(),
                    mismatched: checks.iter().map(|(_, e)| e.mismatches.len()).sum(),
                });
                for (round, check) in checks {
                    if check.mismatches.is_empty() {
                        continue;
                    }
                    let each: Vec<String> = check
                        .mismatches
                        .iter()
                        .map(|m| {
                            let counted = m
                                .timewait_entered
                                .map_or_else(|| "no row".to_owned(), fmt_int);
                            format!("pid {} {} vs {counted}", m.pid, fmt_int(m.connections))
                        })
                        .collect();
                    let made: u64 = check.mismatches.iter().map(|m| m.connections).sum();
                    let counted: u64 = check
                        .mismatches
                        .iter()
                        .filter_map(|m| m.timewait_entered)
                        .sum();
                    let short = if made > 0 && counted <= made {
                        format!(
                            " ({:.1}% short)",
                            (made - counted) as f64 * 100.0 / made as f64
                        )
                    } else {
                        String::new()
                    };
                    stats.notes.push(format!(
                        "round {}: connections vs the final snapshot's TIME_WAIT entered, per \
                         generator: {}{short}",
                        round + 1,
                        each.join(", ")
                    ));
                }
            }
            let killed = tracers.iter().filter(|(_, t)| t.killed).count();
            if killed > 0 {
                stats.notes.push(format!(
                    "did not exit within {}s of SIGINT in {killed} round(s) and was killed",
                    STOP_TIMEOUT.as_secs()
                ));
            }
            let mut extras: Vec<&str> = tracers
                .iter()
                .map(|(_, t)| t.summary_extra.as_str())
                .filter(|e| !e.is_empty())
                .collect();
            extras.dedup();
            for extra in extras {
                stats.notes.push(format!("summary also said: {extra}"));
            }
        }
        let full: Vec<u64> = measured
            .iter()
            .filter_map(|(_, s)| s.tw_overflow)
            .filter(|&n| n > 0)
            .collect();
        if !full.is_empty() {
            stats.notes.push(format!(
                "the kernel's TIME_WAIT table was full (net.ipv4.tcp_max_tw_buckets) in {} of {} \
                 rounds: it skipped {} TIME_WAIT sockets (TCPTimeWaitOverflow; the transitions \
                 are the same), which makes connections cheaper and the generator faster",
                full.len(),
                measured.len(),
                fmt_int(full.iter().sum())
            ));
        }
        let unavailable: u64 = measured.iter().map(|(_, s)| s.addr_unavailable).sum();
        let errors: u64 = measured.iter().map(|(_, s)| s.generator_errors).sum();
        if unavailable > 0 || errors > 0 {
            stats.notes.push(format!(
                "generator: {unavailable} connect() EADDRNOTAVAIL, {errors} other errors"
            ));
        }
        for outcome in outcomes {
            if let Outcome::Failed(why) = outcome {
                stats.notes.push(format!("a round failed: {why}"));
            }
        }
        Self {
            mode,
            result: RowResult::Measured(Box::new(stats)),
        }
    }
}

/// `14102` -> `14,102`.
pub fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::fixtures::{reference, sample};

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(
            Spread::of(&[4.0, 1.0, 3.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.5,
                max: 4.0
            })
        );
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).map(|s| s.median), Some(5.0));
    }

    #[test]
    fn aggregates_against_the_same_rounds_reference() {
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        let mut results = BTreeMap::new();
        results.insert(Mode::None, vec![reference(100.0), reference(200.0)]);
        results.insert(
            Mode::Trace,
            vec![
                sample(99.0, 1000, 10_000, 0, 0.01),
                sample(190.0, 1000, 9_000, 1000, 0.009),
            ],
        );
        results.insert(
            Mode::Leaderboard,
            vec![Outcome::Unavailable("rejected --interval".to_owned())],
        );
        let row = Row::aggregate(Mode::Trace, &results, &cal);
        let RowResult::Measured(stats) = row.result else {
            panic!("measured expected");
        };
        let ratio = stats.ratio.expect("ratio");
        assert!((ratio.min - 0.95).abs() < 1e-9);
        assert!((ratio.max - 0.99).abs() < 1e-9);
        assert_eq!(stats.expected, 20_004);
        assert_eq!(stats.received, Some(19_000));
        assert_eq!(stats.lost, Some(1000));
        let cpu = stats.cpu_us_per_event.expect("cpu");
        assert!((cpu.median - 1.0).abs() < 1e-9);
        assert_eq!(stats.peak_rss_kib, Some(20 * 1024));
        assert_eq!(
            Row::aggregate(Mode::Leaderboard, &results, &cal).result,
            RowResult::Unavailable("rejected --interval".to_owned())
        );
    }

    #[test]
    fn peak_rows_count_every_listener_and_the_exactness_check() {
        use crate::bench::measure::{Exactness, Mismatch};
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        let peak = |connections: u64, exactness: Exactness| {
            Outcome::Measured(Sample {
                rate: 30_000.0,
                connections,
                generators: 4,
                tw_overflow: Some(connections / 2),
                tracer: Some(Box::new(TracerSample {
                    received: Some(connections * 10),
                    lost: Some(0),
                    exactness: Some(exactness),
                    ..TracerSample::default()
                })),
                ..Sample::default()
            })
        };
        let mut results = BTreeMap::new();
        results.insert(Mode::None, vec![reference(40_000.0), reference(40_000.0)]);
        results.insert(
            Mode::Leaderboard,
            vec![
                peak(
                    1000,
                    Exactness {
                        checked: 4,
                        mismatches: vec![],
                    },
                ),
                peak(
                    2000,
                    Exactness {
                        checked: 4,
                        mismatches: vec![
                            Mismatch {
                                pid: 41,
                                connections: 17_571,
                                timewait_entered: Some(16_682),
                            },
                            Mismatch {
                                pid: 42,
                                connections: 500,
                                timewait_entered: None,
                            },
                        ],
                    },
                ),
            ],
        );
        let RowResult::Measured(stats) = Row::aggregate(Mode::Leaderboard, &results, &cal).result
        else {
            panic!("measured expected");
        };
        // 3000 connections x 10, plus 2 lines for each of 4 listeners in each of 2 rounds.
        assert_eq!(stats.expected, 30_016);
        assert_eq!(
            stats.exactness,
            Some(ExactnessStats {
                checked: 8,
                mismatched: 2
            })
        );
        assert!(
            stats.notes.contains(
                &"round 2: connections vs the final snapshot's TIME_WAIT entered, per \
                  generator: pid 41 17,571 vs 16,682, pid 42 500 vs no row (7.7% short)"
                    .to_owned()
            ),
            "{:?}",
            stats.notes
        );
        // Round 1 was exact: no note for it.
        assert!(!stats.notes.iter().any(|n| n.starts_with("round 1")));
        assert!(
            stats.notes.contains(
                &"the kernel's TIME_WAIT table was full (net.ipv4.tcp_max_tw_buckets) in 2 of 2 \
              rounds: it skipped 1,500 TIME_WAIT sockets (TCPTimeWaitOverflow; the transitions \
              are the same), which makes connections cheaper and the generator faster"
                    .to_owned()
            )
        );
        // The reference has no check, and here no overflow.
        let RowResult::Measured(reference) = Row::aggregate(Mode::None, &results, &cal).result
        else {
            panic!("measured expected");
        };
        assert_eq!(reference.exactness, None);
        assert!(reference.notes.is_empty(), "{:?}", reference.notes);
    }

    #[test]
    fn exactness_compares_each_generator_with_its_pid() {
        use crate::bench::{measure::Exactness, parse::GeneratorRun};
        let run = |connections| GeneratorRun {
            connections,
            ..GeneratorRun::default()
        };
        let generators = [(10, run(5)), (11, run(7)), (12, run(9))];
        let timewait: BTreeMap<u32, u64> = [(10, 5), (11, 6), (99, 9)].into();
        let check = Exactness::check(&generators, &timewait);
        assert_eq!(check.checked, 3);
        let wrong: Vec<(u32, u64, Option<u64>)> = check
            .mismatches
            .iter()
            .map(|m| (m.pid, m.connections, m.timewait_entered))
            .collect();
        assert_eq!(wrong, [(11, 7, Some(6)), (12, 9, None)]);
    }
}
