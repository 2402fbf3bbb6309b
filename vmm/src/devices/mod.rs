//! Devices: legacy port I/O ones (serial, i8042) and virtio-mmio ones (block, …).

pub mod i8042;
pub mod mmio_bus;
pub mod persist;
pub mod pio;
pub mod serial;
pub mod virtio;
