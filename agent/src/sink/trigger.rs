//! Flight-recorder triggers: conditions on the leaderboard's snapshot, such as
//! `timewait_now>20000` or `close_wait_now[comm=java]>500`, checked once a second.

use std::{fmt, str::FromStr};

use crate::model::snapshot::{ProcessRow, Snapshot};

/// The fields a trigger can test: the snapshot's totals, or (with a qualifier) a process row's.
const TOTAL_FIELDS: &[&str] = &[
    "timewait_now",
    "timewait_kernel",
    "close_wait_now",
    "established_now",
    "timewait_entered",
    "timewait_per_s",
    "lost_events",
    "unattributed_events",
];
const PROCESS_FIELDS: &[&str] = &[
    "timewait_entered",
    "timewait_per_s",
    "timewait_now",
    "close_wait_now",
    "established_now",
    "opens",
    "opens_per_s",
    "closes",
    "closes_per_s",
    "resets",
];

#[derive(Clone, Debug, PartialEq)]
enum Who {
    Pid(u32),
    /// Every process with this comm, summed.
    Comm(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    text: String,
    field: String,
    who: Option<Who>,
    op: Op,
    threshold: f64,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Trigger {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let (at, op, len) = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)]
            .iter()
            .find_map(|(sym, op)| text.find(sym).map(|at| (at, *op, sym.len())))
            .ok_or_else(|| format!("`{s}`: no comparison (use e.g. timewait_now>20000)"))?;
        let (lhs, rhs) = (text[..at].to_owned(), text[at + len..].to_owned());
        let threshold: f64 = rhs
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("`{s}`: `{rhs}` is not a number"))?;
        let (field, who) = match lhs.split_once('[') {
            None => (lhs.as_str(), None),
            Some((field, q)) => {
                let q = q
                    .strip_suffix(']')
                    .ok_or_else(|| format!("`{s}`: missing `]`"))?;
                let who = match q.split_once('=') {
                    Some(("pid", pid)) => Who::Pid(
                        pid.parse()
                            .map_err(|_| format!("`{s}`: `{pid}` is not a pid"))?,
                    ),
                    Some(("comm", comm)) if !comm.is_empty() => Who::Comm(comm.to_owned()),
                    _ => return Err(format!("`{s}`: the qualifier is pid=N or comm=NAME")),
                };
                (field, Some(who))
            }
        };
        let known = if who.is_some() {
            PROCESS_FIELDS
        } else {
            TOTAL_FIELDS
        };
        if !known.contains(&field) {
            return Err(format!(
                "`{s}`: unknown field `{field}`; {} are {}",
                if who.is_some() {
                    "process fields"
                } else {
                    "fields"
                },
                known.join(", ")
            ));
        }
        Ok(Self {
            text,
            field: field.to_owned(),
            who,
            op,
            threshold,
        })
    }
}

impl Trigger {
    /// The tested value in `snap` (0 for a process that is not there).
    pub fn value(&self, snap: &Snapshot) -> f64 {
        match &self.who {
            None => {
                let t = &snap.totals;
                match self.field.as_str() {
                    "timewait_now" => t.timewait_now as f64,
                    "timewait_kernel" => t.timewait_kernel.unwrap_or(0) as f64,
                    "close_wait_now" => t.close_wait_now as f64,
                    "established_now" => t.established_now as f64,
                    "timewait_entered" => t.timewait_entered as f64,
                    "timewait_per_s" => t.timewait_per_s,
                    "lost_events" => snap.lost_events as f64,
                    "unattributed_events" => snap.unattributed_events as f64,
                    _ => 0.0,
                }
            }
            Some(who) => snap
                .processes
                .iter()
                .filter(|p| match who {
                    Who::Pid(pid) => p.pid == *pid,
                    Who::Comm(comm) => p.comm == *comm,
                })
                .map(|p| process_field(p, &self.field))
                .sum(),
        }
    }

    pub fn holds(&self, snap: &Snapshot) -> bool {
        let v = self.value(snap);
        match self.op {
            Op::Gt => v > self.threshold,
            Op::Ge => v >= self.threshold,
            Op::Lt => v < self.threshold,
            Op::Le => v <= self.threshold,
        }
    }
}

fn process_field(p: &ProcessRow, field: &str) -> f64 {
    match field {
        "timewait_entered" => p.timewait_entered as f64,
        "timewait_per_s" => p.timewait_per_s,
        "timewait_now" => p.timewait_now as f64,
        "close_wait_now" => p.close_wait_now as f64,
        "established_now" => p.established_now as f64,
        "opens" => p.opens as f64,
        "opens_per_s" => p.opens_per_s,
        "closes" => p.closes as f64,
        "closes_per_s" => p.closes_per_s,
        "resets" => p.resets as f64,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::Totals;

    fn snap() -> Snapshot {
        Snapshot {
            totals: Totals {
                timewait_now: 25000,
                close_wait_now: 10,
                ..Totals::default()
            },
            processes: vec![
                ProcessRow {
                    pid: 1,
                    comm: "java".into(),
                    close_wait_now: 300,
                    ..ProcessRow::default()
                },
                ProcessRow {
                    pid: 2,
                    comm: "java".into(),
                    close_wait_now: 250,
                    ..ProcessRow::default()
                },
                ProcessRow {
                    pid: 3,
                    comm: "curl".into(),
                    timewait_per_s: 12.5,
                    ..ProcessRow::default()
                },
            ],
            ..Snapshot::default()
        }
    }

    fn t(s: &str) -> Trigger {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn totals_and_process_qualifiers() {
        let s = snap();
        assert!(t("timewait_now>20000").holds(&s));
        assert!(!t("timewait_now > 30000").holds(&s));
        assert!(t("timewait_now>=25000").holds(&s));
        assert!(t("close_wait_now<11").holds(&s));
        assert!(t("close_wait_now[comm=java]>500").holds(&s), "summed");
        assert!(!t("close_wait_now[pid=1]>500").holds(&s));
        assert!(t("close_wait_now[pid=2]<=250").holds(&s));
        assert!(t("timewait_per_s[comm=curl]>12").holds(&s));
        assert!(!t("resets[pid=99]>0").holds(&s), "a missing process is 0");
        assert_eq!(t(" timewait_now > 5 ").to_string(), "timewait_now>5");
    }

    #[test]
    fn bad_triggers_say_why() {
        for (s, want) in [
            ("timewait_now", "no comparison"),
            ("timewait_now>lots", "not a number"),
            ("bogus>1", "unknown field"),
            ("opens>1", "unknown field"),
            ("opens[user=x]>1", "pid=N or comm=NAME"),
            ("opens[pid=x]>1", "not a pid"),
            ("opens[pid=1>1", "missing `]`"),
        ] {
            let e = s.parse::<Trigger>().expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
