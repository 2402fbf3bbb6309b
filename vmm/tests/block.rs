//! virtio-blk in a real guest: an EROFS and an ext4 image mounted read-only from /dev/vda
//! and /dev/vdb with a known file read back, a write to a read-only disk refused, and a
//! file written on a read-write disk that the host reads after the VM is gone.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const SCRIPT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /mnt/a /mnt/b /mnt/c
echo "BLK: serial=$(cat /sys/block/vda/serial)"
mount -t erofs -o ro /dev/vda /mnt/a && echo "BLK: erofs=$(cat /mnt/a/etc/marker)"
mount -t ext4 -o ro /dev/vdb /mnt/b && echo "BLK: ext4=$(cat /mnt/b/etc/marker)"
dd if=/dev/zero of=/dev/vda bs=512 count=1 2>/dev/null || echo "BLK: ro-write=refused"
mount -t ext4 /dev/vdc /mnt/c && echo "written by the guest" > /mnt/c/from-guest.txt
umount /mnt/c && echo "BLK: rw=unmounted"
echo "BLK: done"
reboot -f
"#;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn erofs_and_ext4_read_only_and_a_durable_write() {
    if !kvm_available("erofs_and_ext4_read_only_and_a_durable_write") {
        return;
    }
    let dir = scratch_dir().join(format!("block-{}", std::process::id()));
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/marker"), "skiff-disk-marker\n").unwrap();
    let erofs = dir.join("image.erofs");
    let ext4 = dir.join("image.ext4");
    let rw = dir.join("scratch.ext4");
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&erofs)
        .arg(&tree));
    run(Command::new("truncate").args(["-s", "16M"]).arg(&ext4));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&tree)
        .arg(&ext4));
    run(Command::new("truncate").args(["-s", "16M"]).arg(&rw));
    run(Command::new("mkfs.ext4").arg("-q").arg(&rw));
    let (erofs_sha, ext4_sha) = (sha(&erofs), sha(&ext4));

    let kernel = kernel();
    let initrd = busybox_initramfs(
        "block",
        &[
            "sh", "mount", "umount", "mkdir", "cat", "echo", "dd", "reboot",
        ],
        SCRIPT,
    );
    let disk = |p: &Path, opt: &str| format!("{}{opt}", p.display());
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--disk",
        &disk(&erofs, ",ro"),
        "--disk",
        &disk(&ext4, ",ro"),
        "--disk",
        &disk(&rw, ""),
        "--cmdline",
        "quiet",
    ]);
    let d = describe(&out);
    assert_eq!(out.status.code(), Some(0), "{d}");
    assert_eq!(
        console_value(&out, "BLK: serial=").as_deref(),
        Some(&"skiff-disk0-image.erofs"[..20]),
        "{d}"
    );
    assert_eq!(
        console_value(&out, "BLK: erofs=").as_deref(),
        Some("skiff-disk-marker"),
        "{d}"
    );
    assert_eq!(
        console_value(&out, "BLK: ext4=").as_deref(),
        Some("skiff-disk-marker"),
        "{d}"
    );
    assert_eq!(
        console_value(&out, "BLK: ro-write=").as_deref(),
        Some("refused"),
        "{d}"
    );
    assert_eq!(
        console_value(&out, "BLK: rw=").as_deref(),
        Some("unmounted"),
        "{d}"
    );
    assert!(console_value(&out, "BLK: done").is_some(), "{d}");

    // The read-only images are byte for byte what they were.
    assert_eq!(sha(&erofs), erofs_sha);
    assert_eq!(sha(&ext4), ext4_sha);
    // The guest's file is on the host's disk image.
    let cat = Command::new("debugfs")
        .args(["-R", "cat /from-guest.txt"])
        .arg(&rw)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "written by the guest\n",
        "{d}"
    );
}
