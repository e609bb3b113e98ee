//! Flight-recorder triggers: conditions on the leaderboard's snapshot, such as
//! `timewait_now>20000` or `close_wait_now[comm=java]>500`, checked once a second.

use std::{fmt, str::FromStr};

use crate::model::snapshot::{ProcessRow, Snapshot};

/// A field of the snapshot's totals (a trigger without a qualifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TotalField {
    TimewaitNow,
    FinWait2Now,
    TimewaitKernel,
    CloseWaitNow,
    EstablishedNow,
    TimewaitEntered,
    FinWait2Entered,
    TimewaitPerS,
    LostEvents,
    UnattributedEvents,
    ConnectFailures,
    BindFailures,
}

impl TotalField {
    /// In the order the error message lists them.
    pub const ALL: [Self; 12] = [
        Self::TimewaitNow,
        Self::FinWait2Now,
        Self::TimewaitKernel,
        Self::CloseWaitNow,
        Self::EstablishedNow,
        Self::TimewaitEntered,
        Self::FinWait2Entered,
        Self::TimewaitPerS,
        Self::LostEvents,
        Self::UnattributedEvents,
        Self::ConnectFailures,
        Self::BindFailures,
    ];

    /// As written in a trigger, and in the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TimewaitNow => "timewait_now",
            Self::FinWait2Now => "fin_wait2_now",
            Self::TimewaitKernel => "timewait_kernel",
            Self::CloseWaitNow => "close_wait_now",
            Self::EstablishedNow => "established_now",
            Self::TimewaitEntered => "timewait_entered",
            Self::FinWait2Entered => "fin_wait2_entered",
            Self::TimewaitPerS => "timewait_per_s",
            Self::LostEvents => "lost_events",
            Self::UnattributedEvents => "unattributed_events",
            Self::ConnectFailures => "connect_failures",
            Self::BindFailures => "bind_failures",
        }
    }

    /// The field's value in `snap` (0 for an unknown kernel count).
    pub fn value(self, snap: &Snapshot) -> f64 {
        let t = &snap.totals;
        match self {
            Self::TimewaitNow => t.timewait_now as f64,
            Self::FinWait2Now => t.fin_wait2_now as f64,
            Self::TimewaitKernel => t.timewait_kernel.unwrap_or(0) as f64,
            Self::CloseWaitNow => t.close_wait_now as f64,
            Self::EstablishedNow => t.established_now as f64,
            Self::TimewaitEntered => t.timewait_entered as f64,
            Self::FinWait2Entered => t.fin_wait2_entered as f64,
            Self::TimewaitPerS => t.timewait_per_s,
            Self::LostEvents => snap.lost_events as f64,
            Self::UnattributedEvents => snap.unattributed_events as f64,
            Self::ConnectFailures => t.connect_failures as f64,
            Self::BindFailures => t.bind_failures as f64,
        }
    }
}

/// A field of a process row (a trigger with a `[pid=N]` or `[comm=NAME]` qualifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessField {
    TimewaitEntered,
    TimewaitPerS,
    TimewaitNow,
    FinWait2Entered,
    FinWait2Now,
    CloseWaitNow,
    EstablishedNow,
    Opens,
    OpensPerS,
    Closes,
    ClosesPerS,
    Resets,
    ConnectFailures,
    BindFailures,
}

impl ProcessField {
    /// In the order the error message lists them.
    pub const ALL: [Self; 14] = [
        Self::TimewaitEntered,
        Self::TimewaitPerS,
        Self::TimewaitNow,
        Self::FinWait2Entered,
        Self::FinWait2Now,
        Self::CloseWaitNow,
        Self::EstablishedNow,
        Self::Opens,
        Self::OpensPerS,
        Self::Closes,
        Self::ClosesPerS,
        Self::Resets,
        Self::ConnectFailures,
        Self::BindFailures,
    ];

    /// As written in a trigger, and in the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TimewaitEntered => "timewait_entered",
            Self::TimewaitPerS => "timewait_per_s",
            Self::TimewaitNow => "timewait_now",
            Self::FinWait2Entered => "fin_wait2_entered",
            Self::FinWait2Now => "fin_wait2_now",
            Self::CloseWaitNow => "close_wait_now",
            Self::EstablishedNow => "established_now",
            Self::Opens => "opens",
            Self::OpensPerS => "opens_per_s",
            Self::Closes => "closes",
            Self::ClosesPerS => "closes_per_s",
            Self::Resets => "resets",
            Self::ConnectFailures => "connect_failures",
            Self::BindFailures => "bind_failures",
        }
    }

    pub fn value(self, p: &ProcessRow) -> f64 {
        match self {
            Self::TimewaitEntered => p.timewait_entered as f64,
            Self::TimewaitPerS => p.timewait_per_s,
            Self::TimewaitNow => p.timewait_now as f64,
            Self::FinWait2Entered => p.fin_wait2_entered as f64,
            Self::FinWait2Now => p.fin_wait2_now as f64,
            Self::CloseWaitNow => p.close_wait_now as f64,
            Self::EstablishedNow => p.established_now as f64,
            Self::Opens => p.opens as f64,
            Self::OpensPerS => p.opens_per_s,
            Self::Closes => p.closes as f64,
            Self::ClosesPerS => p.closes_per_s,
            Self::Resets => p.resets as f64,
            Self::ConnectFailures => p.connect_failures as f64,
            Self::BindFailures => p.bind_failures as f64,
        }
    }
}

