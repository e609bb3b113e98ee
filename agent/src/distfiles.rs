//! The files a package ships beside the binary: man pages and shell completions, generated from
//! the same clap definitions ([`crate::cli::Cli`]) that parse the command line, so they cannot
//! drift from it.
//!
//! `cargo xtask dist` asks the binary it packages for them with `twtrace __dist-files DIR`. That
//! word is recognised in `main` before clap runs, so it appears in no help, man page or
//! completion. Doing it in the binary rather than in xtask keeps xtask from depending on the
//! agent library: that dependency would compile the whole agent (and re-run its eBPF build
//! script, whose inputs differ between xtask's own build and the agent's) on every `cargo xtask`.

use std::{
    ffi::OsString,
    fs,
    io::{self, Write as _},
    path::Path,
};

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// The first argument that selects this mode instead of the normal command line.
pub const ARG: &str = "__dist-files";

/// Completion scripts and the file name each shell's vendor directory expects.
pub const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "twtrace"),
    (Shell::Zsh, "_twtrace"),
    (Shell::Fish, "twtrace.fish"),
];

/// What the command line asks of this module: `None` when its first argument is not [`ARG`]
/// (the normal command line), else the output directory or a usage error.
pub fn requested(args: impl IntoIterator<Item = OsString>) -> Option<Result<OsString, String>> {
    let mut args = args.into_iter().skip(1);
    if args.next()? != ARG {
        return None;
    }
    Some(match (args.next(), args.next()) {
        (Some(dir), None) => Ok(dir),
        _ => Err(format!("usage: twtrace {ARG} DIR")),
    })
}

/// Writes `DIR/man/*.1` (twtrace.1 and one page per command, `twtrace-trace.1` ...) and
/// `DIR/completions/{twtrace,_twtrace,twtrace.fish}` (bash, zsh, fish).
pub fn write_all(dir: &Path) -> io::Result<()> {
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    clap_mangen::generate_to(Cli::command(), &man)?;

    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, name) in COMPLETIONS {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "twtrace", &mut script);
        let mut file = fs::File::create(completions.join(name))?;
        file.write_all(&script)?;
        file.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_the_exact_first_word_selects_it() {
        assert_eq!(requested(args(&["twtrace"])), None);
        assert_eq!(requested(args(&["twtrace", "trace"])), None);
        assert_eq!(requested(args(&["twtrace", "-v", ARG, "x"])), None);
        assert_eq!(
            requested(args(&["twtrace", ARG, "out"])),
            Some(Ok(OsString::from("out")))
        );
        assert!(matches!(requested(args(&["twtrace", ARG])), Some(Err(_))));
        assert!(matches!(
            requested(args(&["twtrace", ARG, "a", "b"])),
            Some(Err(_))
        ));
    }

    #[test]
    fn writes_pages_for_every_command_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("twtrace-distfiles-{}", std::process::id()));
        write_all(&dir).expect("write");
        let main = fs::read_to_string(dir.join("man/twtrace.1")).expect("twtrace.1");
        assert!(main.contains(".TH twtrace 1"), "{main}");
        for command in Cli::command().get_subcommands() {
            let page = dir.join(format!("man/twtrace-{}.1", command.get_name()));
            assert!(page.is_file(), "{} missing", page.display());
        }
        let bash = fs::read_to_string(dir.join("completions/twtrace")).expect("bash");
        assert!(bash.contains("complete -F"), "{bash}");
        assert!(!bash.contains(ARG));
        assert!(dir.join("completions/_twtrace").is_file());
        assert!(dir.join("completions/twtrace.fish").is_file());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
