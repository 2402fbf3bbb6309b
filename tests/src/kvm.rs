//! Whether tests that boot VMs can run here.

use std::path::Path;

/// True when VM tests can run. Without `/dev/kvm` it panics in CI (`CI=true`: nothing is
/// skipped) and elsewhere prints why the test is skipped and returns false.
pub fn kvm_available(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: /dev/kvm is missing; VM tests cannot run (CI=true: not skipping)");
    }
    eprintln!("SKIPPED {test}: /dev/kvm is missing");
    false
}
