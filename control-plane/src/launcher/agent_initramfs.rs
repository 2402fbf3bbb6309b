//! The agent's initramfs: the static `skiff-agent` as `/init`, plus the skeleton the kernel
//! needs (`/dev/console`, mount points).

use std::path::Path;

/// Writes the agent's initramfs to `out` (atomically: a temporary file, synced, then renamed).
pub fn build_agent_initramfs(agent: &Path, out: &Path) -> std::io::Result<()> {
    let tmp = out.with_extension("tmp");
    let f = std::fs::File::create(&tmp)?;
    let mut w = initramfs::CpioWriter::new(std::io::BufWriter::new(f));
    let io = |e: initramfs::InitramfsError| std::io::Error::other(e.to_string());
    initramfs::write_skeleton(&mut w).map_err(io)?;
    w.host_file("init", agent).map_err(io)?;
    let f = w
        .finish()
        .map_err(io)?
        .into_inner()
        .map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(tmp, out)
}
