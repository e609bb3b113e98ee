//! Showing and running external commands: the shell line xtask announces for each command, the
//! one way of running a step that names it when it fails, and whether xtask runs as root (which
//! decides between sudo and running directly, and whether packages can be installed). A leaf
//! module: every other module may use it, and it uses none of them.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Announces `cmd`, runs it with inherited stdio, and fails naming `step` if it fails.
pub fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("step `{step}`: could not start `{shown}`"))?;
    if !status.success() {
        bail!("step `{step}` failed ({status}): `{shown}`");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails with its stderr unless it succeeds. Not announced:
/// callers that poll (the bench reads bpftool every round) would flood the log.
pub fn capture(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The command as a shell line, with the environment it sets (except PATH, which is long and
/// always just `<tools>/bin` prepended), so it can be copied and re-run by hand.
pub fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        let value = value?;
        (key != "PATH").then(|| {
            format!(
                "{}={}",
                key.to_string_lossy(),
                shell_word(&value.to_string_lossy())
            )
        })
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| shell_word(&word.to_string_lossy()));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Quotes a word for sh only when it needs it, so the usual commands stay readable.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Whether xtask runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(shell_word("--test-threads=1"), "--test-threads=1");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn shows_the_environment_but_not_path() {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "a b"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/x");
        assert_eq!(
            display(&cmd),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y 'a b'"
        );
    }
}
