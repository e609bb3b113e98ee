//! `cargo xtask setup`: make this machine able to build the eBPF side, idempotently.
//!
//! aya-build (in the agent's build.rs) compiles the eBPF crate with `rustup run nightly cargo
//! build --target bpfel-unknown-none -Z build-std=core`, which needs nightly's `rust-src`, and
//! links it with `bpf-linker` found on PATH. bpf-linker must use the same LLVM major as that
//! nightly rustc. No prebuilt bpf-linker can be downloaded on these machines and Debian packages
//! no LLVM of that major, but the nightly toolchain ships its own
//! `libLLVM.so.<major>.<minor>-rust-*`. So bpf-linker is built from crates.io against that
//! library, through a small prefix directory (symlinks to it plus a stand-in `llvm-config`) that
//! must stay where it was built: the binary records the prefix's `lib` as its runpath.

use std::{
    env, fs,
    io::ErrorKind,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{apt, shell};

/// The bpf-linker release we build; it has cargo features `llvm-21`, `llvm-22` and `llvm-23`.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const SUPPORTED_LLVM_MAJORS: &[u32] = &[21, 22, 23];
const NIGHTLY: &str = "nightly";

/// Where bpf-linker and the LLVM prefix it was built against live. Kept outside the repository
/// (and outside `~/.cargo/bin`) so that clean clones and `cargo clean` reuse one build.
pub struct Tools {
    pub dir: PathBuf,
}

impl Tools {
    pub fn locate() -> Result<Self> {
        let dir = match env::var_os("TWTRACE_TOOLS_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home = env::var_os("HOME")
                    .filter(|home| !home.is_empty())
                    .context("neither TWTRACE_TOOLS_DIR nor HOME is set")?;
                Path::new(&home).join(".local/share/twtrace/tools")
            }
        };
        // Absolute, because bpf-linker records `<dir>/llvm-prefix/lib` as its runpath and the
        // llvm-config script hands out these paths to the llvm-sys build.
        let dir = std::path::absolute(&dir)
            .with_context(|| format!("making tools dir {} absolute", dir.display()))?;
        Ok(Self { dir })
    }

    /// Put first on PATH for every cargo invocation, so aya-build's nested cargo finds
    /// `bpf-linker`.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    fn bpf_linker(&self) -> PathBuf {
        self.bin_dir().join("bpf-linker")
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("bpf-linker.stamp")
    }

    fn llvm_prefix(&self) -> PathBuf {
        self.dir.join("llvm-prefix")
    }
}

/// Runs every setup step and returns the tools location for the cargo helper.
pub fn setup() -> Result<Tools> {
    let tools = Tools::locate()?;
    check_rustup()?;
    ensure_nightly()?;
    ensure_nightly_component("rust-src")?;
    // For the second clippy pass of `cargo xtask test` (the no_std eBPF crate needs nightly).
    ensure_nightly_component("clippy")?;
    ensure_bpf_linker(&tools).context("setup step `bpf-linker` failed")?;
    ensure_chromium().context("setup step `chromium` failed")?;
    ensure_prometheus().context("setup step `prometheus` failed")?;
    Ok(tools)
}

/// Debian's headless-capable Chromium: tests/tests/report_html.rs renders the HTML report in it
/// and checks the page fetches nothing. Installing needs root (as the integration tests do);
/// without it the test says it skipped.
fn ensure_chromium() -> Result<()> {
    if !crate::shell::is_root() && apt::find_program("chromium").is_none() {
        eprintln!(
            "xtask: chromium is missing and installing it needs root: the HTML report's \
             browser test will skip"
        );
        return Ok(());
    }
    apt::ensure("xtask", "chromium", "chromium").map(drop)
}

/// Debian's Prometheus server and its promtool: tests/tests/serve.rs has a real Prometheus
/// scrape `twtrace serve` and checks the exposition with `promtool check metrics`. Like
/// chromium, installing needs root; without it that part of the test skips.
fn ensure_prometheus() -> Result<()> {
    if !crate::shell::is_root() && apt::find_program("prometheus").is_none() {
        eprintln!(
            "xtask: prometheus is missing and installing it needs root: the exporter's \
             Prometheus test will skip"
        );
        return Ok(());
    }
    apt::ensure("xtask", "prometheus", "prometheus")?;
    // The same package ships promtool; checked so a broken install says so here.
    apt::ensure("xtask", "promtool", "prometheus").map(drop)
}

