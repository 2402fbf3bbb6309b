//! Snapshots for the fast path: boot a VM of one shape (vCPUs, memory) whose agent says
//! hello and then waits for work, snapshot it through `skiff-vmm`'s control socket, and
//! keep the state and memory files. Tasks of that shape restore from them in a new VMM
//! with their own image disk and vsock socket; the agent redials after the restore's
//! vsock reset and gets the clock and fresh entropy with its run spec.
//!
//! A warm snapshot goes one step further for one image: a base snapshot is restored with
//! the image's disk, its agent mounts the root, forks the exec helper and reads the
//! image's programs ahead, and that VM is snapshotted (see the server's warm snapshots).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent::{Frame, Message, PrepareSpec};
use vmm_api::{Reply, Request};

use super::config::{LaunchConfig, Snapshot, SCRATCH_TEMPLATE_FILE};
use super::control::{FinishOnDrop, TaskControl};
use super::error::LaunchError;
use super::jail::{JailSetupError, VmJail};
use super::scratch_disk::{ScratchDisk, GUEST_DEVICE};
use super::start::{start_vm, AgentListener, Connected, NoAgent};
use super::vmm_process::{StartFrom, API_SOCK};
use crate::network::TaskNetwork;

/// The snapshot's files (as [`Snapshot::in_dir`] finds them).
const STATE_FILE: &str = "vm.state";
const MEMORY_FILE: &str = "vm.mem";

/// The disk attached while the snapshot VM boots: sparse, and larger than any image, so
/// the capacity the guest saw at boot never falls short of a task's disk.
const PLACEHOLDER_DISK_BYTES: u64 = 64 << 30;

/// Longest answer line read from the VMM's control socket.
const MAX_REPLY_LINE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("booting the VM to snapshot: {0}")]
    Launch(#[from] LaunchError),
    #[error("the VM to snapshot was ended")]
    Ended,
    #[error("the VMM's control socket: {0}")]
    Control(String),
}

impl From<JailSetupError> for SnapshotError {
    fn from(e: JailSetupError) -> Self {
        SnapshotError::Launch(e.into())
    }
}

/// Boots a VM shaped like `cfg` (its `rootfs`, `snapshot` and `timeout` are ignored; a
/// `net` asks for a network card, on a TAP of the build's own), waits for the agent,
/// snapshots it into `dir` (replaced atomically) and ends the VM. `control` can end the VM
/// from another thread (e.g. at shutdown).
pub fn build_snapshot(
    cfg: &LaunchConfig,
    dir: &Path,
    control: &TaskControl,
) -> Result<Snapshot, SnapshotError> {
    build(cfg, dir, control, Kind::Base).map(|(s, _)| s)
}

/// What a warm snapshot's agent did before it was taken.
#[derive(Debug, Clone, Copy)]
pub struct WarmBuilt {
    /// Guest time to mount the root, make the cgroup, fork the helper and read ahead.
    pub prepare_ms: u64,
    pub warmed_bytes: u64,
    /// Host time of the whole build, restore to files.
    pub build_ms: u64,
}

/// Restores `base` (a snapshot of `cfg`'s shape) with `cfg.rootfs` as its disk, has the
/// agent prepare that image's root as `prepare` says, and snapshots the VM into `dir`: a
/// per-image warm snapshot, which only tasks of that image (the same disk file) may restore.
pub fn build_warm_snapshot(
    cfg: &LaunchConfig,
    base: &Snapshot,
    prepare: &PrepareSpec,
    dir: &Path,
    control: &TaskControl,
) -> Result<(Snapshot, WarmBuilt), SnapshotError> {
    let (snap, built) = build(cfg, dir, control, Kind::Warm { base, prepare })?;
    built
        .map(|b| (snap, b))
        .ok_or_else(|| SnapshotError::Control("the agent did not prepare the root".into()))
}

/// The VM a snapshot is taken of.
enum Kind<'a> {
    /// Booted with a placeholder disk; its agent waits for work after its hello.
    Base,
    /// Restored from `base` with the image's disk; its agent prepares the root first.
    Warm {
        base: &'a Snapshot,
        prepare: &'a PrepareSpec,
    },
}

/// How long the agent of a warm snapshot's VM may take to prepare the root.
const PREPARE_PATIENCE: Duration = Duration::from_secs(300);

/// How long a restored VM has to say hello (as for tasks).
const RESTORE_PATIENCE: Duration = Duration::from_secs(30);

