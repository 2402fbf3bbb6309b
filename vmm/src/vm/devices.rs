//! A VM's devices, as boot and restore both leave them: the virtio devices on the MMIO
//! bus (each with its irqfd and queue ioeventfds), COM1 and the i8042 on the port I/O bus.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;

use super::error::{io_err, kvm_err, VmError};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_SPAN};
use crate::devices::mmio_bus::MmioBus;
use crate::devices::pio::PioBus;
use crate::devices::serial::{ConsoleOut, IrqTrigger, SerialPort, COM1_PORT, COM1_SPAN};
use crate::devices::virtio::mmio::{MmioSubscriber, MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::Interrupt;
use crate::event_loop::Subscriber;
use crate::exit::ExitSignal;
use crate::layout;

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

/// Every device of a VM, and the buses the vCPUs reach them through.
pub struct Devices {
    pub virtio: Vec<AttachedVirtio>,
    pub mmio: Arc<MmioBus>,
    pub serial: Arc<Mutex<SerialPort>>,
    pub pio: Arc<PioBus>,
}

/// The virtio half of [`Devices`] while it is being attached.
#[derive(Default)]
pub(super) struct VirtioBus {
    pub(super) devices: Vec<AttachedVirtio>,
    bus: MmioBus,
}

impl VirtioBus {
    /// Puts virtio device number `slot` on the MMIO bus with its interrupt (irqfd) and
    /// queue notifications (ioeventfds); `make` builds its transport around the interrupt.
    pub(super) fn attach<E: From<VmError>>(
        &mut self,
        vm: &VmFd,
        slot: u32,
        make: impl FnOnce(Interrupt) -> Result<MmioTransport, E>,
    ) -> Result<(), E> {
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
        self.bus
            .insert(base, layout::VIRTIO_MMIO_SIZE, transport.clone())
            .map_err(VmError::from)?;
        let subscriber: Subscriber = Arc::new(Mutex::new(MmioSubscriber::new(
            transport.clone(),
            queue_evts,
        )));
        self.devices.push(AttachedVirtio {
            slot,
            base,
            irq: gsi,
            transport,
            subscriber,
        });
        Ok(())
    }
}

/// What COM1 is wired to: its interrupt and its output.
pub(super) struct SerialWiring {
    pub(super) irq: IrqTrigger,
    pub(super) out: ConsoleOut,
}

impl SerialWiring {
    /// The serial interrupt (an irqfd on IRQ 4) and the console output (a file, or stdout),
    /// capped at `max_bytes`.
    pub(super) fn new(
        vm: &VmFd,
        serial_out: Option<&std::path::Path>,
        max_bytes: u64,
        exit: &Arc<ExitSignal>,
    ) -> Result<Self, VmError> {
        let out: Box<dyn Write + Send> = match serial_out {
            Some(path) => Box::new(File::create(path).map_err(|source| VmError::SerialOut {
                path: path.to_owned(),
                source,
            })?),
            None => Box::new(std::io::stdout()),
        };
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
            .map_err(io_err("serial interrupt"))?;
        vm.register_irqfd(&irq, layout::SERIAL_IRQ)
            .map_err(kvm_err("register the serial irqfd"))?;
        Ok(Self {
            irq: IrqTrigger(irq),
            out: ConsoleOut::new(out, exit.clone(), max_bytes),
        })
    }
}

impl Devices {
    /// The device set: the attached virtio devices, and COM1 and the i8042 on a new port
    /// I/O bus.
    pub(super) fn new(
        virtio: VirtioBus,
        serial: SerialPort,
        exit: &Arc<ExitSignal>,
    ) -> Result<Self, VmError> {
        let serial = Arc::new(Mutex::new(serial));
        let mut pio = PioBus::default();
        pio.insert(COM1_PORT, COM1_SPAN, serial.clone())?;
        pio.insert(
            I8042_DATA_PORT,
            I8042_PORT_SPAN,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        Ok(Self {
            virtio: virtio.devices,
            mmio: Arc::new(virtio.bus),
            serial,
            pio: Arc::new(pio),
        })
    }
}