fn check_rustup() -> Result<()> {
    match Command::new("rustup")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => bail!("`rustup --version` failed ({status})"),
        Err(err) if err.kind() == ErrorKind::NotFound => bail!(
            "rustup is not on PATH; the eBPF build needs it (aya-build runs `rustup run nightly \
             cargo`). Install it from https://rustup.rs and retry"
        ),
        Err(err) => Err(err).context("running `rustup --version`"),
    }
}

fn ensure_nightly() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if has_nightly(&list) {
        eprintln!("xtask: nightly toolchain ok");
        return Ok(());
    }
    eprintln!("xtask: installing the nightly toolchain (minimal profile, rust-src, clippy) ...");
    run_visible(
        "installing the nightly toolchain",
        Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]),
    )
}

fn ensure_nightly_component(component: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    if has_component(&installed, component) {
        eprintln!("xtask: {component} for nightly ok");
        return Ok(());
    }
    eprintln!("xtask: installing {component} for nightly ...");
    run_visible(
        &format!("installing {component} for nightly"),
        Command::new("rustup").args(["component", "add", component, "--toolchain", NIGHTLY]),
    )
}

fn ensure_bpf_linker(tools: &Tools) -> Result<()> {
    // `rustup run` rather than `rustc +nightly`: it works whether or not the `rustc` first on
    // PATH is the rustup proxy.
    let sysroot =
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let lib_name = find_libllvm(&sysroot_lib)?;
    let llvm = LlvmVersion::parse(&lib_name)?;
    let wanted_stamp = stamp_contents(&lib_name);

    let why = match fs::read_to_string(tools.stamp()) {
        Err(err) if err.kind() == ErrorKind::NotFound => Some("not built yet"),
        Err(err) => {
            return Err(err).with_context(|| format!("reading {}", tools.stamp().display()));
        }
        Ok(stamp) if !stamp_matches(&stamp, &wanted_stamp) => {
            Some("built for another nightly or bpf-linker version")
        }
        Ok(_) if !runs(&tools.bpf_linker()) => Some("existing binary does not run"),
        Ok(_) => None,
    };
    let Some(why) = why else {
        eprintln!(
            "xtask: bpf-linker ok ({BPF_LINKER_VERSION} against {lib_name}, in {})",
            tools.bin_dir().display()
        );
        return Ok(());
    };

    if !SUPPORTED_LLVM_MAJORS.contains(&llvm.major) {
        bail!(
            "nightly's LLVM is {}.{} but bpf-linker {BPF_LINKER_VERSION} only supports LLVM {:?}",
            llvm.major,
            llvm.minor,
            SUPPORTED_LLVM_MAJORS
        );
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {} (1-2 min; {why}) ...",
        llvm.major
    );

    // A stamp is only valid for a finished build: drop it first so an interrupted build is
    // retried next time.
    remove_if_exists(&tools.stamp())?;
    make_llvm_prefix(&tools.llvm_prefix(), &sysroot_lib, &lib_name, llvm)?;

    let feature = format!("llvm-{}", llvm.major);
    let mut install = Command::new("cargo");
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &feature])
        // --force: cargo would otherwise keep an installed binary of the same version and
        // features even though it is linked against an older nightly's libLLVM.
        .arg("--force")
        .arg("--root")
        .arg(&tools.dir)
        .env("LLVM_PREFIX", tools.llvm_prefix())
        // Not the repository: its .cargo/config.toml must not leak into this build.
        .current_dir(&tools.dir);
    eprintln!("xtask: $ {}", shell::display(&install));
    run_visible("building bpf-linker (cargo install)", &mut install)?;

    if !runs(&tools.bpf_linker()) {
        bail!(
            "{} was installed but `--version` fails; is {} intact?",
            tools.bpf_linker().display(),
            tools.llvm_prefix().display()
        );
    }
    fs::write(tools.stamp(), &wanted_stamp)
        .with_context(|| format!("writing {}", tools.stamp().display()))?;
    // cargo install just warned that this bin dir is not on PATH: xtask puts it there itself.
    eprintln!(
        "xtask: bpf-linker ok ({BPF_LINKER_VERSION} against {lib_name}, freshly built; \
         xtask puts {} on PATH for cargo)",
        tools.bin_dir().display()
    );
    Ok(())
}

