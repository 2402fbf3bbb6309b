//! Devices on the guest's I/O port bus. (virtio-mmio devices come in their own folders.)

pub mod i8042;
pub mod pio;
pub mod serial;
