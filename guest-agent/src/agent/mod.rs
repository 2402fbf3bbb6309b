//! `skiff-agent` as PID 1: set the guest up, dial the host, say hello, run what it asks,
//! report, power off. Whatever happens, the VM ends: a task never leaves a VM hanging.

mod cgroup;
mod conn;
mod exec;
mod helper;
mod network;
mod opens;
mod process;
mod readahead;
mod rootfs;
mod system;
mod upper;
mod user;

use std::time::Duration;

use guest_agent::{BootTimings, FailureKind, Frame, Message, RunSpec, HOST_PORT, PROTOCOL_VERSION};

use conn::Conn;
use process::{Outcome, ReadyRoot};

/// Runs the agent; the error is one line for the console.
pub fn run() -> Result<(), String> {
    let agent_start_ms = system::boot_ms();
    system::mount_basics()?;
    if let Err(e) = system::loopback_up() {
        eprintln!("skiff-agent: {e}");
    }
    system::set_hostname("skiff");
    if let Err(e) = system::overcommit_like_containers() {
        eprintln!("skiff-agent: {e}");
    }
    let setup_done_ms = system::boot_ms();
    let port = system::cmdline_value("skiff.port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(HOST_PORT);
    let (mut conn, spec, Readied { prepared, scratch }) =
        wait_for_work(port, agent_start_ms, setup_done_ms)?;
    let spec_ms = system::boot_ms();
    let io = |e: guest_agent::FrameError| format!("host connection: {e}");
    // A VM prepared for one image (a warm snapshot's) runs tasks of that image only: its
    // page cache holds that disk's blocks.
    let ready = match prepared {
        Some(p) if p.image_id == spec.image_id => Some(p.root),
        Some(p) => {
            let kind = FailureKind::ImageDisk;
            let failed = Message::Failed {
                kind,
                exit_code: kind.exit_code(),
                message: format!(
                    "this VM was prepared for image {:?}, the run spec is for {:?}",
                    p.image_id, spec.image_id
                ),
            };
            conn.send(&Frame::Control(failed)).map_err(io)?;
            return Ok(());
        }
        None => None,
    };
    // A VM restored from a snapshot carries the snapshot's clock and random state.
    if spec.wall_clock_ms != 0 {
        if let Err(e) = system::set_wall_clock(spec.wall_clock_ms) {
            eprintln!("skiff-agent: {e}");
        }
    }
    if !spec.entropy.is_empty() {
        if let Err(e) = system::add_entropy(&spec.entropy) {
            eprintln!("skiff-agent: {e}");
        }
    }
    if !spec.hostname.is_empty() {
        system::set_hostname(&spec.hostname);
    }
    if let Some(net) = &spec.network {
        if let Err(message) = network::plan(net).and_then(|p| network::apply(&p)) {
            let kind = FailureKind::Network;
            let failed = Message::Failed {
                kind,
                exit_code: kind.exit_code(),
                message: format!("network: {message}"),
            };
            conn.send(&Frame::Control(failed)).map_err(io)?;
            return Ok(());
        }
    }
    let report =
        match process::run(&spec, spec_ms, ready, scratch.as_deref(), &mut conn).map_err(io)? {
            Outcome::Failed(kind, message) => Message::Failed {
                kind,
                exit_code: kind.exit_code(),
                message,
            },
            // A failed step's changes are not wanted: only a success sends them.
            Outcome::Exited(m)
                if spec.export_upper && matches!(&m, Message::Exited(r) if r.exit_code == 0) =>
            {
                match upper::export(&mut conn) {
                    Ok(()) => m,
                    Err(message) => {
                        let kind = FailureKind::Internal;
                        Message::Failed {
                            kind,
                            exit_code: kind.exit_code(),
                            message,
                        }
                    }
                }
            }
            Outcome::Exited(m) => m,
        };
    conn.send(&Frame::Control(report)).map_err(io)?;
    Ok(())
}

/// A root made for one image on the host's [`Message::Prepare`].
struct Prepared {
    image_id: String,
    root: ReadyRoot,
}

/// What the host had the agent get ready before its snapshot was taken.
#[derive(Default)]
struct Readied {
    prepared: Option<Prepared>,
    /// The scratch disk mounted as the upper's file system ([`Message::MountScratch`]).
    scratch: Option<String>,
}

/// Dials the host, says hello and waits for the run spec. A connection that breaks before
/// the spec arrives is dialled again: that is what a VM restored from a snapshot sees (the
/// restore resets every vsock connection, and the new host listens on a new socket). A
/// host making a warm snapshot first asks for a prepared root; the spec comes after the
/// restore, and the hello then names the image the root is prepared for. A host making a
/// build shape's snapshot first has the scratch disk mounted.
fn wait_for_work(
    port: u32,
    agent_start_ms: u64,
    setup_done_ms: u64,
) -> Result<(Conn, RunSpec, Readied), String> {
    let io = |e: guest_agent::FrameError| format!("host connection: {e}");
    let mut redials = 0;
    let mut readied = Readied::default();
    'dial: loop {
        let mut conn = conn::dial(port, Duration::from_secs(10))?;
        let timings = BootTimings {
            agent_start_ms,
            setup_done_ms,
            connected_ms: system::boot_ms(),
        };
        let mut said_hello = conn.send(&Frame::Control(Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            timings,
            prepared_image: readied.prepared.as_ref().map(|p| p.image_id.clone()),
        }));
        loop {
            let e = match said_hello.and_then(|()| conn.recv(None)) {
                Ok(Frame::Control(Message::Run(spec))) => return Ok((conn, *spec, readied)),
                Ok(Frame::Control(Message::Prepare(p)))
                    if readied.prepared.is_none() && readied.scratch.is_none() =>
                {
                    let (root, answer) = prepare(p, &mut conn)?;
                    readied.prepared = Some(root);
                    said_hello = answer;
                    continue;
                }
                Ok(Frame::Control(Message::MountScratch { device }))
                    if readied.prepared.is_none() && readied.scratch.is_none() =>
                {
                    said_hello = mount_scratch(&device, &mut conn)?;
                    readied.scratch = Some(device);
                    continue;
                }
                Ok(other) => {
                    return Err(format!(
                        "expected a run spec from the host, got {}",
                        other.kind_name()
                    ))
                }
                Err(e) => e,
            };
            if redials >= MAX_REDIALS {
                return Err(io(e));
            }
            redials += 1;
            eprintln!("skiff-agent: {}; dialling the host again", io(e));
            continue 'dial;
        }
    }
}

