//! `skiff-agent` as PID 1: set the guest up, dial the host, say hello, run what it asks,
//! report, power off. Whatever happens, the VM ends: a task never leaves a VM hanging.

mod conn;
mod process;
mod rootfs;
mod system;
mod user;

use std::time::Duration;

use guest_agent::{BootTimings, Frame, Message, HOST_PORT, PROTOCOL_VERSION};

use conn::Conn;
use process::Outcome;

/// Runs the agent; the error is one line for the console.
pub fn run() -> Result<(), String> {
    let agent_start_ms = system::boot_ms();
    system::mount_basics()?;
    if let Err(e) = system::loopback_up() {
        eprintln!("skiff-agent: {e}");
    }
    system::set_hostname("skiff");
    let setup_done_ms = system::boot_ms();
    let port = system::cmdline_value("skiff.port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(HOST_PORT);
    let mut conn = Conn::dial(port, Duration::from_secs(10))?;
    let timings = BootTimings {
        agent_start_ms,
        setup_done_ms,
        connected_ms: system::boot_ms(),
    };
    let io = |e: guest_agent::FrameError| format!("host connection: {e}");
    conn.send(&Frame::Control(Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        timings,
    }))
    .map_err(io)?;
    let spec = match conn.recv().map_err(io)? {
        Frame::Control(Message::Run(spec)) => spec,
        other => return Err(format!("expected a run spec from the host, got {other:?}")),
    };
    if !spec.hostname.is_empty() {
        system::set_hostname(&spec.hostname);
    }
    let report = match process::run(&spec, &mut conn).map_err(io)? {
        Outcome::Failed(kind, message) => Message::Failed {
            kind,
            exit_code: kind.exit_code(),
            message,
        },
        Outcome::Exited(m) => m,
    };
    conn.send(&Frame::Control(report)).map_err(io)?;
    Ok(())
}

pub fn power_off() -> ! {
    system::power_off()
}
