//! Skiff installed the way `scripts/install.sh` installs it, into a prefix of the tests'
//! own, so that tests run the installed `skiff` with none of the Skiff variables set: what
//! a user has after `scripts/setup.sh`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::paths;

/// The variables that point Skiff at its pieces; the installed `skiff` must not need them.
pub const SKIFF_VARS: [&str; 5] = [
    "SKIFF_KERNEL",
    "SKIFF_AGENT",
    "SKIFF_VMM",
    "SKIFF_JAILER",
    "SKIFF_DATA_DIR",
];

/// The guest kernel the build made: `$SKIFF_KERNEL`, else what `kernel-config/build.sh`
/// builds or finds in its cache.
pub fn built_kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("SKIFF_KERNEL") {
        return k.into();
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(repo.join("kernel-config/build.sh"))
        .output()
        .expect("run kernel-config/build.sh");
    assert!(out.status.success(), "kernel build failed");
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        text.lines()
            .last()
            .expect("build.sh prints the kernel path")
            .trim(),
    )
}

/// The prefix Skiff is installed in for this test process (once).
pub fn prefix() -> &'static PathBuf {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let p = paths::tmp_dir().join(format!("prefix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new("bash")
            .arg(repo.join("scripts/install.sh"))
            .arg(built_kernel())
            .env("PREFIX", &p)
            .env("SKIFF_BUILD_DIR", paths::bin_dir())
            .output()
            .expect("run scripts/install.sh");
        assert!(
            out.status.success(),
            "scripts/install.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    })
}

/// A command running the installed `skiff`, with no Skiff variable set.
pub fn skiff() -> Command {
    let mut c = Command::new(prefix().join("bin/skiff"));
    for v in SKIFF_VARS {
        c.env_remove(v);
    }
    c
}
