//! [`Vm::boot`]: a new VM from a [`VmConfig`], step by step as docs/vmm.md walks it.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use vm_memory::Address;

use super::devices::{Devices, SerialWiring, VirtioBus};
use super::error::{io_err, VmError};
use super::instance::{RunOptions, Vm};
use super::kvm;
use crate::boot::{self, BootError};
use crate::config::VmConfig;
use crate::cpu::vcpu::Vcpu;
use crate::devices::serial::SerialPort;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vsock::Vsock;
use crate::exit::ExitSignal;
use crate::host::HostQuirks;
use crate::layout;
use crate::snapshot::MachineInfo;

impl Vm {
    /// Validates the config, creates the VM, loads the guest and wires the devices. The
    /// guest does not run until [`Vm::run`].
    pub fn boot(config: VmConfig) -> Result<Self, VmError> {
        config.validate()?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let quirks = HostQuirks::resolve(config.quirks, &kvm);
        tracing::info!(pvm = quirks.pvm, "host quirks");
        let vm = kvm::create_bare_vm(&kvm)?;
        kvm::create_irqchip_and_pit(&vm)?;

        let mem_size = config.memory_mib << 20;
        let mem = layout::create_guest_memory(mem_size)?;
        kvm::register_memory(&vm, &mem)?;

        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(p) => Some(boot::load_initrd(&mem, p, layout::KERNEL_LOAD_ADDR)?),
            None => None,
        };
        let mut virtio = VirtioBus::default();
        for (i, disk) in config.disks.iter().enumerate() {
            let dev = Block::open(disk, &Block::path_id(&disk.path, i))?;
            virtio.attach(&vm, i as u32, |irq| {
                Ok::<_, VmError>(MmioTransport::new(Box::new(dev), mem.clone(), irq))
            })?;
        }
        if let Some(v) = &config.vsock {
            let dev = Vsock::new(v)?;
            let slot = config.disks.len() as u32;
            virtio.attach(&vm, slot, |irq| {
                Ok::<_, VmError>(MmioTransport::new(Box::new(dev), mem.clone(), irq))
            })?;
        }
        if let Some(n) = &config.net {
            let dev = Net::open(n)?;
            let slot = (config.disks.len() + usize::from(config.vsock.is_some())) as u32;
            virtio.attach(&vm, slot, |irq| {
                Ok::<_, VmError>(MmioTransport::new(Box::new(dev), mem.clone(), irq))
            })?;
        }

        let mut params = quirks.kernel_params();
        params.extend(virtio.devices.iter().map(|d| d.kernel_param()));
        let cmdline = config.kernel_cmdline(&params);
        tracing::info!(%cmdline, "kernel command line");
        boot::write_boot_params(&mem, &kernel, &cmdline, initrd, mem_size)?;
        boot::setup_mptable(&mem, config.vcpus as u8).map_err(BootError::from)?;

        let exit = Arc::new(ExitSignal::new().map_err(io_err("exit event"))?);
        let wiring = SerialWiring::new(
            &vm,
            config.serial_out.as_deref(),
            config.serial_max_bytes,
            &exit,
        )?;
        let serial = SerialPort(vm_superio::Serial::new(wiring.irq, wiring.out));
        let devices = Devices::new(virtio, serial, &exit)?;

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
            fd: vm,
            mem,
            exit,
            devices,
            vcpus,
            machine,
            options: RunOptions {
                profile_out: config.profile_out.clone(),
                profile_symbols,
                profile_hz: config.profile_hz,
                seccomp: config.seccomp,
                ..Default::default()
            },
            timings: Vec::new(),
        })
    }
}
