//! COM1: a 16550A UART (vm-superio) on ports 0x3f8-0x3ff, interrupt on IRQ 4 through an
//! irqfd. Its output goes to stdout or a file, up to a size cap, and is watched for a kernel
//! panic. The guest writes it, so it can never end the VM: past the cap output is dropped
//! (after one marker line), and after a write error (a full disk, `EFBIG` past the jail's
//! RLIMIT_FSIZE, a closed stdout) every further byte is dropped.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::pio::PioDevice;
use crate::exit::ExitSignal;
use crate::persist::Persist;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_SPAN: u16 = 8;

/// What Linux prints first when it panics.
const PANIC_NEEDLE: &[u8] = b"Kernel panic - not syncing";

/// Raises the serial interrupt by writing the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Whether console output still reaches its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    Open,
    /// The cap was reached; the marker line has been written.
    Capped,
    /// A write failed; nothing more is written.
    Failed,
}

/// Console output: forwarded as is up to `max_bytes`, and scanned for the kernel's panic
/// message (all of it, written or dropped).
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    matched: usize,
    exit: Arc<ExitSignal>,
    written: u64,
    max_bytes: u64,
    state: OutState,
}

impl ConsoleOut {
    pub fn new(out: Box<dyn Write + Send>, exit: Arc<ExitSignal>, max_bytes: u64) -> Self {
        Self {
            out,
            matched: 0,
            exit,
            written: 0,
            max_bytes,
            state: OutState::Open,
        }
    }

    /// Writes what fits under the cap; the marker once the cap is reached.
    fn forward(&mut self, buf: &[u8]) {
        if self.state != OutState::Open {
            return;
        }
        let room = self.max_bytes.saturating_sub(self.written);
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if take > 0 {
            match self.out.write_all(&buf[..take]) {
                Ok(()) => self.written += take as u64,
                // A non-blocking stdout that is full: this much is lost, later bytes may pass.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!("console output failed ({e}); further output is dropped");
                    self.state = OutState::Failed;
                    return;
                }
            }
        }
        if take < buf.len() {
            self.state = OutState::Capped;
            let marker = format!(
                "\n[skiff-vmm: console output reached its limit of {} bytes; the rest is dropped]\n",
                self.max_bytes
            );
            let _ = self.out.write_all(marker.as_bytes());
            let _ = self.out.flush();
        } else if buf.contains(&b'\n') {
            let _ = self.out.flush();
        }
    }

    fn watch(&mut self, byte: u8) {
        if byte == PANIC_NEEDLE[self.matched] {
            self.matched += 1;
            if self.matched == PANIC_NEEDLE.len() {
                self.exit.note_panic();
                self.matched = 0;
            }
        } else {
            self.matched = usize::from(byte == PANIC_NEEDLE[0]);
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            self.watch(*b);
        }
        self.forward(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.state != OutState::Failed {
            let _ = self.out.flush();
        }
        Ok(())
    }
}

pub type SerialDevice = Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>;

pub struct SerialPort(pub SerialDevice);

impl PioDevice for SerialPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(b) = data.first() {
            if let Err(e) = self.0.write(offset as u8, *b) {
                tracing::warn!("serial write failed: {e:?}");
            }
        }
    }
}

/// The UART's registers and receive FIFO in a snapshot (vm-superio's `SerialState`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("saved serial state is not valid: {0}")]
pub struct SerialRestoreError(String);

/// What a restored COM1 gets from the new process: its interrupt and its output.
pub struct SerialConstructorArgs {
    pub irq: IrqTrigger,
    pub out: ConsoleOut,
}

impl Persist<'_> for SerialPort {
    type State = SerialSnapshot;
    type ConstructorArgs = SerialConstructorArgs;
    type Error = SerialRestoreError;

    fn save(&self) -> SerialSnapshot {
        let s = self.0.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// COM1 as saved, with its interrupt and output in the new process.
    fn restore(
        args: SerialConstructorArgs,
        s: &SerialSnapshot,
    ) -> Result<Self, SerialRestoreError> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        Serial::from_state(&state, args.irq, vm_superio::serial::NoEvents, args.out)
            .map(SerialPort)
            .map_err(|e| SerialRestoreError(format!("{e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn panic_text_split_across_writes_is_seen() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let buf = Arc::new(Mutex::new(vec![]));
        let mut c = ConsoleOut::new(Box::new(Sink(buf.clone())), exit.clone(), 1 << 20);
        c.write_all(b"[ 1.0] KKernel pan").unwrap();
        assert!(!exit.panicked());
        c.write_all(b"ic - not syncing: Attempted to kill init!\n")
            .unwrap();
        assert!(exit.panicked());
        assert!(buf.lock().unwrap().ends_with(b"init!\n"));
    }

    #[test]
    fn output_past_the_cap_is_dropped_after_one_marker_and_panics_still_seen() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let buf = Arc::new(Mutex::new(vec![]));
        let mut c = ConsoleOut::new(Box::new(Sink(buf.clone())), exit.clone(), 10);
        c.write_all(b"0123456").unwrap();
        c.write_all(b"789abc").unwrap();
        c.write_all(b"more\n").unwrap();
        c.write_all(b"Kernel panic - not syncing").unwrap();
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(
            text.starts_with(
                "0123456789\n[skiff-vmm: console output reached its limit of 10 bytes"
            ),
            "{text}"
        );
        assert_eq!(text.matches("limit").count(), 1, "{text}");
        assert!(!text.contains("more") && !text.contains("abc"), "{text}");
        assert!(exit.panicked());
    }

    /// A writer that fails like a file past RLIMIT_FSIZE, counting its calls.
    struct Full(Arc<Mutex<u32>>);
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            *self.0.lock().unwrap() += 1;
            Err(std::io::Error::from_raw_os_error(libc::EFBIG))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_is_given_up_and_never_an_error() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let calls = Arc::new(Mutex::new(0));
        let mut c = ConsoleOut::new(Box::new(Full(calls.clone())), exit, 1 << 20);
        for _ in 0..100 {
            assert_eq!(c.write(b"x\n").unwrap(), 2);
        }
        c.flush().unwrap();
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}
