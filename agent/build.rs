//! Builds the kernel program (`agent-ebpf`) for the bpf target and leaves it in OUT_DIR, where
//! `src/tracer.rs` embeds it.
//!
//! That needs the nightly toolchain with rust-src and a `bpf-linker` built against the nightly's
//! LLVM (`cargo xtask setup` installs both). Without them the build still succeeds, with an empty
//! object and a warning, so that plain `cargo test` on stable runs the host-only unit tests; the
//! binary then refuses to trace with a message saying how to build it properly. `cargo xtask`
//! sets TWTRACE_REQUIRE_EBPF=1 so that a broken eBPF build fails loudly there.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

const OBJECT: &str = "twtrace-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TWTRACE_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(OBJECT);
    let required = env::var_os("TWTRACE_REQUIRE_EBPF").is_some_and(|v| v == "1");
    let skip = env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");

    if skip || (!required && !linker_available()) {
        if !skip {
            println!(
                "cargo:warning=bpf-linker not found: building twtrace without its eBPF program \
                 (run `cargo xtask build` to build the real thing)"
            );
        }
        // An empty object: `include_bytes!` needs a file, and the agent recognises it.
        fs::write(&object, []).context("writing placeholder eBPF object")?;
        return Ok(());
    }

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|p| p.name.as_str() == "twtrace-ebpf")
        .ok_or_else(|| anyhow!("twtrace-ebpf package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}

fn linker_available() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
