//! [`Vm::run`]: the event loop, one thread per vCPU, the controller and its control
//! socket, the profiler, each under its seccomp filter; then waiting for the VM's end.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::error::{io_err, VmError};
use super::instance::Vm;
use crate::api;
use crate::controller::Controller;
use crate::cpu::control::VcpuHandles;
use crate::cpu::kick;
use crate::cpu::vcpu::VcpuIo;
use crate::event_loop::{self, StdinToSerial, Subscriber};
use crate::exit::ExitReason;
use crate::profile::{self, Sampler, SymbolMap};
use crate::seccomp::{self, ThreadKind};

impl Vm {
    /// Starts the vCPUs and the event loop, and blocks until the guest ends. Every thread
    /// installs its seccomp filter first (`options.seccomp`); this one once it has started
    /// all others, before it waits.
    pub fn run(mut self) -> Result<ExitReason, VmError> {
        kick::install_handler().map_err(|e| VmError::Io {
            what: "vCPU kick signal",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let options = self.options.clone();
        let mode = options.seccomp;
        // The profile's file and symbols are opened now: the main thread's filter allows no
        // open.
        let profile = options
            .profile_out
            .as_deref()
            .map(|out| ProfileOut::open(out, options.profile_symbols.as_deref()));
        let sampler = profile.as_ref().map(|_| Arc::new(Sampler::default()));

        let mut subscribers: Vec<Subscriber> = self
            .devices
            .virtio
            .iter()
            .map(|d| d.subscriber.clone())
            .collect();
        // SAFETY: isatty only inspects the file descriptor number it is given.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            subscribers.push(Arc::new(Mutex::new(StdinToSerial::new(
                self.devices.serial.clone(),
            ))));
        }
        let _event_loop = event_loop::spawn(subscribers, self.exit.clone(), mode)
            .map_err(io_err("event loop"))?;

        let starts = std::mem::take(&mut self.vcpus)
            .into_iter()
            .map(|vcpu| {
                let io = VcpuIo {
                    bus: self.devices.pio.clone(),
                    mmio: self.devices.mmio.clone(),
                    exit: self.exit.clone(),
                    sampler: sampler.clone(),
                };
                (vcpu.id, move |channel| {
                    // No guest code runs on this thread before its filter is on.
                    match seccomp::install(ThreadKind::Vcpu, mode) {
                        Ok(()) => vcpu.run(io, channel),
                        Err(e) => io.exit.signal(ExitReason::VmmError(e.to_string())),
                    }
                })
            })
            .collect();
        let vcpus = VcpuHandles::spawn(starts).map_err(io_err("vCPU thread"))?;
        if let Some(start) = options.started {
            report_timings(start, &self.timings, options.print_timings);
        }
        let threads = vcpus.threads();
        let exit = self.exit.clone();
        let serial = self.devices.serial.clone();

        let controller = Arc::new(Controller::new(self, vcpus));
        let _api =
            match &options.api_sock {
                Some(path) => Some(api::serve(path, controller.clone(), mode).map_err(
                    |source| VmError::ApiSocket {
                        path: path.clone(),
                        source,
                    },
                )?),
                None => None,
            };

        let stop = Arc::new(AtomicBool::new(false));
        let kicker = match &sampler {
            Some(_) => Some(
                profile::start_kicker(
                    threads,
                    options.profile_hz,
                    stop.clone(),
                    mode,
                    exit.clone(),
                )
                .map_err(io_err("profiler thread"))?,
            ),
            None => None,
        };

        // Every other thread is running: from here on this one only waits, writes and ends.
        if let Err(e) = seccomp::install(ThreadKind::Main, mode) {
            exit.signal(ExitReason::VmmError(e.to_string()));
            return Err(e.into());
        }
        let reason = exit.wait();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(k) = kicker {
            let _ = k.join();
        }
        if let (Some(s), Some(p)) = (&sampler, profile) {
            p.write(s);
        }
        if let Some(path) = &options.api_sock {
            let _ = std::fs::remove_file(path);
        }
        let mut serial = serial.lock().unwrap_or_else(|p| p.into_inner());
        let _ = serial.0.writer_mut().flush();
        Ok(reason)
    }
}

/// Logs (and with `print`, writes on stderr) how long the restore took, by phase.
fn report_timings(start: std::time::Instant, phases: &[(&str, std::time::Duration)], print: bool) {
    let total = start.elapsed();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let mut prev = std::time::Duration::ZERO;
    let mut parts = Vec::new();
    for (name, at) in phases {
        parts.push(format!("{name} {:.2}", ms(at.saturating_sub(prev))));
        prev = *at;
    }
    parts.push(format!(
        "vcpu threads {:.2}",
        ms(total.saturating_sub(prev))
    ));
    let line = format!(
        "restored: vCPUs resumed {:.2} ms after start ({} ms)",
        ms(total),
        parts.join(", ")
    );
    tracing::info!("{line}");
    if print {
        eprintln!("skiff-vmm: {line}");
    }
}

/// Where the profile goes, opened before the main thread's filter is on.
struct ProfileOut {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    symbols: SymbolMap,
}

impl ProfileOut {
    /// Creates `out` and loads the symbols (`map`, or System.map here); a failure of either
    /// is a warning, not an error: the VM runs without (a named) profile.
    fn open(out: &std::path::Path, map: Option<&std::path::Path>) -> Self {
        let map_path = map.unwrap_or(std::path::Path::new("System.map"));
        let symbols = SymbolMap::load(map_path).unwrap_or_else(|e| {
            tracing::warn!("no symbols from {}: {e}", map_path.display());
            SymbolMap::parse("")
        });
        let file = std::fs::File::create(out)
            .map_err(|e| tracing::warn!("cannot write profile {}: {e}", out.display()))
            .ok();
        Self {
            path: out.to_owned(),
            file,
            symbols,
        }
    }

    fn write(self, sampler: &Sampler) {
        if let Some(mut f) = self.file {
            let report = profile::report(sampler, &self.symbols, 200);
            if let Err(e) = f.write_all(report.as_bytes()) {
                tracing::warn!("cannot write profile {}: {e}", self.path.display());
            }
        }
    }
}
