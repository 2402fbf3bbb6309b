//! Snapshots for the fast path: boot a VM of one shape (vCPUs, memory) whose agent says
//! hello and then waits for work, snapshot it through `skiff-vmm`'s control socket, and
//! keep the state and memory files. Tasks of that shape restore from them in a new VMM
//! with their own image disk and vsock socket; the agent redials after the restore's
//! vsock reset and gets the clock and fresh entropy with its run spec.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent::HOST_PORT;

use super::control::{FinishOnDrop, TaskControl};
use super::session::{start_vm_for_snapshot, LaunchConfig, LaunchError};

/// The disk attached while the snapshot VM boots: sparse, and larger than any image, so
/// the capacity the guest saw at boot never falls short of a task's disk.
const PLACEHOLDER_DISK_BYTES: u64 = 64 << 30;

/// A snapshot's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: PathBuf,
    pub memory: PathBuf,
}

impl Snapshot {
    /// The files in `dir`, if both are there.
    pub fn in_dir(dir: &Path) -> Option<Snapshot> {
        let s = Snapshot {
            state: dir.join("vm.state"),
            memory: dir.join("vm.mem"),
        };
        (s.state.is_file() && s.memory.is_file()).then_some(s)
    }
}

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
    #[error("the VMM's control socket: {0}")]
    Control(String),
}

/// Boots a VM shaped like `cfg` (its `rootfs`, `snapshot` and `timeout` are ignored),
/// waits for the agent, snapshots it into `dir` (replaced atomically) and ends the VM.
/// `control` can end the VM from another thread (e.g. at shutdown).
pub fn build_snapshot(
    cfg: &LaunchConfig,
    dir: &Path,
    control: &TaskControl,
) -> Result<Snapshot, SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    let work = dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let placeholder = work.join("placeholder.img");
    std::fs::File::create(&placeholder)
        .and_then(|f| f.set_len(PLACEHOLDER_DISK_BYTES))
        .map_err(io(&placeholder))?;
    let cfg = LaunchConfig {
        rootfs: placeholder.clone(),
        work_dir: work.clone(),
        snapshot: None,
        ..cfg.clone()
    };
    let uds = work.join("v.sock");
    let listener =
        UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).map_err(io(&work))?;
    let api = work.join("api.sock");
    let _finish = FinishOnDrop(control);
    let t0 = Instant::now();
    // The agent's connection stays open while the snapshot is taken: the agent is then
    // waiting for its run spec, which is where every restored VM picks up.
    let _agent = start_vm_for_snapshot(&cfg, &listener, &uds, &api, control)?;
    let booted = t0.elapsed();
    let (state, memory) = (work.join("vm.state"), work.join("vm.mem"));
    let reply = control_request(
        &api,
        &serde_json::json!({
            "action": "snapshot",
            "state_path": state,
            "memory_path": memory,
        }),
    )?;
    if reply["ok"] != true {
        return Err(SnapshotError::Control(format!(
            "snapshot refused: {}",
            reply["error"].as_str().unwrap_or("no reason given")
        )));
    }
    let _ = control_request(&api, &serde_json::json!({"action": "shutdown"}));
    control.finish();
    tracing::info!(
        "snapshot of a {} vCPU / {} MiB VM taken after a {:.1} s boot",
        cfg.vcpus,
        cfg.memory_mib,
        booted.as_secs_f64()
    );
    for leftover in [
        placeholder,
        api,
        uds,
        work.join(format!("v.sock_{HOST_PORT}")),
    ] {
        let _ = std::fs::remove_file(leftover);
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&work, dir).map_err(io(dir))?;
    Snapshot::in_dir(dir).ok_or_else(|| SnapshotError::Control("the VMM wrote no files".into()))
}

/// One request on the VMM's control socket, one JSON line back.
fn control_request(
    api: &Path,
    req: &serde_json::Value,
) -> Result<serde_json::Value, SnapshotError> {
    let err = |e: std::io::Error| SnapshotError::Control(format!("{}: {e}", api.display()));
    let mut s = UnixStream::connect(api).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(err)?;
    s.write_all(format!("{req}\n").as_bytes()).map_err(err)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(err)?;
    serde_json::from_str(&line)
        .map_err(|e| SnapshotError::Control(format!("answer {line:?} is not JSON: {e}")))
}
