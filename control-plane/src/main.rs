//! `skiff`: the command line. `skiff run --local` runs one task in a microVM with no
//! server (like podman); `skiff image …` works on the local image store.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::image::ImageCmd;
use cli::run::RunArgs;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Run containers in their own microVMs"
)]
struct Cli {
    /// State directory (images, tasks); also SKIFF_STATE_DIR.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in a new microVM and stream its output, like `docker run`.
    Run(RunArgs),
    /// Manage images in the local store.
    #[command(subcommand)]
    Image(ImageCmd),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let text = e.to_string();
            eprintln!(
                "skiff: {}",
                text.lines()
                    .next()
                    .unwrap_or("bad arguments")
                    .trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let state_dir = control_plane::state_dir::resolve(cli.state_dir.as_deref());
    let r = match cli.cmd {
        Cmd::Run(a) if a.local => cli::run_local::run(&state_dir, a),
        Cmd::Run(_) => Err(anyhow::anyhow!(
            "only --local runs exist so far (no server yet): use `skiff run --local …`"
        )),
        Cmd::Image(c) => cli::image::image(&state_dir, c),
    };
    match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("skiff: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(125)
        }
    }
}
