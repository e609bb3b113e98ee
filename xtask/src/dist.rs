//! `cargo xtask dist`: an installable `.deb` and a tarball of the same files.
//!
//! The binary is linked statically against musl, so one package runs on any x86_64 Linux
//! whatever its C library; the man pages and completions come from that binary itself
//! (`twtrace __dist-files DIR`, see agent/src/distfiles.rs), so they describe exactly what is
//! shipped. The `.deb` is a tree staged here and packed with `dpkg-deb --build` rather than by
//! cargo-deb: with no maintainer scripts, conffiles or shared-library dependencies there is
//! nothing cargo-deb would do that this does not, and it would be one more tool to build.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    apt,
    cargo::{self, Ebpf},
    setup::{self, Tools},
    shell,
};

/// The target of the static build.
const MUSL: &str = "x86_64-unknown-linux-musl";
/// Shipped when another part of the tree provides it; the package is complete without it.
const SYSTEMD_UNIT: &str = "deploy/systemd/twtrace.service";
const LICENSES: [&str; 2] = ["LICENSE-MIT", "LICENSE-APACHE"];
/// dpkg wants a name and an address here. A placeholder until the project has a contact address
/// to publish; nothing reads it but people.
const MAINTAINER: &str = "The twtrace authors <twtrace@localhost>";
const DESCRIPTION: &str = "\
which process is churning or leaking TCP connections
 An eBPF agent that follows every TCP socket through its states and reports each
 transition with the process that owns the socket and the peer it talks to:
 who makes TIME_WAIT, who leaks CLOSE_WAIT, whose local ports run out.";

#[derive(Args)]
pub struct DistArgs {
    /// Where to put the .deb, the tarball and the staged tree [default: <target dir>/dist].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Package the glibc build (dynamically linked, depends on libc6) instead of the static musl
    /// one.
    #[arg(long)]
    pub glibc: bool,
}

/// What `dist` made.
pub struct Dist {
    pub version: String,
    pub deb: PathBuf,
    pub tarball: PathBuf,
    /// The staged tree the .deb was packed from (its `usr/...` is what gets installed).
    pub root: PathBuf,
    /// Linked statically against musl (else dynamically against glibc).
    pub is_static: bool,
}

pub fn dist(args: &DistArgs) -> Result<Dist> {
    let tools = setup::setup()?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => cargo::target_dir(&tools)?.join("dist"),
    };
    build(&tools, &out, !args.glibc)
}

/// Builds the binary, stages the tree under `out`, and packs the .deb and the tarball there.
pub fn build(tools: &Tools, out: &Path, want_static: bool) -> Result<Dist> {
    let (bin, is_static) = build_binary(tools, want_static)?;
    let version = version_of(&bin)?;
    let repo = repo_root()?;

    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let root = out.join(format!("twtrace_{version}_amd64"));
    if root.exists() {
        // A leftover from an earlier run may hold files this one would not ship.
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    stage(&bin, &repo, &root)?;

    let tarball = out.join(format!("twtrace-{version}-x86_64-linux.tar.gz"));
    let top = format!("twtrace-{version}-x86_64-linux");
    let mut tar = Command::new("tar");
    tar.args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--transform=s,^,{top}/,"))
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .arg("usr");
    shell::run("tarball", &mut tar)?;

    // The control file last, so the tarball above cannot pick it up.
    let installed_kib = du_kib(&root.join("usr"))?;
    write_file(
        &root.join("DEBIAN/control"),
        &control(&version, installed_kib, is_static),
        0o644,
    )?;
    // dpkg-deb refuses a DEBIAN directory that is group- or world-writable.
    set_mode(&root.join("DEBIAN"), 0o755)?;
    let deb = out.join(format!("twtrace_{version}_amd64.deb"));
    let dpkg_deb = apt::find_program("dpkg-deb")
        .context("dpkg-deb not found: building the .deb needs Debian's dpkg")?;
    let mut pack = Command::new(dpkg_deb);
    // --root-owner-group: files owned by root in the package whoever builds it.
    pack.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb);
    shell::run("deb", &mut pack)?;

    eprintln!(
        "xtask: dist: {} and {} ({})",
        deb.display(),
        tarball.display(),
        if is_static {
            "static, musl"
        } else {
            "dynamic, glibc"
        }
    );
    Ok(Dist {
        version,
        deb,
        tarball,
        root,
        is_static,
    })
}