/// Prepares the root as the host's [`Message::Prepare`] asks and answers it; the answer's
/// send result is the connection's state for the caller. A root that cannot be prepared is
/// reported and ends the agent.
fn prepare(
    p: guest_agent::PrepareSpec,
    conn: &mut Conn,
) -> Result<(Prepared, Result<(), guest_agent::FrameError>), String> {
    let start = system::boot_ms();
    let warm = helper::Warm {
        programs: &p.warm_programs,
        path: &p.path,
        files: &p.warm_files,
    };
    let upper = rootfs::Upper::Memory {
        size_mib: p.upper_size_mib,
    };
    match ReadyRoot::make(&p.image_disk, upper, &warm) {
        Ok((root, warmed_bytes)) => {
            let answer = conn.send(&Frame::Control(Message::Prepared {
                prepare_ms: system::boot_ms() - start,
                warmed_bytes,
            }));
            let prepared = Prepared {
                image_id: p.image_id,
                root,
            };
            Ok((prepared, answer))
        }
        Err((kind, message)) => {
            let failed = Message::Failed {
                kind,
                exit_code: kind.exit_code(),
                message: format!("preparing the root: {message}"),
            };
            conn.send(&Frame::Control(failed))
                .map_err(|e| format!("host connection: {e}"))?;
            Err(format!("preparing the root: {message}"))
        }
    }
}

/// Mounts the scratch disk as [`Message::MountScratch`] asks and answers it; the answer's
/// send result is the connection's state for the caller. A disk that cannot be mounted is
/// reported and ends the agent.
fn mount_scratch(
    device: &str,
    conn: &mut Conn,
) -> Result<Result<(), guest_agent::FrameError>, String> {
    let start = system::boot_ms();
    match rootfs::mount_scratch(device) {
        Ok(()) => Ok(conn.send(&Frame::Control(Message::Prepared {
            prepare_ms: system::boot_ms() - start,
            warmed_bytes: 0,
        }))),
        Err((kind, message)) => {
            let failed = Message::Failed {
                kind,
                exit_code: kind.exit_code(),
                message: format!("mounting the scratch disk: {message}"),
            };
            conn.send(&Frame::Control(failed))
                .map_err(|e| format!("host connection: {e}"))?;
            Err(format!("mounting the scratch disk: {message}"))
        }
    }
}

/// Connections lost before the run spec that the agent dials again.
const MAX_REDIALS: u32 = 100;

pub fn power_off() -> ! {
    system::power_off()
}
