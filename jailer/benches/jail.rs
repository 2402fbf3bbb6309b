//! What the jail costs a VM start: `skiff-jailer` running Debian's static busybox `true`
//! versus busybox `true` run directly, alternating, N times each; medians and p90 of the
//! wall time from spawn to exit. The difference is what the jail adds to every VMM start
//! (boot or restore) before the VMM's own `main` runs. Needs root and cgroups.
//!
//! `cargo bench -p jailer --bench jail [-- N]`

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use jailer::cgroup::{Cgroup, Layout};
use jailer::{Bind, JailSpec, Limits};

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("jail-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::write(dir.join("disk"), vec![0u8; 4096]).unwrap();
    let spec = JailSpec {
        id: "bench".into(),
        uid: 990_200,
        gid: 990_200,
        root: dir.join("root"),
        exec: "/bin/busybox".into(),
        // As many binds as a restored VM gets.
        read_only: ["/snapshot/vm.state", "/snapshot/vm.mem", "/disk"]
            .iter()
            .map(|j| Bind {
                host: dir.join("disk"),
                jail: j.into(),
            })
            .collect(),
        writable: vec![Bind {
            host: dir.join("run"),
            jail: "/run".into(),
        }],
        devices: vec!["/dev/kvm".into()],
        netns: None,
        limits: Limits {
            cgroup_parent: "skiff-bench".into(),
            cpus: Some(1),
            memory_bytes: Some(192 << 20),
            pids_max: Some(13),
            file_bytes: Some(256 << 20),
            ..Limits::default()
        },
        env: Vec::new(),
        args: vec!["busybox".into(), "true".into()],
    };
    let cg = Cgroup::new(Layout::detect().unwrap(), "skiff-bench", "bench");
    let (mut jailed, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let s = Command::new(env!("CARGO_BIN_EXE_skiff-jailer"))
            .args(spec.to_args())
            .status()
            .unwrap();
        jailed.push(t.elapsed());
        assert!(s.success());
        cg.kill();
        cg.remove().unwrap();
        let t = Instant::now();
        let s = Command::new("/bin/busybox").arg("true").status().unwrap();
        direct.push(t.elapsed());
        assert!(s.success());
    }
    let (jm, j9) = (percentile(&mut jailed, 0.5), percentile(&mut jailed, 0.9));
    let (dm, d9) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.9));
    println!("spawn → exit of busybox true, {n} runs each, alternating:");
    println!("  jailed   p50 {jm:.2} ms  p90 {j9:.2} ms");
    println!("  direct   p50 {dm:.2} ms  p90 {d9:.2} ms");
    println!("  the jail adds {:.2} ms (p50)", jm - dm);
}