/// Builds the directory llvm-sys expects from `LLVM_PREFIX`: `lib/libLLVM.so` to link against,
/// `lib/<soname>` for the runtime loader (bpf-linker's runpath points here), and a
/// `bin/llvm-config` that answers the only three questions the llvm-sys build asks.
fn make_llvm_prefix(
    prefix: &Path,
    sysroot_lib: &Path,
    lib_name: &str,
    llvm: LlvmVersion,
) -> Result<()> {
    // Start from scratch so no symlink to a previous nightly's libLLVM survives.
    if prefix.exists() {
        fs::remove_dir_all(prefix).with_context(|| format!("removing {}", prefix.display()))?;
    }
    let lib = prefix.join("lib");
    let bin = prefix.join("bin");
    for dir in [&lib, &bin] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let target = sysroot_lib.join(lib_name);
    for link in [lib.join("libLLVM.so"), lib.join(lib_name)] {
        symlink(&target, &link)
            .with_context(|| format!("symlinking {} -> {}", link.display(), target.display()))?;
    }

    let prefix_str = prefix
        .to_str()
        .with_context(|| format!("tools dir {} is not valid UTF-8", prefix.display()))?;
    let lib_str = lib
        .to_str()
        .with_context(|| format!("tools dir {} is not valid UTF-8", lib.display()))?;
    let script = llvm_config_script(llvm, prefix_str, lib_str);
    let llvm_config = bin.join("llvm-config");
    fs::write(&llvm_config, script)
        .with_context(|| format!("writing {}", llvm_config.display()))?;
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", llvm_config.display()))?;
    Ok(())
}

fn llvm_config_script(llvm: LlvmVersion, prefix: &str, lib: &str) -> String {
    let (major, minor) = (llvm.major, llvm.minor);
    let (prefix, lib) = (sh_quote(prefix), sh_quote(lib));
    format!(
        "#!/bin/sh\n\
         # Written by `cargo xtask setup`: a stand-in llvm-config for building bpf-linker against\n\
         # the libLLVM shipped with the nightly Rust toolchain.\n\
         case \"$1\" in\n\
         \x20 --version) echo {major}.{minor}.0;;\n\
         \x20 --prefix) echo {prefix};;\n\
         \x20 --libdir) echo {lib};;\n\
         \x20 *) echo \"unsupported: $*\" >&2; exit 1;;\n\
         esac\n"
    )
}

