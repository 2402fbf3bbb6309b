//! Just enough of the i8042 keyboard controller for a guest to reset the machine: command
//! 0xFE (pulse the reset line) on port 0x64 ends the VM. Linux uses it with `reboot=k`.

use std::sync::Arc;

use super::pio::PioDevice;
use crate::exit::{ExitReason, ExitSignal};

pub const I8042_DATA_PORT: u16 = 0x60;
/// The device spans 0x60..=0x64; the status/command port is at offset 4.
pub const I8042_PORT_SPAN: u16 = 5;
const COMMAND_OFFSET: u16 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so writers never wait.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.signal(ExitReason::Reset);
        }
    }
}
