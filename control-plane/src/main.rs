//! `skiff`: the command line. `skiff serve` is the control plane; `run`, `ps`, `inspect`,
//! `logs`, `stop` talk to it over HTTP; `skiff run --local` runs one task in a microVM with
//! no server (like podman); `skiff image …` works on the local image store.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::image::ImageCmd;
use cli::remote::{self, Api};
use cli::run::RunArgs;
use cli::serve::ServeArgs;

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
    /// The server: unix:///PATH or http(s)://HOST:PORT (default: SKIFF_API, else the Unix
    /// socket skiff.sock in the state directory).
    #[arg(long, global = true)]
    api: Option<String>,
    /// File with the bearer token for the server (default: SKIFF_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Cold starts through the HTTP API: full boot vs snapshot restore.
    ColdStart(cli::bench::ColdStartArgs),
    /// Idle tasks restored from one snapshot: host memory per task.
    Density(cli::bench_density::DensityArgs),
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane: the HTTP task API.
    Serve(ServeArgs),
    /// Run a command in a new microVM and stream its output, like `docker run`.
    Run(RunArgs),
    /// Build an image from a Dockerfile, every RUN step in a microVM of its own.
    Build(cli::build::BuildArgs),
    /// The build cache: its size, and pruning it.
    #[command(subcommand)]
    Builder(cli::builder::BuilderCmd),
    /// List tasks (running ones; -a for all).
    Ps {
        #[arg(short = 'a', long)]
        all: bool,
        /// Only tasks in this state.
        #[arg(long)]
        state: Option<String>,
        /// Only tasks with this label KEY=VALUE.
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
    },
    /// Show tasks in full, as JSON.
    Inspect {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print a task's output (-f: follow until it stops).
    Logs {
        #[arg(short = 'f', long)]
        follow: bool,
        id: String,
    },
    /// Stop tasks: SIGTERM, SIGKILL after their stop timeout, then the VM ends.
    Stop {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Manage task networks (through the server).
    #[command(subcommand)]
    Network(cli::network::NetworkCmd),
    /// Manage services: tasks kept at a count, health-checked, rolled out, load-balanced.
    #[command(subcommand)]
    Service(cli::service::ServiceCmd),
    /// Make the networks and services a YAML or JSON file describes exist as written.
    Apply {
        /// The file (`-`: standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Manage images in the local store.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Show the installation, the host's KVM and capacity, and the state directory.
    Info,
}

fn main() -> ExitCode {
    jailer::panic::abort_on_panic();
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
        Cmd::Serve(a) => cli::serve::serve(&state_dir, a),
        Cmd::Run(a) if a.local => cli::run_local::run(&state_dir, a),
        Cmd::Image(c) => cli::image::image(&state_dir, c),
        Cmd::Build(a) if a.local => cli::build::build(&state_dir, a),
        Cmd::Builder(c) => cli::builder::builder(&state_dir, c),
        Cmd::Info => cli::info::info(&state_dir),
        Cmd::Bench(BenchCmd::ColdStart(a)) => cli::bench::cold_start(a),
        Cmd::Bench(BenchCmd::Density(a)) => cli::bench_density::density(a),
        remote_cmd => {
            Api::new(cli.api, cli.token_file.as_deref(), &state_dir).and_then(
                |api| match remote_cmd {
                    Cmd::Run(a) => remote::run(&api, a),
                    Cmd::Ps { all, state, label } => remote::ps(&api, all, state, label),
                    Cmd::Inspect { ids } => remote::inspect(&api, &ids),
                    Cmd::Logs { follow, id } => api.stream_logs(&id, follow).map(|()| 0),
                    Cmd::Stop { ids } => remote::stop(&api, &ids),
                    Cmd::Network(c) => cli::network::network(&api, c),
                    Cmd::Service(c) => cli::service::service(&api, c),
                    Cmd::Apply { file } => cli::apply::apply(&api, &file),
                    Cmd::Build(a) => cli::build::build_through(&api, &state_dir, a),
                    Cmd::Serve(_) | Cmd::Image(_) | Cmd::Builder(_) | Cmd::Bench(_) | Cmd::Info => {
                        unreachable!("handled above")
                    }
                },
            )
        }
    };
    match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!(
                "skiff: {}",
                control_plane::images::error_text::one_line(&*e)
            );
            ExitCode::from(125)
        }
    }
}