/// The libLLVM shared object in nightly's sysroot, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`
/// (that is also its SONAME). The first in sorted order, like `ls | grep | head -1`.
fn find_libllvm(sysroot_lib: &Path) -> Result<String> {
    let entries = fs::read_dir(sysroot_lib)
        .with_context(|| format!("listing nightly's sysroot {}", sysroot_lib.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", sysroot_lib.display()))?;
        if let Some(name) = entry.file_name().to_str()
            && LlvmVersion::parse(name).is_ok()
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    names.into_iter().next().with_context(|| {
        format!(
            "no libLLVM.so.<major>.<minor>* in {}; cannot build bpf-linker against nightly's LLVM",
            sysroot_lib.display()
        )
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlvmVersion {
    pub major: u32,
    pub minor: u32,
}

impl LlvmVersion {
    /// Parses `libLLVM.so.22.1-rust-1.97.0-nightly` (or a bare `libLLVM.so.22`) into 22.1.
    pub fn parse(lib_name: &str) -> Result<Self> {
        let Some(rest) = lib_name.strip_prefix("libLLVM.so.") else {
            bail!("`{lib_name}` does not start with `libLLVM.so.`");
        };
        let version = rest.split_once('-').map_or(rest, |(version, _)| version);
        let mut parts = version.split('.');
        let number = |part: Option<&str>| -> Result<Option<u32>> {
            part.map(|part| {
                part.parse::<u32>()
                    .with_context(|| format!("bad LLVM version `{version}` in `{lib_name}`"))
            })
            .transpose()
        };
        let Some(major) = number(parts.next())? else {
            bail!("no LLVM version in `{lib_name}`");
        };
        let minor = number(parts.next())?.unwrap_or(0);
        Ok(Self { major, minor })
    }
}

/// What the stamp records: the exact libLLVM (its name changes with every nightly) and the
/// bpf-linker version, the two inputs that make a rebuild necessary.
pub fn stamp_contents(lib_name: &str) -> String {
    format!("{lib_name} bpf-linker {BPF_LINKER_VERSION}\n")
}

/// Whitespace-insensitive at the ends, so a stamp edited by hand or without the final newline
/// still counts.
pub fn stamp_matches(found: &str, wanted: &str) -> bool {
    found.trim() == wanted.trim()
}

/// Whether `rustup toolchain list` shows a plain `nightly` (not only dated ones like
/// `nightly-2025-01-01-...`, which `rustup run nightly` would not use).
pub fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name == NIGHTLY
            || name
                .strip_prefix("nightly-")
                .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// Whether `rustup component list --installed` lists `component`, either bare (`rust-src`) or
/// with a target triple (`clippy-x86_64-unknown-linux-gnu`).
pub fn has_component(installed: &str, component: &str) -> bool {
    installed.lines().map(str::trim).any(|line| {
        line.strip_prefix(component).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('-')
                    .is_some_and(|triple| triple.matches('-').count() >= 2)
        })
    })
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn runs(program: &Path) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Runs a query command and returns its stdout; its stderr goes through so errors are visible.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = shell::display(cmd);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8"))
}

/// Runs a command with its output going straight through (progress stays visible).
fn run_visible(step: &str, cmd: &mut Command) -> Result<()> {
    let shown = shell::display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("{step}: could not start `{shown}`"))?;
    if !status.success() {
        bail!("{step} failed ({status}; its output is above): `{shown}`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nightly_libllvm_name() {
        let v = LlvmVersion::parse("libLLVM.so.22.1-rust-1.97.0-nightly").expect("parses");
        assert_eq!(
            v,
            LlvmVersion {
                major: 22,
                minor: 1
            }
        );
    }

    #[test]
    fn parses_stable_and_bare_names() {
        let v = LlvmVersion::parse("libLLVM.so.21.1-rust-1.95.0-stable").expect("parses");
        assert_eq!(
            v,
            LlvmVersion {
                major: 21,
                minor: 1
            }
        );
        let v = LlvmVersion::parse("libLLVM.so.23").expect("parses");
        assert_eq!(
            v,
            LlvmVersion {
                major: 23,
                minor: 0
            }
        );
    }

    #[test]
    fn rejects_other_names() {
        for name in [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so",
            "libLLVM.so.",
            "libLLVM.so.x.1-rust",
            "librustc_driver-abc.so",
        ] {
            assert!(LlvmVersion::parse(name).is_err(), "{name} should not parse");
        }
    }

    #[test]
    fn finds_the_versioned_libllvm() {
        let dir = env::temp_dir().join(format!("xtask-find-libllvm-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        for name in [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-1234.so",
        ] {
            fs::write(dir.join(name), b"").expect("temp file");
        }
        let found = find_libllvm(&dir);
        fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(found.expect("found"), "libLLVM.so.22.1-rust-1.97.0-nightly");
    }

    #[test]
    fn stamp_matches_same_lib_and_version_only() {
        let wanted = stamp_contents("libLLVM.so.22.1-rust-1.97.0-nightly");
        assert_eq!(
            wanted,
            "libLLVM.so.22.1-rust-1.97.0-nightly bpf-linker 0.13.0\n"
        );
        assert!(stamp_matches(&wanted, &wanted));
        assert!(stamp_matches(wanted.trim_end(), &wanted));
        let newer_nightly = stamp_contents("libLLVM.so.22.1-rust-1.98.0-nightly");
        assert!(!stamp_matches(&newer_nightly, &wanted));
        assert!(!stamp_matches(
            "libLLVM.so.22.1-rust-1.97.0-nightly bpf-linker 0.12.0",
            &wanted
        ));
        assert!(!stamp_matches("", &wanted));
    }

    #[test]
    fn detects_nightly_in_toolchain_list() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(has_nightly("nightly\n"));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2025-01-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly(""));
    }

    #[test]
    fn detects_installed_components() {
        let installed = "cargo-x86_64-unknown-linux-gnu\n\
                         clippy-x86_64-unknown-linux-gnu\n\
                         rust-src\n\
                         rust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(installed, "rust-src"));
        assert!(has_component(installed, "clippy"));
        assert!(!has_component(installed, "rustfmt"));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
        assert!(!has_component("clippy-preview\n", "clippy"));
    }

    #[test]
    fn llvm_config_answers_version_prefix_and_libdir() {
        let script = llvm_config_script(
            LlvmVersion {
                major: 22,
                minor: 1,
            },
            "/t/llvm-prefix",
            "/t/llvm-prefix/lib",
        );
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("--version) echo 22.1.0;;"));
        assert!(script.contains("--prefix) echo '/t/llvm-prefix';;"));
        assert!(script.contains("--libdir) echo '/t/llvm-prefix/lib';;"));
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(sh_quote("/a b/c"), "'/a b/c'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
