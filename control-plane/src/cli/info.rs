//! `skiff info`: what `docker info` tells — the version, the pieces in use (VMM, guest
//! kernel, agent) and where they were found, the kind of KVM and its quirks, the host's
//! capacity, the state directory and what it holds.

use std::path::Path;

use control_plane::install::{self, Found, InstallError};

use crate::outln;

use super::image::store;
use super::serve::host_memory_mib;

/// The host's KVM: hardware, the software-nested PVM, or none.
fn kvm_kind() -> &'static str {
    if !Path::new("/dev/kvm").exists() {
        "none (/dev/kvm is missing: tasks cannot run here)"
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (software-nested, module kvm_pvm)"
    } else {
        "hardware"
    }
}

fn quirks() -> &'static str {
    if Path::new("/sys/module/kvm_pvm").exists() {
        "pvm (guest CPUID features the emulator cannot run are hidden, noxsave; tasks get \
         glibc tunables without AVX)"
    } else {
        "none"
    }
}

fn piece(name: &str, found: Result<Found, InstallError>) {
    match found {
        Ok(f) => {
            let size = std::fs::metadata(&f.path).map_or(0, |m| m.len());
            outln!(
                "{name:<14}{} ({}, {:.1} MB)",
                f.path.display(),
                f.origin,
                size as f64 / 1e6
            );
        }
        Err(e) => outln!("{name:<14}missing: {e}"),
    }
}

fn binary(f: install::Found, what: &'static str) -> Result<install::Found, InstallError> {
    if f.path.is_file() {
        Ok(f)
    } else {
        Err(InstallError::NotThere {
            what,
            path: f.path,
            origin: f.origin,
        })
    }
}

/// Can VMMs be jailed here: a static VMM, root, a cgroup layout.
fn jail_status() -> String {
    let vmm = install::vmm().path;
    let static_vmm = std::fs::File::open(&vmm)
        .map_err(|e| e.to_string())
        .and_then(|f| jailer::elf::check_static(&f, &vmm).map_err(|e| e.to_string()));
    let layout = jailer::cgroup::Layout::detect();
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match (static_vmm, layout, root) {
        (Err(e), _, _) => format!("unavailable: {e}"),
        (_, Err(e), _) => format!("unavailable: {e}"),
        (_, _, false) => "unavailable: jailing VMMs needs root".into(),
        (Ok(()), Ok(jailer::cgroup::Layout::Unified { .. }), true) => {
            "ready (static VMM, cgroup v2)".into()
        }
        (Ok(()), Ok(_), true) => "ready (static VMM, cgroup v1 controllers)".into(),
    }
}

pub fn info(state_dir: &Path) -> anyhow::Result<i32> {
    outln!("{:<14}{}", "version", env!("CARGO_PKG_VERSION"));
    piece("vmm", binary(install::vmm(), "skiff-vmm"));
    piece("jailer", binary(install::jailer(), "skiff-jailer"));
    outln!("{:<14}{}", "jail", jail_status());
    piece("kernel", install::kernel(None));
    piece("agent", install::agent(None));
    outln!("{:<14}{}", "kvm", kvm_kind());
    outln!("{:<14}{}", "quirks", quirks());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    outln!(
        "{:<14}{cpus} CPUs, {} MiB memory",
        "host",
        host_memory_mib()
    );
    outln!("{:<14}{}", "state dir", state_dir.display());
    let images = if state_dir.exists() {
        store(state_dir)?.list()?.len()
    } else {
        0
    };
    outln!("{:<14}{images}", "images");
    let snaps = control_plane::server::snapshots::summarize(&state_dir.join("snapshots"));
    let warm_bytes: u64 = snaps.warm.iter().map(|(_, _, b)| b).sum();
    outln!(
        "{:<14}{} base, {} warm ({} MiB)",
        "snapshots",
        snaps.base,
        snaps.warm.len(),
        warm_bytes >> 20
    );
    for (dir, image, bytes) in &snaps.warm {
        let shape = dir.split('-').nth(1).unwrap_or("?");
        outln!("{:<14}{image}, {shape}, {} MiB", "  warm", bytes >> 20);
    }
    Ok(0)
}
