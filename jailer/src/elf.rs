//! Is a program static? A jail holds no shared libraries and no loader, so a program with
//! an ELF interpreter (`PT_INTERP`) cannot run in it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::JailError;

const PT_INTERP: u32 = 3;

/// Checks that `file` (at `path`) is a 64-bit ELF executable without an interpreter.
pub fn check_static(file: &File, path: &Path) -> Result<(), JailError> {
    let io = JailError::path("reading", path);
    let mut h = [0u8; 64];
    file.read_exact_at(&mut h, 0).map_err(io)?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Err(JailError::Spec(format!(
            "{} is not a 64-bit little-endian ELF executable",
            path.display()
        )));
    }
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let phoff = u64::from_le_bytes(h[32..40].try_into().unwrap_or_default());
    let (phentsize, phnum) = (u64::from(u16_at(54)), u64::from(u16_at(56)));
    if phentsize < 4 || phnum > 512 {
        return Err(JailError::Spec(format!(
            "{}: bad program headers",
            path.display()
        )));
    }
    for i in 0..phnum {
        let mut t = [0u8; 4];
        file.read_exact_at(&mut t, phoff + i * phentsize)
            .map_err(JailError::path("reading", path))?;
        if u32::from_le_bytes(t) == PT_INTERP {
            return Err(JailError::NotStatic(path.to_owned()));
        }
    }
    Ok(())
}
