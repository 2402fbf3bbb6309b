//! A build's `RUN` step in a real microVM: its writes go to a scratch disk the host made
//! with `mkfs.ext4`, the agent exports the overlay's upper layer as a tar, the host reads
//! it as a hostile layer and writes it canonically. One VM from the bundled busybox image.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use control_plane::build::layer::write_layer;
use control_plane::build::step::run_step;
use control_plane::images::limits::Limits;
use control_plane::images::registry::RegistryOptions;
use control_plane::images::run::RunOverrides;
use control_plane::images::store::ImageStore;
use control_plane::install;
use control_plane::launcher::{self, LaunchConfig, TaskControl, TaskEnd};
use control_plane::prepare::{prepare, RootSource, TaskInput};
use skiff_tests::kvm_available;

/// What the step does to the image: a new file with two names and set-uid, a symlink, a
/// FIFO, a deep folder, a deleted lower file (a whiteout), a lower folder replaced
/// (opaque), and writes to the files the agent itself makes (never exported). /tmp is part
/// of the layer, as in a Docker build; what it holds is synced to the scratch disk.
const STEP: &str = "set -e
echo skiff-scratch-marker-7d1f > /tmp/t
sync
echo new > /new.txt
chmod 4755 /new.txt
ln /new.txt /hard.txt
ln -s new.txt /sym
mkfifo /fifo
mkdir -p /d/e && echo deep > /d/e/f
rm /etc/group
echo ignored >> /etc/hosts
rm -rf /usr && mkdir /usr && echo only > /usr/only
echo step-done";

/// (type, mode, link target, content) of each entry of a layer, by path.
type Entries = BTreeMap<String, (char, u32, Option<String>, Vec<u8>)>;

fn entries_of(layer: &[u8]) -> Result<Entries> {
    let mut out = Entries::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    for e in archive.entries()? {
        let mut e = e?;
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let h = e.header().clone();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.insert(
            path,
            (
                h.entry_type().as_byte() as char,
                h.mode()? & 0o7777,
                link,
                data,
            ),
        );
    }
    Ok(out)
}

#[test]
fn a_run_step_exports_its_changes_as_a_canonical_layer() -> Result<()> {
    if !kvm_available("a_run_step_exports_its_changes_as_a_canonical_layer") {
        return Ok(());
    }
    let state = skiff_tests::paths::deep_state_dir("build-step");
    std::fs::create_dir_all(&state)?;
    let store = ImageStore::open(&state, None)?;
    let input = TaskInput {
        root: RootSource::Image("local/busybox:latest".parse()?),
        overrides: RunOverrides {
            cmd: Some(vec!["sh".into(), "-c".into(), STEP.into()]),
            ..Default::default()
        },
        memory_mib: 256,
        hostname: "build".into(),
        stdin: false,
    };
    let prepared = prepare(&store, &RegistryOptions::default(), &input, &|_| {})?;
    let work = state.join("step");
    std::fs::create_dir_all(&work)?;
    let initrd = work.join("agent.cpio");
    launcher::build_agent_initramfs(&install::agent(None)?.path, &initrd)?;
    let scratch = work.join("scratch.img");
    let mut spec = prepared.spec;
    spec.scratch_disk = launcher::scratch_disk::GUEST_DEVICE.into();
    let cfg = LaunchConfig {
        vmm: install::vmm().path,
        jail: launcher::JailConfig::installed(),
        kernel: install::kernel(None)?.path,
        initrd,
        vcpus: 1,
        memory_mib: 256,
        rootfs: prepared.rootfs,
        scratch: Some(launcher::scratch_disk::ScratchDisk {
            path: scratch.clone(),
            bytes: 256 << 20,
        }),
        work_dir: work.clone(),
        timeout: Some(Duration::from_secs(600)),
        stop_timeout: Duration::from_secs(10),
        boot_timeout: Duration::from_secs(600),
        snapshot: None,
        net: None,
    };
    let mut output = Vec::new();
    let outcome = run_step(
        &cfg,
        &spec,
        &TaskControl::new(),
        Limits::default(),
        &work,
        &mut |_, b| output.extend_from_slice(b),
    )?;
    let output = String::from_utf8_lossy(&output).into_owned();
    match &outcome.end {
        TaskEnd::Exited(r) if r.exit_code == 0 => {}
        other => bail!("the step did not succeed: {other:?}\n{output}"),
    }
    assert!(output.contains("step-done"), "{output}");
    // The step's writes went to its disk (the host reads the raw bytes; it never mounts
    // the file system).
    let disk = std::fs::read(&scratch)?;
    let marker = b"skiff-scratch-marker-7d1f";
    assert!(
        disk.windows(marker.len()).any(|w| w == marker),
        "the step's file is not on its scratch disk"
    );
    drop(disk);
    let changes = outcome
        .changes
        .context("a successful step has its changes")?;

    // Written canonically twice: the same bytes.
    let mut layer = Vec::new();
    let digests = write_layer(
        changes.entries.clone(),
        Some(&changes.spool),
        None,
        &mut layer,
    )?;
    let mut again = Vec::new();
    let digests2 = write_layer(changes.entries, Some(&changes.spool), None, &mut again)?;
    assert_eq!((&layer, &digests), (&again, &digests2));

    let entries = entries_of(&layer)?;
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    for agent_file in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        assert!(
            !entries.contains_key(agent_file),
            "{agent_file} in {names:?}"
        );
    }
    let want = [
        "d/",
        "d/e/",
        "d/e/f",
        "etc/",
        "etc/.wh.group",
        "fifo",
        "hard.txt",
        "new.txt",
        "sym",
        "tmp/",
        "tmp/t",
        "usr/",
        "usr/.wh..wh..opq",
        "usr/only",
    ];
    for w in want {
        assert!(entries.contains_key(w), "{w} missing from {names:?}");
    }
    let extra: Vec<&&str> = names.iter().filter(|n| !want.contains(n)).collect();
    assert!(extra.is_empty(), "unexpected entries {extra:?}");
    // The first name of the two holds the content; the other links to it.
    assert_eq!(entries["hard.txt"].0, '0');
    assert_eq!(entries["hard.txt"].1, 0o4755);
    assert_eq!(entries["hard.txt"].3, b"new\n");
    assert_eq!(
        (entries["new.txt"].0, entries["new.txt"].2.as_deref()),
        ('1', Some("hard.txt"))
    );
    assert_eq!(entries["sym"].2.as_deref(), Some("new.txt"));
    assert_eq!(entries["fifo"].0, '6');
    assert_eq!(entries["d/e/f"].3, b"deep\n");
    assert_eq!(entries["tmp/t"].3, b"skiff-scratch-marker-7d1f\n");
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