/// The release binary: static against musl when its target can be installed, else the usual
/// glibc build (with a warning), which needs the C library of the machine it runs on.
fn build_binary(tools: &Tools, want_static: bool) -> Result<(PathBuf, bool)> {
    let target_dir = cargo::target_dir(tools)?;
    let musl = want_static && ensure_musl_target();
    let mut args = vec!["build", "--release", "--package", "twtrace"];
    if musl {
        args.extend(["--target", MUSL]);
    }
    shell::run("dist build", &mut cargo::cargo(tools, Ebpf::Require, args)?)?;
    Ok(if musl {
        (target_dir.join(MUSL).join("release/twtrace"), true)
    } else {
        (target_dir.join("release/twtrace"), false)
    })
}

fn ensure_musl_target() -> bool {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == MUSL)
        });
    if installed {
        return true;
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", MUSL]);
    match shell::run("musl target", &mut add) {
        Ok(()) => true,
        Err(err) => {
            eprintln!(
                "xtask: warning: {err:#}; packaging the glibc build instead (it needs glibc on \
                 the machine it is installed on)"
            );
            false
        }
    }
}

/// The version the binary reports (`twtrace 0.1.0`), which is the package's version.
fn version_of(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text).with_context(|| format!("{} --version printed {text:?}", bin.display()))
}

fn parse_version(text: &str) -> Option<String> {
    let version = text.trim().strip_prefix("twtrace ")?;
    let ok = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c));
    ok.then(|| version.to_owned())
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn repo_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// Lays out the installed tree under `root` (`root/usr/...`).
fn stage(bin: &Path, repo: &Path, root: &Path) -> Result<()> {
    let installed = root.join("usr/bin/twtrace");
    copy(bin, &installed, 0o755)?;
    // The release profile keeps debug info (11 MB against 7 MB); a package ships without it, as
    // Debian's dh_strip would. The symbols stay, so a panic's backtrace still names functions.
    match apt::find_program("strip") {
        Some(strip) => shell::run(
            "strip",
            Command::new(strip).arg("--strip-debug").arg(&installed),
        )?,
        None => eprintln!("xtask: dist: no `strip` (binutils): shipping the binary unstripped"),
    }

    // Man pages and completions, from the binary's own clap definitions.
    let generated = root.join("generated.tmp");
    let mut gen_cmd = Command::new(bin);
    gen_cmd.arg("__dist-files").arg(&generated);
    shell::run("man pages and completions", &mut gen_cmd)?;
    let man1 = root.join("usr/share/man/man1");
    let mut pages = fs::read_dir(generated.join("man"))
        .context("reading the generated man pages")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    pages.sort();
    for page in &pages {
        let name = page.file_name().context("man page without a name")?;
        copy(page, &man1.join(name), 0o644)?;
    }
    // -n: no name or time stamp inside, so the same pages give the same bytes (Debian asks
    // for -9n).
    let mut gzip = Command::new("gzip");
    gzip.arg("-9nf").args(
        pages
            .iter()
            .filter_map(|page| page.file_name())
            .map(|name| man1.join(name)),
    );
    shell::run("gzip man pages", &mut gzip)?;
    for (from, to) in COMPLETION_DIRS {
        copy(
            &generated.join("completions").join(from),
            &root.join(to),
            0o644,
        )?;
    }
    fs::remove_dir_all(&generated)?;

    let unit = repo.join(SYSTEMD_UNIT);
    if unit.is_file() {
        copy(
            &unit,
            &root.join("usr/lib/systemd/system/twtrace.service"),
            0o644,
        )?;
    } else {
        eprintln!("xtask: dist: no {SYSTEMD_UNIT} in this tree: the package has no systemd unit");
    }

    let doc = root.join("usr/share/doc/twtrace");
    for license in LICENSES {
        copy(&repo.join(license), &doc.join(license), 0o644)?;
    }
    let mit = fs::read_to_string(repo.join("LICENSE-MIT")).context("reading LICENSE-MIT")?;
    write_file(&doc.join("copyright"), &copyright(&mit)?, 0o644)?;
    fix_dir_modes(root)
}

/// Each generated completion script and where its shell looks for vendor completions.
pub const COMPLETION_DIRS: [(&str, &str); 3] = [
    ("twtrace", "usr/share/bash-completion/completions/twtrace"),
    ("_twtrace", "usr/share/zsh/vendor-completions/_twtrace"),
    (
        "twtrace.fish",
        "usr/share/fish/vendor_completions.d/twtrace.fish",
    ),
];

