//! The files twtrace writes, as root, in directories other users can write: a symbolic link
//! planted at the output by uid 65534 is replaced, never written through; the result is always a
//! regular file owned by root with mode 0600; the flight recorder refuses a directory that is a
//! link; a --max-size too small for the header is refused before any file exists. The real
//! binary, run as root, with links planted by a real unprivileged process (setpriv).

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use twtrace_tests::{
    record::{TempDir, twtrace_output},
    skip_unless_root,
};

const NOBODY: u32 = 65534;

/// A scratch directory like /tmp: mode 1777, so uid 65534 can plant names in it and only the
/// owner of a name may remove or rename it. Removed when dropped.
fn sticky_dir(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    dir
}

/// `ln -s TARGET LINK` run as uid/gid 65534 with no supplementary groups.
fn plant_link_as_nobody(target: &Path, link: &Path) {
    let status = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "ln",
            "-s",
        ])
        .arg(target)
        .arg(link)
        .status()
        .expect("running setpriv ln -s");
    assert!(status.success(), "planting {} as nobody", link.display());
    let meta = std::fs::symlink_metadata(link).expect("lstat link");
    assert!(meta.file_type().is_symlink());
    assert_eq!(meta.uid(), NOBODY, "planted by uid 65534");
}

/// A file that must survive: its content, mode and owner.
struct Bystander {
    path: PathBuf,
    content: &'static [u8],
    mode: u32,
    uid: u32,
}

impl Bystander {
    fn create(path: PathBuf, content: &'static [u8], mode: u32) -> Self {
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        Self {
            path,
            content,
            mode,
            uid: 0,
        }
    }

