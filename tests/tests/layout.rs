//! The field offsets the kernel program reads, checked against the running kernel's tracepoint
//! format files (what twtrace also does at start-up, here with every tracepoint required).

use std::path::Path;

use twtrace::kernel::tracefs;

#[test]
fn offsets_match_the_live_format_files() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root: offsets_match_the_live_format_files reads tracefs");
        return;
    }
    let root = Path::new(tracefs::DEFAULT_ROOT);
    tracefs::ensure_mounted(root).expect("tracefs mounted");
    for layout in tracefs::LAYOUTS {
        let path = tracefs::format_path(root, layout);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let fields = tracefs::parse_format(&text);
        assert!(
            fields.len() > 4,
            "{}: parsed only {fields:?}",
            path.display()
        );
        tracefs::check_fields(layout, &fields)
            .unwrap_or_else(|e| panic!("{}:{}: {e:#}", layout.category, layout.name));
        eprintln!(
            "{}:{}: {} fields checked",
            layout.category,
            layout.name,
            layout.fields.len()
        );
    }
    let degraded = tracefs::check_layouts(root).expect("required tracepoints match");
    assert!(
        degraded.is_empty(),
        "optional tracepoints unusable here: {degraded:?}"
    );
}
