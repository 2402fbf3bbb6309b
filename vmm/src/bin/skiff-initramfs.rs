//! `skiff-initramfs`: writes a newc initramfs with an init and extra files.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::initramfs::{write_skeleton, CpioWriter};

#[derive(Parser, Debug)]
#[command(name = "skiff-initramfs", version, about = "Build a newc initramfs")]
struct Args {
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Host file that becomes /init.
    #[arg(long)]
    init: PathBuf,
    /// Extra file, HOST_PATH:GUEST_PATH (repeatable).
    #[arg(long = "file")]
    files: Vec<String>,
    /// Symlink, GUEST_PATH:TARGET (repeatable).
    #[arg(long = "symlink")]
    symlinks: Vec<String>,
}

fn build(args: &Args) -> anyhow::Result<()> {
    let out = File::create(&args.output)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.output.display()))?;
    let mut w = CpioWriter::new(BufWriter::new(out));
    write_skeleton(&mut w)?;
    w.host_file("init", &args.init)?;
    for f in &args.files {
        let (host, guest) = f
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--file {f}: expected HOST_PATH:GUEST_PATH"))?;
        w.host_file(guest, host.as_ref())?;
    }
    for s in &args.symlinks {
        let (guest, target) = s
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--symlink {s}: expected GUEST_PATH:TARGET"))?;
        w.symlink(guest, target)?;
    }
    w.finish()?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match build(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-initramfs: {e}");
            ExitCode::from(2)
        }
    }
}