    fn assert_untouched(&self) {
        let meta = std::fs::symlink_metadata(&self.path).expect("still there");
        assert!(meta.is_file(), "{} is still a file", self.path.display());
        assert_eq!(
            meta.mode() & 0o7777,
            self.mode,
            "{} mode",
            self.path.display()
        );
        assert_eq!(meta.uid(), self.uid, "{} owner", self.path.display());
        assert_eq!(
            std::fs::read(&self.path).expect("read"),
            self.content,
            "{} content",
            self.path.display()
        );
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `twtrace record -o FILE --duration 1s <more>` as root, to completion.
fn record(file: &Path, more: &[&str]) -> Output {
    let mut args = vec!["record", "-o", s(file), "--duration", "1s"];
    args.extend_from_slice(more);
    twtrace_output(&args, false)
}

/// A failure that is one line starting `twtrace: ` with exit status 1; returns the line.
fn one_line_failure(out: &Output) -> String {
    let stderr = stderr_of(out);
    assert_eq!(out.status.code(), Some(1), "exit 1: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("twtrace: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim_end().to_owned()
}

/// The recording twtrace wrote: a regular file owned by root, mode 0600, that `twtrace
/// report` reads without a warning (it ends with its end mark).
fn assert_root_only_recording(file: &Path) {
    let meta = std::fs::symlink_metadata(file).expect("lstat output");
    assert!(meta.is_file(), "{} is a regular file", file.display());
    assert_eq!(meta.uid(), 0, "owned by root");
    assert_eq!(meta.gid(), 0, "group root");
    assert_eq!(meta.mode() & 0o7777, 0o600, "mode 0600");
    assert_eq!(meta.nlink(), 1, "no other name for it");
    let out = twtrace_output(&["report", s(file), "--json"], false);
    assert!(out.status.success(), "report: {}", stderr_of(&out));
    assert!(
        out.stderr.is_empty(),
        "a complete recording: {}",
        stderr_of(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert!(report["host"].is_object(), "{report}");
}

/// The names in `dir`, sorted: nothing else (no temporary file) was left there.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// uid 65534 plants `x.twr -> secret` (a root file, 0640) in a 1777 directory. Without --force
/// root's twtrace refuses the name; with --force it replaces the link with its recording and
/// says so in one line; the secret keeps its content, mode and owner.
#[test]
fn a_link_planted_by_another_user_is_replaced_never_written_through() {
    const TEST: &str = "files a_link_planted_by_another_user_is_replaced_never_written_through";
    if skip_unless_root(TEST) {
        return;
    }
    let dir = sticky_dir("files-link");
    let secret = Bystander::create(dir.join("secret"), b"root's secret\n", 0o640);
    let out = dir.join("x.twr");
    plant_link_as_nobody(&secret.path, &out);

    let refused = one_line_failure(&record(&out, &[]));
    assert_eq!(
        refused,
        format!(
            "twtrace: {} already exists as a symbolic link (use --force to replace it)",
            out.display()
        )
    );
    secret.assert_untouched();

    let run = record(&out, &["--force"]);
    let stderr = stderr_of(&run);
    assert!(run.status.success(), "{stderr}");
    let notice = format!(
        "twtrace: {} was a symbolic link (to {}); replaced it with a new file, its target is \
         untouched",
        out.display(),
        secret.path.display()
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("symbolic link"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.lines().any(|l| l == notice), "{stderr}");
    secret.assert_untouched();
    assert_root_only_recording(&out);
    assert_eq!(names(&dir.0), ["secret", "x.twr"]);
}

/// A dangling link planted by uid 65534: neither run creates anything at its target.
#[test]
fn a_dangling_link_creates_nothing_at_its_target() {
    const TEST: &str = "files a_dangling_link_creates_nothing_at_its_target";
    if skip_unless_root(TEST) {
        return;
    }
    let dir = sticky_dir("files-dangling");
    // A root-only directory the link points into: what an attacker would have root create.
    let private = dir.join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let target = private.join("authorized_keys");
    let out = dir.join("x.twr");
    plant_link_as_nobody(&target, &out);

    one_line_failure(&record(&out, &[]));
    assert!(
        std::fs::symlink_metadata(&target).is_err(),
        "nothing at the target"
    );

    let run = record(&out, &["--force"]);
    assert!(run.status.success(), "{}", stderr_of(&run));
    assert!(
        std::fs::symlink_metadata(&target).is_err(),
        "nothing at the target"
    );
    assert!(names(&private).is_empty());
    assert_root_only_recording(&out);
    assert_eq!(names(&dir.0), ["private", "x.twr"]);
}

/// --force over an existing file makes a new root-owned 0600 file, whatever the old one's
/// mode and owner (0644 root, 0666 nobody), and a hard link to the old file keeps the old one.
#[test]
fn force_over_an_open_file_leaves_a_0600_file_owned_by_root() {
    const TEST: &str = "files force_over_an_open_file_leaves_a_0600_file_owned_by_root";
    if skip_unless_root(TEST) {
        return;
    }
    let dir = sticky_dir("files-mode");
    let readable = dir.join("readable.twr");
    std::fs::write(&readable, b"old").expect("write");
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = record(&readable, &["--force"]);
    assert!(run.status.success(), "{}", stderr_of(&run));
    assert!(!stderr_of(&run).contains("symbolic link"));
    assert_root_only_recording(&readable);

    // Owned by nobody, writable by all, and hard-linked under another name (as a user who
    // wanted to read the next recording would set it up).
    let theirs = dir.join("theirs.twr");
    std::fs::write(&theirs, b"theirs").expect("write");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).expect("chown");
    let kept = dir.join("kept");
    std::fs::hard_link(&theirs, &kept).expect("link");
    let run = record(&theirs, &["--force"]);
    assert!(run.status.success(), "{}", stderr_of(&run));
    assert_root_only_recording(&theirs);
    let old = Bystander {
        path: kept,
        content: b"theirs",
        mode: 0o666,
        uid: NOBODY,
    };
    old.assert_untouched();
    assert_eq!(names(&dir.0), ["kept", "readable.twr", "theirs.twr"]);
}

/// `record --ring DUR -o DIR` where DIR is a link planted by uid 65534 (to a directory, or
/// dangling): one line, exit 1, nothing written at the target. A missing DIR is created 0700.
#[test]
fn a_flight_recorder_directory_that_is_a_link_is_refused() {
    const TEST: &str = "files a_flight_recorder_directory_that_is_a_link_is_refused";
    if skip_unless_root(TEST) {
        return;
    }
    let dir = sticky_dir("files-ring");
    let real = dir.join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let caps = dir.join("caps");
    plant_link_as_nobody(&real, &caps);
    let dangling_target = dir.join("nowhere");
    let dangling = dir.join("dangling");
    plant_link_as_nobody(&dangling_target, &dangling);

    for link in [&caps, &dangling] {
        let out = record(link, &["--ring", "1m"]);
        let line = one_line_failure(&out);
        assert_eq!(
            line,
            format!(
                "twtrace: {} is a symbolic link; with --ring, -o must name a directory itself \
                 (twtrace does not write through links)",
                link.display()
            )
        );
    }
    assert!(names(&real).is_empty());
    assert!(std::fs::symlink_metadata(&dangling_target).is_err());

    let fresh = dir.join("fresh");
    let out = record(&fresh, &["--ring", "1m"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let meta = std::fs::symlink_metadata(&fresh).expect("created");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), 0);
    assert!(names(&fresh).is_empty(), "no trigger, no capture");
}

/// `--max-size 1` is refused up front, before the file exists, with the smallest usable size;
/// that size then records a file that ends cleanly under it.
#[test]
fn a_max_size_smaller_than_the_header_is_refused_before_any_file_exists() {
    const TEST: &str = "files a_max_size_smaller_than_the_header_is_refused_before_any_file_exists";
    let dir = TempDir::new("files-max");
    let file = dir.join("m.twr");
    // The size is checked before privileges are: this part needs no root.
    let out = record(&file, &["--max-size", "1"]);
    let line = one_line_failure(&out);
    let prefix = "twtrace: --max-size 1 B is too small: this recording's header and end mark alone \
                  take ";
    assert!(line.starts_with(prefix), "{line}");
    let Some(suggested) = line
        .strip_suffix("K or more")
        .and_then(|l| l.rsplit_once("use --max-size "))
        .map(|(_, k)| format!("{k}K"))
    else {
        panic!("no suggested size: {line}");
    };
    assert!(!file.exists(), "no file");
    assert!(names(&dir.0).is_empty());

    if skip_unless_root(TEST) {
        return;
    }
    let out = record(&file, &["--max-size", &suggested]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let limit = twtrace::recording::parse_size(&suggested).expect("a size");
    let size = std::fs::metadata(&file).expect("file").len();
    eprintln!("[{TEST}] --max-size {suggested}: {size} bytes");
    assert!(size <= limit, "{size} > {limit}");
    assert_root_only_recording(&file);
}
