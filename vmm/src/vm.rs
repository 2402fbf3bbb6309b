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

use crate::boot::{self, BootError};
use crate::config::{ConfigError, VmConfig};
use crate::cpu::vcpu::{Vcpu, VcpuError};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_SPAN};
use crate::devices::mmio_bus::{MmioBus, MmioOverlap};
use crate::devices::pio::{PioBus, PioOverlap};
use crate::devices::serial::{ConsoleOut, IrqTrigger, SerialPort, COM1_PORT, COM1_SPAN};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{MmioSubscriber, MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::event_loop::{self, StdinToSerial, Subscriber};
use crate::exit::{ExitReason, ExitSignal};
use crate::host::HostQuirks;
use crate::layout::{self, MemoryError};
use crate::profile::{self, Sampler, SymbolMap};

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
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// Registers every guest RAM region with KVM.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
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

/// Puts virtio device number `index` on the MMIO bus with its interrupt (irqfd) and queue
/// notifications (ioeventfds); returns its kernel parameter and its event-loop subscriber.
fn attach_virtio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    bus: &mut MmioBus,
    index: usize,
    device: Box<dyn VirtioDevice>,
) -> Result<(String, Subscriber), VmError> {
    let base = layout::VIRTIO_MMIO_START + index as u64 * layout::VIRTIO_MMIO_SIZE;
    let gsi = layout::VIRTIO_IRQ_START + index as u32;
    let irqfd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
        .map_err(io_err("virtio interrupt"))?;
    vm.register_irqfd(&irqfd, gsi)
        .map_err(kvm_err("register a virtio irqfd"))?;
    let transport = MmioTransport::new(device, mem.clone(), Interrupt::new(irqfd));
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
    bus.insert(base, layout::VIRTIO_MMIO_SIZE, transport.clone())?;
    let sub: Subscriber = Arc::new(Mutex::new(MmioSubscriber::new(transport, queue_evts)));
    Ok((format!("virtio_mmio.device=4K@{base:#x}:{gsi}"), sub))
}

/// Everything a VM holds while it runs.
pub struct Vm {
    config: VmConfig,
    quirks: HostQuirks,
    vm: VmFd,
    kvm: Kvm,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    bus: Arc<PioBus>,
    mmio: Arc<MmioBus>,
    device_subscribers: Vec<Subscriber>,
    serial: Arc<Mutex<SerialPort>>,
    entry: u64,
}

impl Vm {
    /// Validates the config, creates the VM, loads the guest and wires the devices.
    pub fn build(config: VmConfig) -> Result<Self, VmError> {
        config.validate()?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let quirks = HostQuirks::resolve(config.quirks, &kvm);
        tracing::info!(pvm = quirks.pvm, "host quirks");
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("create the irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;

        let mem_size = config.memory_mib << 20;
        let mem = layout::create_guest_memory(mem_size)?;
        register_memory(&vm, &mem)?;

        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(p) => Some(boot::load_initrd(&mem, p, layout::KERNEL_LOAD_ADDR)?),
            None => None,
        };
        let mut mmio = MmioBus::default();
        let mut device_subscribers: Vec<Subscriber> = Vec::new();
        let mut device_params = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let dev = Block::open(disk, &Block::path_id(&disk.path, i))?;
            let (param, sub) = attach_virtio(&vm, &mem, &mut mmio, i, Box::new(dev))?;
            device_params.push(param);
            device_subscribers.push(sub);
        }
        if let Some(v) = &config.vsock {
            let index = config.disks.len();
            let (param, sub) =
                attach_virtio(&vm, &mem, &mut mmio, index, Box::new(Vsock::new(v)?))?;
            device_params.push(param);
            device_subscribers.push(sub);
        }

        let mut params = quirks.kernel_params();
        params.extend(device_params);
        let cmdline = config.kernel_cmdline(&params);
        tracing::info!(%cmdline, "kernel command line");
        boot::write_boot_params(&mem, &kernel, &cmdline, initrd, mem_size)?;
        boot::setup_mptable(&mem, config.vcpus as u8).map_err(BootError::from)?;

