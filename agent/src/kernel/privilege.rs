//! Checking privileges up front, so a missing one is one clear line instead of an EPERM from
//! deep inside the loader.

use procfs::process::Process;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities a tracer needs and the process lacks, by name. Root normally has them all.
/// CAP_BPF loads programs and creates maps; CAP_PERFMON attaches to tracepoints and reads kernel
/// addresses. CAP_SYS_ADMIN covers both on kernels before 5.8 and lets twtrace mount tracefs.
pub fn missing_caps() -> Vec<&'static str> {
    match effective_caps() {
        Some(caps) => missing_from(caps),
        // Unknown: let the kernel decide, and report its answer.
        None => Vec::new(),
    }
}

/// This process's effective capability set: `CapEff` of /proc/self/status, one bit per
/// capability number. `None` when /proc cannot tell.
fn effective_caps() -> Option<u64> {
    match Process::myself().and_then(|p| p.status()) {
        Ok(status) => Some(status.capeff),
        Err(e) => {
            log::debug!("capabilities unknown, /proc/self/status not read: {e}");
            None
        }
    }
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
    fn reads_its_own_cap_eff() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("a CapEff line");
        let expected = u64::from_str_radix(hex.trim(), 16).expect("hex");
        assert_eq!(effective_caps(), Some(expected));
        assert_eq!(missing_caps(), missing_from(expected));
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
