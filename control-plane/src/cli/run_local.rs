//! `skiff run --local`: one task in a microVM started by this process, no server. Output
//! streams to our stdout/stderr, signals we get are passed to the task (as `docker run`
//! does), `-i` feeds our stdin to it, and we exit with the task's exit code.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use control_plane::images::registry::RegistryOptions;
use control_plane::images::run::RunOverrides;
use control_plane::install;
use control_plane::launcher::{self, LaunchConfig, Output, TaskControl, TaskEnd, TaskEvent};
use control_plane::prepare::{prepare, RootSource, TaskInput};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

use super::image::{progress, store};
use super::local_vm::{self, LocalVm};
use super::run::RunArgs;

/// Signals passed on to the task.
const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

pub fn run(state_dir: &Path, a: RunArgs) -> anyhow::Result<i32> {
    let networked = a.network.as_deref().is_some_and(|n| n != "none");
    if networked || !a.publish.is_empty() || a.name.is_some() {
        return Err(anyhow!(
            "--local runs have loopback only: --network, -p and --name need skiff serve"
        ));
    }
    let (image_arg, cmd) = a.image_and_command()?;
    let root = match (a.rootfs.clone(), image_arg) {
        (Some(r), _) => RootSource::Disk(r),
        (None, Some(name)) => RootSource::Image(name.parse().map_err(|e| anyhow!("{name}: {e}"))?),
        (None, None) => return Err(anyhow!("give an image (or --rootfs FILE)")),
    };
    let input = TaskInput {
        root,
        overrides: RunOverrides {
            entrypoint: a.entrypoint.map(|e| vec![e]),
            cmd: (!cmd.is_empty()).then_some(cmd),
            env: a.env,
            working_dir: a.workdir,
            user: a.user,
        },
        memory_mib: a.memory,
        hostname: "skiff".into(),
        stdin: a.interactive,
    };
    // Found before anything is pulled, so a missing installation fails fast.
    let kernel = install::kernel(None)?.path;
    let agent = install::agent(None)?.path;
    let st = store(state_dir)?;
    let registry = RegistryOptions::default();
    let prepared = prepare(&st, &registry, &input, &progress(image_name(&input.root)))?;
    let LocalVm {
        work,
        initrd,
        vmm,
        snapshots,
    } = local_vm::prepare(
        state_dir,
        &kernel,
        &agent,
        a.snapshot_dir.as_deref(),
        a.no_snapshots,
    )?;
    let mut cfg = LaunchConfig {
        vmm,
        jail: launcher::JailConfig::installed(),
        kernel,
        initrd,
        vcpus: a.cpu,
        memory_mib: a.memory,
        rootfs: prepared.rootfs,
        scratch: None,
        work_dir: work.clone(),
        timeout: a.timeout.map(Duration::from_secs),
        stop_timeout: Duration::from_secs(a.stop_timeout),
        boot_timeout: Duration::from_secs(600),
        snapshot: None,
        net: None,
    };
    cfg.snapshot = snapshots.as_ref().and_then(|s| s.for_shape(&cfg));
    let spec = prepared.spec;
    let control = TaskControl::new();
    let interrupted = forward_signals(&control)?;
    if a.interactive {
        forward_stdin(&control);
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut restored = false;
    let result = launcher::run_task(&cfg, &spec, &control, &mut |e| {
        let _ = match e {
            TaskEvent::Output(Output::Stdout, b) => out.write_all(b).and_then(|_| out.flush()),
            TaskEvent::Output(Output::Stderr, b) => err.write_all(b).and_then(|_| err.flush()),
            TaskEvent::VmStarted { from_snapshot, .. } => {
                restored = from_snapshot;
                Ok(())
            }
            TaskEvent::RestoreFailed {
                reason,
                bad_snapshot,
            } => {
                if let (true, Some(s), Some(snap)) = (bad_snapshot, &snapshots, &cfg.snapshot) {
                    s.discard(snap);
                }
                writeln!(
                    err,
                    "skiff: snapshot restore failed, booting instead: {reason}"
                )
            }
            _ => Ok(()),
        };
    });
    if let Some(s) = &snapshots {
        local_vm::finish(s, "run", &|| interrupted.load(Ordering::SeqCst));
    }
    let _ = std::fs::remove_dir_all(&work);
    let result = result?;
    match &result.end {
        TaskEnd::Failed { message, .. } => eprintln!("skiff: {message}"),
        TaskEnd::TimedOut(t) => eprintln!(
            "skiff: timed out after {} s; the VM was stopped",
            t.as_secs()
        ),
        TaskEnd::Killed => eprintln!("skiff: stopped before the task started"),
        TaskEnd::Lost(why) => eprintln!("skiff: task lost: {why}"),
        TaskEnd::Exited { .. } => {}
    }
    if a.timings {
        let t = &result.timings;
        eprintln!(
            "skiff: timings from VMM start ({}): agent ready {} ms, process started {} ms, exited {} ms, VM stopped {} ms",
            if restored { "restored from a snapshot" } else { "booted" },
            t.agent_ready_ms,
            t.process_started_ms.map_or("-".into(), |v| v.to_string()),
            t.process_exited_ms.map_or("-".into(), |v| v.to_string()),
            t.vm_stopped_ms
        );
    }
    Ok(result.end.exit_code())
}

fn image_name(root: &RootSource) -> String {
    match root {
        RootSource::Image(r) => r.to_string(),
        RootSource::Disk(p) => p.display().to_string(),
    }
}

/// Signals sent to `skiff` go to the task's process; one that comes while the VM is
/// still booting ends the VM (nothing there could receive it yet). The flag returned is
/// set by SIGINT, SIGTERM and SIGHUP, also once the task has ended: they end the wait
/// for a snapshot being made.
fn forward_signals(control: &TaskControl) -> anyhow::Result<Arc<AtomicBool>> {
    let mut signals =
        signal_hook::iterator::Signals::new(FORWARDED).context("cannot install signal handlers")?;
    let control = control.clone();
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if matches!(sig, SIGINT | SIGTERM | SIGHUP) {
                flag.store(true, Ordering::SeqCst);
            }
            tracing::debug!("forwarding signal {sig} to the task");
            // Once the task has ended there is no one to pass it to.
            let _ = control.signal(sig);
        }
    });
    Ok(interrupted)
}

/// Our stdin goes to the task's stdin; our EOF closes it.
fn forward_stdin(control: &TaskControl) {
    let control = control.clone();
    std::thread::spawn(move || control.copy_stdin_from(std::io::stdin().lock()));
}