/// A name that is not one of the fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownField;

impl FromStr for TotalField {
    type Err = UnknownField;

    fn from_str(s: &str) -> Result<Self, UnknownField> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or(UnknownField)
    }
}

impl FromStr for ProcessField {
    type Err = UnknownField;

    fn from_str(s: &str) -> Result<Self, UnknownField> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or(UnknownField)
    }
}

impl fmt::Display for TotalField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ProcessField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a trigger tests: a total, or a field of the processes it names, summed.
#[derive(Clone, Debug, PartialEq)]
enum Subject {
    Total(TotalField),
    Process(ProcessField, Who),
}

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
    subject: Subject,
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
        let subject = match lhs.split_once('[') {
            None => Subject::Total(lhs.parse().map_err(|UnknownField| {
                unknown(s, &lhs, "fields", &TotalField::ALL.map(TotalField::name))
            })?),
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
                let field = field.parse().map_err(|UnknownField| {
                    unknown(
                        s,
                        field,
                        "process fields",
                        &ProcessField::ALL.map(ProcessField::name),
                    )
                })?;
                Subject::Process(field, who)
            }
        };
        Ok(Self {
            text,
            subject,
            op,
            threshold,
        })
    }
}

fn unknown(trigger: &str, field: &str, kind: &str, known: &[&str]) -> String {
    format!(
        "`{trigger}`: unknown field `{field}`; {kind} are {}",
        known.join(", ")
    )
}

impl Trigger {
    /// The tested value in `snap` (0 for a process that is not there).
    pub fn value(&self, snap: &Snapshot) -> f64 {
        match &self.subject {
            Subject::Total(field) => field.value(snap),
            Subject::Process(field, who) => snap
                .processes
                .iter()
                .filter(|p| match who {
                    Who::Pid(pid) => p.pid == *pid,
                    Who::Comm(comm) => p.comm == *comm,
                })
                .map(|p| field.value(p))
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

    #[test]
    fn unknown_fields_list_the_known_ones() {
        assert_eq!(
            "bogus>1".parse::<Trigger>(),
            Err(
                "`bogus>1`: unknown field `bogus`; fields are timewait_now, fin_wait2_now, \
                 timewait_kernel, close_wait_now, established_now, timewait_entered, \
                 fin_wait2_entered, timewait_per_s, lost_events, unattributed_events, \
                 connect_failures, bind_failures"
                    .to_owned()
            )
        );
        assert_eq!(
            "timewait_kernel[comm=x]>1".parse::<Trigger>(),
            Err(
                "`timewait_kernel[comm=x]>1`: unknown field `timewait_kernel`; process fields are \
                 timewait_entered, timewait_per_s, timewait_now, fin_wait2_entered, fin_wait2_now, \
                 close_wait_now, established_now, opens, opens_per_s, closes, closes_per_s, resets, \
                 connect_failures, bind_failures"
                    .to_owned()
            )
        );
    }

    #[test]
    fn every_field_is_read_from_its_own_place() {
        // Every field a different value: a trigger reads its field and no other.
        let s = Snapshot {
            lost_events: 7,
            unattributed_events: 8,
            totals: Totals {
                namespaces: None,
                timewait_now: 1,
                fin_wait2_now: 31,
                timewait_kernel: Some(2),
                close_wait_now: 3,
                established_now: 4,
                timewait_entered: 5,
                fin_wait2_entered: 32,
                timewait_per_s: 6.5,
                timewait_recovered: 0,
                connect_failures: 9,
                bind_failures: 10,
            },
            processes: vec![ProcessRow {
                pid: 9,
                connect_failures: 21,
                bind_failures: 22,
                timewait_entered: 11,
                timewait_per_s: 12.5,
                timewait_now: 13,
                fin_wait2_entered: 33,
                fin_wait2_now: 34,
                close_wait_now: 14,
                established_now: 15,
                opens: 16,
                opens_per_s: 17.5,
                closes: 18,
                closes_per_s: 19.5,
                resets: 20,
                ..ProcessRow::default()
            }],
            ..Snapshot::default()
        };
        let totals: Vec<f64> = TotalField::ALL
            .iter()
            .map(|f| t(&format!("{f}>0")).value(&s))
            .collect();
        assert_eq!(
            totals,
            [
                1.0, 31.0, 2.0, 3.0, 4.0, 5.0, 32.0, 6.5, 7.0, 8.0, 9.0, 10.0
            ]
        );
        let process: Vec<f64> = ProcessField::ALL
            .iter()
            .map(|f| t(&format!("{f}[pid=9]>0")).value(&s))
            .collect();
        assert_eq!(
            process,
            [
                11.0, 12.5, 13.0, 33.0, 34.0, 14.0, 15.0, 16.0, 17.5, 18.0, 19.5, 20.0, 21.0, 22.0
            ]
        );
    }
}