fn build(
    cfg: &LaunchConfig,
    dir: &Path,
    control: &TaskControl,
    kind: Kind<'_>,
) -> Result<(Snapshot, Option<WarmBuilt>), SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    let work = dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let placeholder = work.join("placeholder.img");
    let rootfs = match kind {
        Kind::Base => {
            std::fs::File::create(&placeholder)
                .and_then(|f| f.set_len(PLACEHOLDER_DISK_BYTES))
                .map_err(io(&placeholder))?;
            placeholder.clone()
        }
        Kind::Warm { .. } => cfg.rootfs.clone(),
    };
    // A build shape's VM boots with a scratch disk of the shape's size, made here and
    // mounted by its agent before the snapshot: it stays beside the snapshot as the
    // template every restored VM gets a copy of.
    let template = work.join(SCRATCH_TEMPLATE_FILE);
    let scratch = match (&kind, &cfg.scratch) {
        (Kind::Base, Some(disk)) => Some(ScratchDisk {
            path: template.clone(),
            bytes: disk.bytes,
        }),
        (Kind::Base, None) => None,
        (Kind::Warm { .. }, s) => s.clone(),
    };
    let with_card = cfg.net.is_some();
    let mut cfg = LaunchConfig {
        rootfs,
        scratch,
        work_dir: work.clone(),
        snapshot: None,
        net: None,
        ..cfg.clone()
    };
    let mut jail = VmJail::new(&cfg.jail, &work)?;
    // A shape with a network card: the card's TAP in a namespace of its own, gone with
    // the build however it ends.
    let _card = if with_card {
        let name = snapshot_netns_name(dir);
        let net = TaskNetwork::for_snapshot(&name, jail.uid(), jail.uid())
            .map_err(|e| SnapshotError::Control(format!("the network card's TAP: {e}")))?;
        jail.join_netns(net.netns_path());
        cfg.net = Some(net);
        Some(NetnsOnDrop(name))
    } else {
        None
    };
    let agent = AgentListener::bind(&jail)?;
    let _finish = FinishOnDrop(control);
    let t0 = Instant::now();
    // The agent's connection stays open while the snapshot is taken: the agent is then
    // waiting for its run spec, which is where every restored VM picks up.
    let (from, patience) = match kind {
        Kind::Base => (StartFrom::Boot { api_sock: true }, cfg.boot_timeout),
        Kind::Warm { base, .. } => (
            StartFrom::Snapshot {
                snap: base,
                api_sock: true,
            },
            RESTORE_PATIENCE,
        ),
    };
    let started = start_vm(
        &cfg,
        &mut jail,
        from,
        &agent,
        control,
        &mut |_| {},
        patience,
    );
    let mut agent_conn = match started {
        Ok(c) => c,
        Err(NoAgent::Killed) => return Err(SnapshotError::Ended),
        Err(NoAgent::Failed(e)) => return Err(e.into()),
    };
    let booted = t0.elapsed();
    let warm = match kind {
        Kind::Base => {
            if cfg.scratch.is_some() {
                let ms = agent_request(
                    &mut agent_conn,
                    Message::MountScratch {
                        device: GUEST_DEVICE.into(),
                    },
                    control,
                )?
                .0;
                tracing::info!("the build shape's scratch disk mounted in {ms} ms (guest)");
            }
            None
        }
        Kind::Warm { prepare, .. } => Some(agent_request(
            &mut agent_conn,
            Message::Prepare(prepare.clone()),
            control,
        )?),
    };
    // The VMM writes the files in its own directory, as its own uid; they are then taken
    // over by root, made read-only and moved beside it, so that no VMM (this one
    // included) can change the snapshot later tasks restore.
    let api = jail.host_path(API_SOCK);
    let reply = control_request(
        &api,
        &Request::Snapshot {
            state_path: VmJail::jail_path(STATE_FILE),
            memory_path: VmJail::jail_path(MEMORY_FILE),
        },
    )?;
    if !reply.ok {
        return Err(SnapshotError::Control(format!(
            "snapshot refused: {}",
            reply.error.as_deref().unwrap_or("no reason given")
        )));
    }
    let _ = control_request(&api, &Request::Shutdown {});
    control.finish();
    drop(jail);
    match &warm {
        None => tracing::info!(
            "snapshot of a {} vCPU / {} MiB VM taken after a {:.1} s boot",
            cfg.vcpus,
            cfg.memory_mib,
            booted.as_secs_f64()
        ),
        Some((prepare_ms, warmed)) => tracing::info!(
            "warm snapshot of a {} vCPU / {} MiB VM taken: restored in {:.1} s, root prepared in {prepare_ms} ms (guest), {warmed} bytes read ahead",
            cfg.vcpus,
            cfg.memory_mib,
            booted.as_secs_f64()
        ),
    }
    drop(agent);
    for name in [STATE_FILE, MEMORY_FILE] {
        let (from, to) = (work.join("vm").join(name), work.join(name));
        take_over(&from, &to).map_err(io(&from))?;
    }
    // The template was the VM's to write: from now on no VM writes it (each restored one
    // writes its own copy).
    if cfg.scratch.is_some() && matches!(kind, Kind::Base) {
        take_over(&template, &template).map_err(io(&template))?;
    }
    let _ = std::fs::remove_file(&placeholder);
    let _ = std::fs::remove_dir_all(work.join("vm"));
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&work, dir).map_err(io(dir))?;
    let snap = Snapshot::in_dir(dir)
        .ok_or_else(|| SnapshotError::Control("the VMM wrote no files".into()))?;
    let built = warm.map(|(prepare_ms, warmed_bytes)| WarmBuilt {
        prepare_ms,
        warmed_bytes,
        build_ms: t0.elapsed().as_millis() as u64,
    });
    Ok((snap, built))
}

