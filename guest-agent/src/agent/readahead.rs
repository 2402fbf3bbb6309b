//! Read-ahead for warm snapshots: the files a task of the image will need — the programs,
//! the ELF interpreter each one names, and the files an earlier task of the image opened —
//! are read once into the guest's page cache before the snapshot is taken, so a restored
//! task maps them from memory instead of reading them from its disk (a read on these hosts
//! is emulated block-layer work, and every new page-cache page costs traps). Runs in the
//! exec helper, chrooted into the container's root.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use guest_agent::{valid_opened_path, MAX_OPENED_FILES, MAX_WARM_FILES};

/// Most bytes read ahead in all.
const MAX_BYTES: u64 = 64 << 20;

/// Longest ELF interpreter path taken from a program header.
const MAX_INTERP: u64 = 256;

/// Files every run spec makes the agent read (to resolve the user).
const ALWAYS: [&str; 2] = ["/etc/passwd", "/etc/group"];

/// Reads `programs` (found through `path` when they have no `/`), their interpreters,
/// [`ALWAYS`], then `files` (an earlier task's opens, in the order it opened them); returns
/// the bytes read. Nothing when no program is named (a start without a warm snapshot).
/// Files that are missing, unreadable or not regular files are skipped: this only warms a
/// cache. All of it stays within [`MAX_BYTES`] and a third of the guest's memory.
pub fn programs_and_files(programs: &[String], path: &str, files: &[String]) -> u64 {
    if programs.is_empty() {
        return 0;
    }
    let limit = MAX_BYTES.min(guest_memory_bytes().map_or(MAX_BYTES, |m| m / 3));
    let mut budget = limit;
    let mut seen: HashSet<String> = HashSet::new();
    for f in ALWAYS {
        let _ = read_file(f, &mut budget, &mut seen);
    }
    for p in programs.iter().take(MAX_WARM_FILES) {
        let Some(file) = find(p, path) else { continue };
        let interp = read_file(&file, &mut budget, &mut seen).unwrap_or(None);
        if let Some(i) = interp {
            let _ = read_file(&i, &mut budget, &mut seen);
        }
    }
    for f in files.iter().take(MAX_OPENED_FILES) {
        if budget == 0 {
            break;
        }
        if valid_opened_path(f) {
            let _ = read_file(f, &mut budget, &mut seen);
        }
    }
    limit - budget
}

/// The guest's memory (`MemTotal`), bytes.
fn guest_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The file `program` names, as a shell would find it.
fn find(program: &str, path: &str) -> Option<String> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        return Some(program.to_owned());
    }
    path.split(':')
        .map(|d| format!("{}/{program}", if d.is_empty() { "." } else { d }))
        .find(|c| std::path::Path::new(c).is_file())
}

/// Reads `file` whole (within `budget`), once; returns the interpreter it names, if any.
fn read_file(
    file: &str,
    budget: &mut u64,
    seen: &mut HashSet<String>,
) -> std::io::Result<Option<String>> {
    let canonical = std::fs::canonicalize(file)?.to_string_lossy().into_owned();
    if !seen.insert(canonical.clone()) {
        return Ok(None);
    }
    // Looked at before it is opened: opening a FIFO or a device of the image could block
    // or act; only regular files are read. (The image is read-only: it cannot change
    // between the two.)
    if !std::fs::metadata(&canonical)?.is_file() {
        return Ok(None);
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&canonical)?;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let want = (buf.len() as u64).min(*budget) as usize;
        if want == 0 {
            break;
        }
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if total == 0 {
            head.extend_from_slice(&buf[..n]);
        }
        total += n as u64;
        *budget -= n as u64;
    }
    Ok(interpreter(&head, &mut f))
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF file whose first bytes are `head`.
/// Parsed by hand: the agent needs four header fields, not an ELF crate.
fn interpreter(head: &[u8], f: &mut std::fs::File) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let phoff = le_u64(head, 32)?;
    let (phentsize, phnum) = (u16_at(54) as u64, u16_at(56) as u64);
    if phentsize < 56 || phnum > 64 {
        return None;
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    for ph in table.chunks_exact(phentsize as usize) {
        let p_type = u32::from_le_bytes(ph[..4].try_into().ok()?);
        if p_type != 3 {
            continue;
        }
        let (offset, size) = (le_u64(ph, 8)?, le_u64(ph, 32)?);
        if size == 0 || size > MAX_INTERP {
            return None;
        }
        let mut path = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset)).ok()?;
        f.read_exact(&mut path).ok()?;
        let path = path.split(|b| *b == 0).next()?;
        return String::from_utf8(path.to_vec()).ok();
    }
    None
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes)
}
