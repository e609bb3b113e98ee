//! Checking privileges up front, so a missing one is one clear line instead of an EPERM from
//! deep inside the loader.

use std::fs;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities a tracer needs and the process lacks, by name. Root normally has them all.
/// CAP_BPF loads programs and creates maps; CAP_PERFMON attaches to tracepoints and reads kernel
/// addresses. CAP_SYS_ADMIN covers both on kernels before 5.8 and lets twtrace mount tracefs.
pub fn missing_caps() -> Vec<&'static str> {
    match fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
    {
        Some(caps) => missing_from(caps),
        // Unknown: let the kernel decide, and report its answer.
        None => Vec::new(),
    }
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn missing_from(caps: u64) -> Vec<&'static str> {
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// The error line for missing capabilities.
pub fn explain(missing: &[&str]) -> String {
    format!(
        "needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {}); run it with sudo",
        missing.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff_from_proc_status() {
        let status =
            "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn root_and_sys_admin_need_nothing_more() {
        assert!(missing_from(0x1ff_ffff_ffff).is_empty());
        assert!(missing_from(1 << CAP_SYS_ADMIN).is_empty());
    }

    #[test]
    fn names_exactly_what_is_missing() {
        assert_eq!(missing_from(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_from(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(
            missing_from((1 << CAP_BPF) | (1 << CAP_PERFMON)),
            Vec::<&str>::new()
        );
        assert!(explain(&["CAP_BPF"]).contains("missing: CAP_BPF"));
    }
}