/// Sends a request to get ready ([`Message::Prepare`], [`Message::MountScratch`]) and waits
/// for the agent's answer: its guest time and the bytes it read ahead.
fn agent_request(
    c: &mut Connected,
    request: Message,
    control: &TaskControl,
) -> Result<(u64, u64), SnapshotError> {
    let err = |e: &dyn std::fmt::Display| SnapshotError::Control(format!("the agent: {e}"));
    let request = Frame::Control(request);
    let what = request.kind_name();
    c.conn.send(&request).map_err(|e| err(&e))?;
    let deadline = Instant::now() + PREPARE_PATIENCE;
    match c.conn.recv(Some(deadline)) {
        Ok(Frame::Control(Message::Prepared {
            prepare_ms,
            warmed_bytes,
        })) => Ok((prepare_ms, warmed_bytes)),
        Ok(Frame::Control(Message::Failed { message, .. })) => {
            Err(SnapshotError::Control(format!(
                "the agent failed its {what}: {}",
                super::session::bounded(message)
            )))
        }
        Ok(other) => Err(err(&format!(
            "expected prepared, got {}",
            other.kind_name()
        ))),
        Err(_) if control.was_killed() => Err(SnapshotError::Ended),
        Err(e) => Err(err(&e)),
    }
}

/// The namespace of a snapshot VM's card: `skiff-snap-` and a hash of the snapshot's dir.
fn snapshot_netns_name(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    format!("skiff-snap-{}", hex::encode(&h[..6]))
}

/// Deletes a named network namespace when dropped.
struct NetnsOnDrop(String);

impl Drop for NetnsOnDrop {
    fn drop(&mut self) {
        if let Err(e) = crate::network::ip::netns_del(&self.0) {
            tracing::warn!("removing the snapshot VM's namespace: {e}");
        }
    }
}

/// Takes a file the jailed VMM wrote out of its reach, once the VMM is gone: opened without
/// following a symlink (the VMM could have planted one), it must be a regular file with one
/// link; it becomes root's and read-only, is synced, and moves beside its directory.
fn take_over(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let f = super::jail::open_vm_file(from)?;
    if f.metadata()?.nlink() != 1 {
        return Err(std::io::Error::other("a file with several links: refused"));
    }
    std::os::unix::fs::fchown(&f, Some(0), Some(0))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
    f.sync_all()?;
    std::fs::rename(from, to)
}

/// One request on the VMM's control socket, one reply line back. The socket is in the
/// VMM's writable directory: it must be a socket there, not a link to one elsewhere.
fn control_request(api: &Path, req: &Request) -> Result<Reply, SnapshotError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |e: std::io::Error| SnapshotError::Control(format!("{}: {e}", api.display()));
    let meta = std::fs::symlink_metadata(api).map_err(err)?;
    if !meta.file_type().is_socket() {
        return Err(SnapshotError::Control(format!(
            "{} is not a socket",
            api.display()
        )));
    }
    let mut s = super::socket_path::connect(api).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(err)?;
    s.write_all(format!("{}\n", req.to_line()).as_bytes())
        .map_err(err)?;
    let mut line = String::new();
    BufReader::new(&s)
        .take(MAX_REPLY_LINE)
        .read_line(&mut line)
        .map_err(err)?;
    serde_json::from_str(&line)
        .map_err(|e| SnapshotError::Control(format!("the answer is not a reply: {e}")))
}