        let exit = Arc::new(ExitSignal::new().map_err(io_err("exit event"))?);
        let out: Box<dyn Write + Send> = match &config.serial_out {
            Some(path) => Box::new(File::create(path).map_err(|source| VmError::SerialOut {
                path: path.clone(),
                source,
            })?),
            None => Box::new(std::io::stdout()),
        };
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
            .map_err(io_err("serial interrupt"))?;
        vm.register_irqfd(&irq, layout::SERIAL_IRQ)
            .map_err(kvm_err("register the serial irqfd"))?;
        let serial = Arc::new(Mutex::new(SerialPort(vm_superio::Serial::new(
            IrqTrigger(irq),
            ConsoleOut::new(out, exit.clone()),
        ))));
        let mut bus = PioBus::default();
        bus.insert(COM1_PORT, COM1_SPAN, serial.clone())?;
        bus.insert(
            I8042_DATA_PORT,
            I8042_PORT_SPAN,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;

        Ok(Self {
            config,
            quirks,
            vm,
            kvm,
            mem,
            exit,
            bus: Arc::new(bus),
            mmio: Arc::new(mmio),
            device_subscribers,
            serial,
            entry: kernel.entry.raw_value(),
        })
    }

    /// Starts the vCPUs and the event loop, and blocks until the guest ends.
    pub fn run(self) -> Result<ExitReason, VmError> {
        let count = self.config.vcpus as u8;
        let mut vcpus = Vec::with_capacity(count as usize);
        for id in 0..count {
            vcpus.push(Vcpu::new(
                &self.kvm,
                &self.vm,
                &self.mem,
                id,
                count,
                self.entry,
                self.quirks,
            )?);
        }

        let sampler = self
            .config
            .profile_out
            .as_ref()
            .map(|_| Arc::new(Sampler::default()));
        if sampler.is_some() {
            profile::install_kick_handler().map_err(|e| VmError::Io {
                what: "profiler signal",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
        }

        let mut subscribers: Vec<Subscriber> = self.device_subscribers.clone();
        // SAFETY: isatty only inspects the file descriptor number it is given.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            subscribers.push(Arc::new(Mutex::new(StdinToSerial::new(
                self.serial.clone(),
            ))));
        }
        let _event_loop =
            event_loop::spawn(subscribers, self.exit.clone()).map_err(io_err("event loop"))?;

        let mut threads = Vec::new();
        for vcpu in vcpus {
            let bus = self.bus.clone();
            let mmio = self.mmio.clone();
            let exit = self.exit.clone();
            let s = sampler.clone();
            let h = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id))
                .spawn(move || vcpu.run(bus, mmio, exit, s))
                .map_err(io_err("vCPU thread"))?;
            threads.push(h);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let kicker = match &sampler {
            Some(_) => Some(
                profile::start_kicker(
                    threads.iter().map(|h| h.as_pthread_t()).collect(),
                    self.config.profile_hz,
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
        if let (Some(s), Some(out)) = (&sampler, &self.config.profile_out) {
            self.write_profile(s, out);
        }
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let _ = serial.0.writer_mut().flush();
        Ok(reason)
    }

    fn write_profile(&self, sampler: &Sampler, out: &std::path::Path) {
        let map_path = self.config.profile_symbols.clone().unwrap_or_else(|| {
            self.config
                .kernel
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("System.map")
        });
        let symbols = SymbolMap::load(&map_path).unwrap_or_else(|e| {
            tracing::warn!("no symbols from {}: {e}", map_path.display());
            SymbolMap::parse("")
        });
        if let Err(e) = std::fs::write(out, profile::report(sampler, &symbols, 200)) {
            tracing::warn!("cannot write profile {}: {e}", out.display());
        }
    }
}
