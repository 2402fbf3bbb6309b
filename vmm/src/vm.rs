//! Builds a VM from a [`VmConfig`] and runs it to the end: KVM VM with in-kernel irqchip
//! and PIT, guest memory, boot data, devices, one thread per vCPU, the event loop.

use std::fs::File;
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use thiserror::Error;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::api;
use crate::boot::{self, BootError};
use crate::config::{ConfigError, VmConfig};
use crate::controller::{Controller, VcpuLink};
use crate::cpu::kick;
use crate::cpu::vcpu::{Vcpu, VcpuControl, VcpuError};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_SPAN};
use crate::devices::mmio_bus::{MmioBus, MmioOverlap};
use crate::devices::pio::{PioBus, PioOverlap};
use crate::devices::serial::{ConsoleOut, IrqTrigger, SerialPort, COM1_PORT, COM1_SPAN};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{MmioSubscriber, MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::Interrupt;
use crate::event_loop::{self, StdinToSerial, Subscriber};
use crate::exit::{ExitReason, ExitSignal};
use crate::host::HostQuirks;
use crate::layout::{self, MemoryError};
use crate::profile::{self, Sampler, SymbolMap};
use crate::snapshot::MachineInfo;

/// KVM needs three pages for the real-mode TSS just below 4 GiB.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM: cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Pio(#[from] PioOverlap),
    #[error(transparent)]
    Mmio(#[from] MmioOverlap),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("cannot open serial output {path}: {source}")]
    SerialOut {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    ApiSocket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// Registers every guest RAM region with KVM.
pub(crate) fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Io {
                what: "guest memory",
                source: std::io::Error::other(e.to_string()),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM: it is
        // kept until the process exits, and KVM only accesses it while vCPUs run.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}

/// A virtio device on the MMIO bus.
pub struct AttachedVirtio {
    pub slot: u32,
    pub base: u64,
    pub irq: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub subscriber: Subscriber,
}

impl AttachedVirtio {
    /// The kernel parameter that announces the device.
    pub fn kernel_param(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }
}

/// Puts virtio device number `slot` on the MMIO bus with its interrupt (irqfd) and queue
/// notifications (ioeventfds); `make` builds its transport around the interrupt.
pub(crate) fn attach_virtio<E: From<VmError>>(
    vm: &VmFd,
    bus: &mut MmioBus,
    slot: u32,
    make: impl FnOnce(Interrupt) -> Result<MmioTransport, E>,
) -> Result<AttachedVirtio, E> {
    let base = layout::VIRTIO_MMIO_START + slot as u64 * layout::VIRTIO_MMIO_SIZE;
    let gsi = layout::VIRTIO_IRQ_START + slot;
    let irqfd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
        .map_err(io_err("virtio interrupt"))?;
    vm.register_irqfd(&irqfd, gsi)
        .map_err(kvm_err("register a virtio irqfd"))?;
    let transport = make(Interrupt::new(irqfd))?;
    let mut queue_evts = Vec::new();
    for q in 0..transport.num_queues() {
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
            .map_err(io_err("virtio queue event"))?;
        vm.register_ioevent(
            &evt,
            &kvm_ioctls::IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
            q as u32,
        )
        .map_err(kvm_err("register a virtio ioeventfd"))?;
        queue_evts.push(evt);
    }
    let transport = Arc::new(Mutex::new(transport));
    bus.insert(base, layout::VIRTIO_MMIO_SIZE, transport.clone())
        .map_err(VmError::from)?;
    let subscriber: Subscriber = Arc::new(Mutex::new(MmioSubscriber::new(
        transport.clone(),
        queue_evts,
    )));
    Ok(AttachedVirtio {
        slot,
        base,
        irq: gsi,
        transport,
        subscriber,
    })
}

/// A KVM VM with the TSS region, the in-kernel irqchip and the PIT: what boot and restore
/// both start from.
pub(crate) fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = create_bare_vm(kvm)?;
    create_irqchip_and_pit(&vm)?;
    Ok(vm)
}

/// A KVM VM with only its TSS region.
pub(crate) fn create_bare_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set the TSS address"))?;
    Ok(vm)
}

/// The in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT; before any vCPU exists.
pub(crate) fn create_irqchip_and_pit(vm: &VmFd) -> Result<(), VmError> {
    vm.create_irq_chip()
        .map_err(kvm_err("create the irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
    Ok(())
}

/// The console output: a file, or stdout.
pub(crate) fn console_out(
    serial_out: Option<&std::path::Path>,
    exit: &Arc<ExitSignal>,
) -> Result<ConsoleOut, VmError> {
    let out: Box<dyn Write + Send> = match serial_out {
        Some(path) => Box::new(File::create(path).map_err(|source| VmError::SerialOut {
            path: path.to_owned(),
            source,
        })?),
        None => Box::new(std::io::stdout()),
    };
    Ok(ConsoleOut::new(out, exit.clone()))
}

/// The serial interrupt, an irqfd on IRQ 4.
pub(crate) fn serial_irq(vm: &VmFd) -> Result<IrqTrigger, VmError> {
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
        .map_err(io_err("serial interrupt"))?;
    vm.register_irqfd(&irq, layout::SERIAL_IRQ)
        .map_err(kvm_err("register the serial irqfd"))?;
    Ok(IrqTrigger(irq))
}

/// The port I/O bus with COM1 and the i8042.
pub(crate) fn legacy_bus(
    serial: Arc<Mutex<SerialPort>>,
    exit: &Arc<ExitSignal>,
) -> Result<PioBus, VmError> {
    let mut bus = PioBus::default();
    bus.insert(COM1_PORT, COM1_SPAN, serial)?;
    bus.insert(
        I8042_DATA_PORT,
        I8042_PORT_SPAN,
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    )?;
    Ok(bus)
}

/// How a VM runs, apart from the guest: profiling, the control socket, timings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub profile_out: Option<std::path::PathBuf>,
    /// System.map for the profile.
    pub profile_symbols: Option<std::path::PathBuf>,
    pub profile_hz: u32,
    /// Serve the control API (pause, resume, snapshot, shutdown) on this Unix socket.
    pub api_sock: Option<std::path::PathBuf>,
    /// When the process started, and whether to print the restore timings on stderr.
    pub started: Option<std::time::Instant>,
    pub print_timings: bool,
}

/// Everything a VM holds while it runs.
pub struct Vm {
    pub(crate) kvm: Kvm,
    pub(crate) vm: Arc<VmFd>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) bus: Arc<PioBus>,
    pub(crate) mmio: Arc<MmioBus>,
    pub(crate) devices: Vec<AttachedVirtio>,
    pub(crate) serial: Arc<Mutex<SerialPort>>,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) machine: MachineInfo,
    pub(crate) options: RunOptions,
    /// Restore phases (name, time since start), printed once the vCPUs run.
    pub(crate) timings: Vec<(&'static str, std::time::Duration)>,
}

impl Vm {
    /// Validates the config, creates the VM, loads the guest and wires the devices.
    pub fn build(config: VmConfig) -> Result<Self, VmError> {
        config.validate()?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let quirks = HostQuirks::resolve(config.quirks, &kvm);
        tracing::info!(pvm = quirks.pvm, "host quirks");
        let vm = create_vm(&kvm)?;

        let mem_size = config.memory_mib << 20;
        let mem = layout::create_guest_memory(mem_size)?;
        register_memory(&vm, &mem)?;

        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(p) => Some(boot::load_initrd(&mem, p, layout::KERNEL_LOAD_ADDR)?),
            None => None,
        };
        let mut mmio = MmioBus::default();
        let mut devices = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let dev = Block::open(disk, &Block::path_id(&disk.path, i))?;
            devices.push(attach_virtio(&vm, &mut mmio, i as u32, |irq| {
                Ok::<_, VmError>(MmioTransport::new(Box::new(dev), mem.clone(), irq))
            })?);
        }
        if let Some(v) = &config.vsock {
            let dev = Vsock::new(v)?;
            let slot = config.disks.len() as u32;
            devices.push(attach_virtio(&vm, &mut mmio, slot, |irq| {
                Ok::<_, VmError>(MmioTransport::new(Box::new(dev), mem.clone(), irq))
            })?);
        }

        let mut params = quirks.kernel_params();
        params.extend(devices.iter().map(AttachedVirtio::kernel_param));
        let cmdline = config.kernel_cmdline(&params);
        tracing::info!(%cmdline, "kernel command line");
        boot::write_boot_params(&mem, &kernel, &cmdline, initrd, mem_size)?;
        boot::setup_mptable(&mem, config.vcpus as u8).map_err(BootError::from)?;

        let exit = Arc::new(ExitSignal::new().map_err(io_err("exit event"))?);
        let out = console_out(config.serial_out.as_deref(), &exit)?;
        let serial = Arc::new(Mutex::new(SerialPort(vm_superio::Serial::new(
            serial_irq(&vm)?,
            out,
        ))));
        let bus = legacy_bus(serial.clone(), &exit)?;

        let count = config.vcpus as u8;
        let entry = kernel.entry.raw_value();
        let mut vcpus = Vec::with_capacity(count as usize);
        for id in 0..count {
            vcpus.push(Vcpu::new(&kvm, &vm, &mem, id, count, entry, quirks)?);
        }
        let machine = MachineInfo::new(count, mem_size, &mem, quirks.pvm);
        let profile_symbols = config.profile_symbols.clone().or_else(|| {
            Some(
                config
                    .kernel
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("System.map"),
            )
        });
        Ok(Self {
            kvm,
            vm: Arc::new(vm),
            mem,
            exit,
            bus: Arc::new(bus),
            mmio: Arc::new(mmio),
            devices,
            serial,
            vcpus,
            machine,
            options: RunOptions {
                profile_out: config.profile_out.clone(),
                profile_symbols,
                profile_hz: config.profile_hz,
                ..Default::default()
            },
            timings: Vec::new(),
        })
    }

    /// Sets how the VM runs (the control socket, timings); profiling comes from the config.
    pub fn set_api_sock(&mut self, path: Option<std::path::PathBuf>) {
        self.options.api_sock = path;
    }

    /// Starts the vCPUs and the event loop, and blocks until the guest ends.
    pub fn run(self) -> Result<ExitReason, VmError> {
        kick::install_handler().map_err(|e| VmError::Io {
            what: "vCPU kick signal",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let sampler = self
            .options
            .profile_out
            .as_ref()
            .map(|_| Arc::new(Sampler::default()));

        let mut subscribers: Vec<Subscriber> =
            self.devices.iter().map(|d| d.subscriber.clone()).collect();
        // SAFETY: isatty only inspects the file descriptor number it is given.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            subscribers.push(Arc::new(Mutex::new(StdinToSerial::new(
                self.serial.clone(),
            ))));
        }
        let _event_loop =
            event_loop::spawn(subscribers, self.exit.clone()).map_err(io_err("event loop"))?;

        let pause = Arc::new(AtomicBool::new(false));
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        let mut links = Vec::new();
        for vcpu in self.vcpus {
            let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
            let ctl = VcpuControl {
                pause: pause.clone(),
                commands: cmd_rx,
                replies: reply_tx.clone(),
            };
            let bus = self.bus.clone();
            let mmio = self.mmio.clone();
            let exit = self.exit.clone();
            let s = sampler.clone();
            let h = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id))
                .spawn(move || vcpu.run(bus, mmio, exit, s, ctl))
                .map_err(io_err("vCPU thread"))?;
            links.push(VcpuLink {
                thread: h.as_pthread_t(),
                commands: cmd_tx,
            });
            threads.push(h);
        }
        if let Some(start) = self.options.started {
            report_timings(start, &self.timings, self.options.print_timings);
        }

        let controller = Arc::new(Controller::new(
            self.kvm,
            self.vm.clone(),
            self.mem.clone(),
            self.devices
                .iter()
                .map(|d| (d.slot, d.base, d.irq, d.transport.clone()))
                .collect(),
            self.serial.clone(),
            links,
            pause,
            reply_rx,
            self.machine.clone(),
            self.exit.clone(),
        ));
        let _api =
            match &self.options.api_sock {
                Some(path) => Some(api::serve(path, controller.clone()).map_err(|source| {
                    VmError::ApiSocket {
                        path: path.clone(),
                        source,
                    }
                })?),
                None => None,
            };

        let stop = Arc::new(AtomicBool::new(false));
        let kicker = match &sampler {
            Some(_) => Some(
                profile::start_kicker(
                    threads.iter().map(|h| h.as_pthread_t()).collect(),
                    self.options.profile_hz,
                    stop.clone(),
                )
                .map_err(io_err("profiler thread"))?,
            ),
            None => None,
        };

        let reason = self.exit.wait();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(k) = kicker {
            let _ = k.join();
        }
        if let (Some(s), Some(out)) = (&sampler, &self.options.profile_out) {
            write_profile(s, out, self.options.profile_symbols.as_deref());
        }
        if let Some(path) = &self.options.api_sock {
            let _ = std::fs::remove_file(path);
        }
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
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

fn write_profile(sampler: &Sampler, out: &std::path::Path, map: Option<&std::path::Path>) {
    let map_path = map.unwrap_or(std::path::Path::new("System.map"));
    let symbols = SymbolMap::load(map_path).unwrap_or_else(|e| {
        tracing::warn!("no symbols from {}: {e}", map_path.display());
        SymbolMap::parse("")
    });
    if let Err(e) = std::fs::write(out, profile::report(sampler, &symbols, 200)) {
        tracing::warn!("cannot write profile {}: {e}", out.display());
    }
}