/// The debian/control paragraph. Static builds depend on nothing; the glibc fallback on libc6.
fn control(version: &str, installed_kib: u64, is_static: bool) -> String {
    let depends = if is_static { "" } else { "Depends: libc6\n" };
    format!(
        "Package: twtrace\nVersion: {version}\nArchitecture: amd64\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n{depends}Section: net\nPriority: optional\n\
         Description: {DESCRIPTION}\n"
    )
}

/// /usr/share/doc/twtrace/copyright in Debian's machine-readable format (DEP-5): both licenses,
/// the MIT text in full (Debian has no common copy of it), Apache-2.0 by reference to the copy
/// every Debian system has.
fn copyright(mit_text: &str) -> Result<String> {
    let holder = mit_text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Copyright"))
        .map(|rest| rest.trim().trim_start_matches("(c)").trim())
        .context("LICENSE-MIT has no Copyright line")?;
    // DEP-5 continuation lines start with a space; an empty line is written " .".
    let body = mit_text
        .lines()
        .skip_while(|line| !line.starts_with("Permission"))
        .map(|line| {
            if line.trim().is_empty() {
                " .".to_owned()
            } else {
                format!(" {}", line.trim_end())
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: twtrace\n\
         \n\
         Files: *\n\
         Copyright: {holder}\n\
         License: MIT or Apache-2.0\n \
         At your option. The texts are also in /usr/share/doc/twtrace/LICENSE-MIT and\n \
         /usr/share/doc/twtrace/LICENSE-APACHE.\n\
         \n\
         License: MIT\n{body}\n\
         \n\
         License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License, Version 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n"
    ))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        create_dirs(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, mode)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        create_dirs(dir)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn create_dirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Every directory under `dir` 0755 whatever the umask: dpkg creates them with the modes they
/// have in the package.
fn fix_dir_modes(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fix_dir_modes(&entry.path())?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Installed-Size: the files' sizes in KiB, each rounded up (what dpkg-gencontrol does).
fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du_kib(&entry.path())?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(total)
}

/// `file`'s verdict on a static executable: "statically linked" or, for Rust's musl default,
/// "static-pie linked".
pub fn is_static_by_file(file_output: &str) -> bool {
    file_output.contains("statically linked") || file_output.contains("static-pie linked")
}

/// The `dist` step of `cargo xtask test`: builds the packages into `<target>/dist`, installs the
/// .deb, checks what it installed, and removes it again (also when a check fails). Installing
/// needs root; otherwise only the build and the tarball's contents are checked.
pub fn check(tools: &Tools) -> Result<()> {
    let dist = build(tools, &cargo::target_dir(tools)?.join("dist"), true)?;
    check_tarball(&dist)?;
    let file = apt::ensure("xtask", "file", "file")?;
    let bin = dist.root.join("usr/bin/twtrace");
    let verdict = output(Command::new(&file).arg("-L").arg(&bin))?;
    if dist.is_static && !is_static_by_file(&verdict) {
        bail!("the musl build is not static: {verdict}");
    }
    eprintln!("xtask: dist: {}", verdict.trim());
    if !crate::shell::is_root() {
        eprintln!("xtask: dist: not root: not installing the .deb");
        return Ok(());
    }
    apt::ensure("xtask", "man", "man-db")?;
    // Refuse rather than replace and then remove a twtrace someone installed on purpose.
    let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", "twtrace"]))
        .unwrap_or_default();
    if status.contains("installed") && !status.contains("not-installed") {
        bail!("a twtrace package is already installed here ({status}); remove it first");
    }
    // Removed again whatever happened: a failed `dpkg -i` can leave the package half installed
    // (and `dpkg -r` of a package that is not installed only warns).
    let checked = shell::run("dpkg -i", Command::new("dpkg").arg("-i").arg(&dist.deb))
        .and_then(|()| check_installed(&dist, &file));
    let removed = shell::run("dpkg -r", Command::new("dpkg").args(["-r", "twtrace"]));
    checked?;
    removed?;
    if Path::new("/usr/bin/twtrace").exists() {
        bail!("dpkg -r twtrace left /usr/bin/twtrace behind");
    }
    Ok(())
}

fn check_tarball(dist: &Dist) -> Result<()> {
    let listing = output(Command::new("tar").arg("-tzf").arg(&dist.tarball))?;
    let top = format!("twtrace-{}-x86_64-linux/", dist.version);
    for path in ["usr/bin/twtrace", "usr/share/man/man1/twtrace.1.gz"]
        .into_iter()
        .chain(COMPLETION_DIRS.map(|(_, to)| to))
    {
        let wanted = format!("{top}{path}");
        if !listing.lines().any(|line| line == wanted) {
            bail!("{} lacks {wanted}", dist.tarball.display());
        }
    }
    if listing.lines().any(|line| line.contains("DEBIAN")) {
        bail!("{} holds the .deb's control files", dist.tarball.display());
    }
    Ok(())
}

fn check_installed(dist: &Dist, file: &Path) -> Result<()> {
    let bin = "/usr/bin/twtrace";
    let version = output(Command::new(bin).arg("--version"))?;
    if version.trim() != format!("twtrace {}", dist.version) {
        bail!("{bin} --version printed {version:?}");
    }
    let help = output(Command::new(bin).arg("--help"))?;
    if !help.contains("Usage: twtrace") {
        bail!("{bin} --help printed no usage line: {help}");
    }
    if dist.is_static && !is_static_by_file(&output(Command::new(file).arg(bin))?) {
        bail!("the installed {bin} is not static");
    }
    // Through man's own search path, so this also checks where the pages were put.
    // MAN_DISABLE_SECCOMP: man-db's sandbox fails in some containers, and is no part of this.
    for page in ["twtrace", "twtrace-trace"] {
        let mut man = Command::new("man");
        man.args(["--pager=cat", page])
            .env("MAN_DISABLE_SECCOMP", "1")
            .env("MANWIDTH", "80");
        let text = output(&mut man)?;
        if !text.contains("twtrace") || !text.contains("NAME") {
            bail!("`man {page}` rendered no page: {text}");
        }
    }
    for (_, to) in COMPLETION_DIRS {
        let path = Path::new("/").join(to);
        if !path.is_file() {
            bail!("{} was not installed", path.display());
        }
    }
    // The bash script must at least load and register itself.
    let mut bash = Command::new("bash");
    bash.args([
        "-c",
        ". /usr/share/bash-completion/completions/twtrace && complete -p twtrace",
    ]);
    output(&mut bash)?;
    eprintln!("xtask: dist: installed package checked: --version, --help, man, completions");
    Ok(())
}

/// Runs `cmd`, failing with its stderr unless it succeeds; its stdout.
fn output(cmd: &mut Command) -> Result<String> {
    eprintln!("xtask: $ {}", shell::display(cmd));
    let stdout = shell::capture(cmd)?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_binary() {
        assert_eq!(parse_version("twtrace 0.1.0\n").as_deref(), Some("0.1.0"));
        assert_eq!(
            parse_version("twtrace 1.2.3-rc.1").as_deref(),
            Some("1.2.3-rc.1")
        );
        assert_eq!(parse_version("other 0.1.0"), None);
        assert_eq!(parse_version("twtrace "), None);
        assert_eq!(parse_version("twtrace 1 2"), None);
    }

    #[test]
    fn control_depends_only_when_dynamic() {
        let control_static = control("0.1.0", 4096, true);
        assert!(control_static.contains("Version: 0.1.0\n"));
        assert!(control_static.contains("Installed-Size: 4096\n"));
        assert!(!control_static.contains("Depends"));
        assert!(control("0.1.0", 1, false).contains("Depends: libc6\n"));
        // Every continuation line of the description starts with a space, no empty lines.
        let description = control_static
            .split_once("Description: ")
            .expect("description")
            .1;
        for line in description.lines().skip(1) {
            assert!(line.starts_with(' ') && line.trim() != "", "{line:?}");
        }
    }

    #[test]
    fn copyright_is_dep5() {
        let mit = "MIT License\n\nCopyright (c) 2026 The twtrace authors\n\nPermission is \
                   granted.\n\nTHE SOFTWARE IS PROVIDED \"AS IS\".\n";
        let text = copyright(mit).expect("copyright");
        assert!(text.starts_with("Format: https://www.debian.org/"));
        assert!(text.contains("Copyright: 2026 The twtrace authors\n"));
        assert!(text.contains("License: MIT\n Permission is granted.\n .\n THE SOFTWARE"));
        assert!(text.contains("License: Apache-2.0\n"));
        // Paragraphs are separated by exactly one empty line; no other line is empty.
        assert!(!text.contains("\n\n\n"));
        assert!(copyright("no holder here").is_err());
    }

    #[test]
    fn file_verdicts() {
        assert!(is_static_by_file(
            "twtrace: ELF 64-bit LSB pie executable, x86-64, static-pie linked, stripped"
        ));
        assert!(is_static_by_file(
            "ELF 64-bit LSB executable, statically linked"
        ));
        assert!(!is_static_by_file(
            "ELF 64-bit LSB pie executable, dynamically linked, interpreter /lib64/ld-linux"
        ));
    }
}
