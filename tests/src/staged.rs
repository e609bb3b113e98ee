//! twtrace copied where an unprivileged user can run it (the privilege tests run it as nobody).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::twtrace_bin;

/// The copy of twtrace that nobody runs: in a fresh directory of its own, mode 0755, because
/// the checkout (and so target/release) may lie where nobody may not look, such as /root.
/// Removed when dropped.
pub struct Staged {
    dir: PathBuf,
    pub bin: PathBuf,
}

impl Staged {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("twtrace-{test}-{}", std::process::id()));
        // A leftover of a killed earlier run with the same pid would make create_dir fail.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let staged = Self {
            bin: dir.join("twtrace"),
            dir,
        };
        let world = |path: &Path| {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("chmod 0755 {}: {e}", path.display()));
        };
        world(&staged.dir);
        fs::copy(twtrace_bin(), &staged.bin)
            .unwrap_or_else(|e| panic!("copying twtrace to {}: {e}", staged.bin.display()));
        world(&staged.bin);
        staged
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
