//! Where the binaries under test and the tests' scratch space are.
//!
//! The binaries come from the same cargo profile directory as the test executable
//! (`target/release/deps/NAME-HASH` → `target/release/skiff`), so `cargo build --release
//! --workspace --bins` must have run first (`scripts/test.sh` does); `SKIFF_BIN_DIR`
//! points elsewhere, e.g. at an installed copy.

use std::path::PathBuf;

/// The directory holding `skiff`, `skiff-vmm` and the other binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SKIFF_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe
        .parent()
        .expect("the test executable's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A binary of the workspace; panics with what to do when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (cargo build --release --workspace --bins; \
         scripts/test.sh does) or point SKIFF_BIN_DIR at them",
        p.display()
    );
    p
}

pub fn skiff() -> PathBuf {
    bin("skiff")
}

pub fn skiff_vmm() -> PathBuf {
    bin("skiff-vmm")
}

/// A path under [`tmp_dir`] for a state dir named after `name`, padded to 90 bytes: deep
/// enough that the sockets of tasks and snapshot builds under it pass the 107 bytes a Unix
/// socket address holds (as they do on a machine whose checkout is deeper than ours), and
/// shallow enough that the server's own `skiff.sock` still fits.
pub fn deep_state_dir(name: &str) -> PathBuf {
    const LEN: usize = 90;
    let mut d = tmp_dir()
        .join(format!("{name}-{}", std::process::id()))
        .into_os_string();
    if d.len() + 1 < LEN {
        d.push("-");
        d.push("s".repeat(LEN - d.len()));
    }
    PathBuf::from(d)
}

/// Scratch space for tests: `target/tmp` beside the profile directories.
pub fn tmp_dir() -> PathBuf {
    let d = bin_dir()
        .parent()
        .map(|p| p.join("tmp"))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&d).expect("create the tests' scratch directory");
    d
}
