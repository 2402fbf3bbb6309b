//! `skiff`: the command line. Today: `skiff run --local` (one task in a microVM, no server,
//! like podman) and `skiff image …` on the local image store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use control_plane::images::busybox;
use control_plane::images::config::RunDefaults;
use control_plane::images::registry::{RegistryClient, RegistryOptions};
use control_plane::images::run::{resolve, RunOverrides};
use control_plane::images::{ImageStore, PullEvent, Reference};
use control_plane::launcher::{self, LaunchConfig, Output, TaskEnd};

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

#[derive(Args)]
struct RunArgs {
    /// Run here, without a server (the only mode so far).
    #[arg(long)]
    local: bool,
    /// A read-only root filesystem image (EROFS or ext4) instead of an image reference.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// User: name, uid, or uid:gid.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// vCPUs of the microVM.
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    /// Memory of the microVM in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Stop the task after this many seconds (exit code 124).
    #[arg(long)]
    timeout: Option<u64>,
    /// Print the phase timings to stderr when the task ends.
    #[arg(long)]
    timings: bool,
    /// Image reference, then the command: IMAGE [-- CMD ARG…], or -- CMD ARG… with --rootfs.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Pull an image from its registry.
    Pull {
        reference: String,
        /// Registries (host[:port]) allowed over plain HTTP.
        #[arg(long)]
        insecure: Vec<String>,
        /// Extra CA certificates (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// List stored images.
    Ls,
    /// Remove an image's tag.
    Rm { reference: String },
    /// Delete blobs and root filesystems no tag uses.
    Prune,
    /// Import an OCI layout directory or a `docker save` tarball.
    Import { path: PathBuf },
}

fn env_path(var: &str, what: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).ok_or_else(|| {
        anyhow!(
            "{var} is not set: point it at the {what} (scripts/setup.sh writes target/skiff.env)"
        )
    })
}

fn vmm_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_VMM") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("skiff-vmm")))
        .unwrap_or_else(|| "skiff-vmm".into())
}

fn store(state_dir: &Path) -> anyhow::Result<ImageStore> {
    ImageStore::open(state_dir, None).context("cannot open the image store")
}

fn run(state_dir: &Path, a: RunArgs) -> anyhow::Result<i32> {
    if !a.local {
        bail!("only --local runs exist so far (no server yet): use `skiff run --local …`");
    }
    let (image_arg, cmd): (Option<&String>, Vec<String>) = if a.rootfs.is_some() {
        let cmd = a.args.iter().skip_while(|s| *s == "--").cloned().collect();
        (None, cmd)
    } else {
        let mut it = a.args.iter();
        let image = it
            .next()
            .ok_or_else(|| anyhow!("give an image (or --rootfs FILE)"))?;
        (
            Some(image),
            it.skip_while(|s| *s == "--").cloned().collect(),
        )
    };
    let (rootfs, defaults) = match (a.rootfs.clone(), image_arg) {
        (Some(r), _) => (r, RunDefaults::default()),
        (None, Some(name)) => {
            let r: Reference = name.parse().map_err(|e| anyhow!("{name}: {e}"))?;
            let st = store(state_dir)?;
            let image = get_image(&st, &r, &RegistryOptions::default())?;
            (st.rootfs(&image)?.path, image.config.run_defaults())
        }
        (None, None) => unreachable!("checked above"),
    };
    let overrides = RunOverrides {
        entrypoint: a.entrypoint.map(|e| vec![e]),
        cmd: (!cmd.is_empty()).then_some(cmd),
        env: a.env,
        working_dir: a.workdir,
        user: a.user,
    };
    let resolved = resolve(&defaults, &overrides)?;
    let spec = guest_agent::RunSpec {
        argv: resolved.argv,
        env: resolved.env,
        working_dir: resolved.working_dir,
        user: resolved.user,
        image_disk: "/dev/vda".into(),
        upper_size_mib: (a.memory / 4).max(16),
        hostname: "skiff".into(),
        stdin: false,
    };
    let work = tempdir_in(&state_dir.join("run"))?;
    let initrd = work.join("agent.cpio");
    launcher::build_agent_initramfs(
        &env_path("SKIFF_AGENT", "static skiff-agent binary")?,
        &initrd,
    )
    .context("cannot build the agent initramfs")?;
    let cfg = LaunchConfig {
        vmm: vmm_path(),
        kernel: env_path("SKIFF_KERNEL", "guest kernel (vmlinux)")?,
        initrd,
        vcpus: a.cpu,
        memory_mib: a.memory,
        rootfs,
        work_dir: work.clone(),
        timeout: a.timeout.map(Duration::from_secs),
        boot_timeout: Duration::from_secs(600),
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let result = launcher::run_task(&cfg, &spec, &mut |s, b| {
        let _ = match s {
            Output::Stdout => out.write_all(b).and_then(|_| out.flush()),
            Output::Stderr => err.write_all(b).and_then(|_| err.flush()),
        };
    });
    let _ = std::fs::remove_dir_all(&work);
    let result = result?;
    match &result.end {
        TaskEnd::Failed { message, .. } => eprintln!("skiff: {message}"),
        TaskEnd::TimedOut(t) => eprintln!(
            "skiff: timed out after {} s; the VM was stopped",
            t.as_secs()
        ),
        TaskEnd::Lost(why) => eprintln!("skiff: task lost: {why}"),
        TaskEnd::Exited { .. } => {}
    }
    if a.timings {
        let t = &result.timings;
        eprintln!(
            "skiff: timings from VMM start: agent ready {} ms, process started {} ms, exited {} ms, VM stopped {} ms",
            t.agent_ready_ms,
            t.process_started_ms.map_or("-".into(), |v| v.to_string()),
            t.process_exited_ms.map_or("-".into(), |v| v.to_string()),
            t.vm_stopped_ms
        );
    }
    Ok(result.end.exit_code())
}

fn tempdir_in(parent: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    for i in 0..1000u32 {
        let p = parent.join(format!("{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    bail!("cannot make a task directory under {}", parent.display())
}

fn pull(
    st: &ImageStore,
    r: &Reference,
    opts: &RegistryOptions,
) -> anyhow::Result<control_plane::images::Image> {
    let client = RegistryClient::new(opts.clone())?;
    let progress = |e: PullEvent| match e {
        PullEvent::Resolved { manifest, layers } => {
            eprintln!("{r}: resolved {manifest} ({layers} layers)")
        }
        PullEvent::LayerCached { digest, .. } => {
            eprintln!("{}: already exists", short(&digest.to_string()))
        }
        PullEvent::LayerDone { digest, size } => eprintln!(
            "{}: pull complete ({size} bytes)",
            short(&digest.to_string())
        ),
        PullEvent::LayerRetry {
            digest,
            attempt,
            error,
        } => {
            eprintln!("{}: retry {attempt} ({error})", short(&digest.to_string()))
        }
        _ => {}
    };
    Ok(st.pull(&client, r, &progress)?)
}

/// The stored image, else the bundled busybox made on first use, else a pull.
fn get_image(
    st: &ImageStore,
    r: &Reference,
    opts: &RegistryOptions,
) -> anyhow::Result<control_plane::images::Image> {
    if let Some(i) = st.lookup(r)? {
        return Ok(i);
    }
    if r.to_string() == busybox::BUSYBOX_REF {
        return busybox::build_busybox_image(st, Path::new(busybox::DEFAULT_BUSYBOX))
            .context("cannot make the bundled local/busybox:latest from /bin/busybox");
    }
    pull(st, r, opts)
}

fn short(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}

fn image(state_dir: &Path, c: ImageCmd) -> anyhow::Result<i32> {
    let st = store(state_dir)?;
    match c {
        ImageCmd::Pull {
            reference,
            insecure,
            ca_file,
        } => {
            let r: Reference = reference.parse().map_err(|e| anyhow!("{reference}: {e}"))?;
            let opts = RegistryOptions {
                insecure,
                ca_file,
                ..Default::default()
            };
            let image = if r.to_string() == busybox::BUSYBOX_REF {
                get_image(&st, &r, &opts)?
            } else {
                pull(&st, &r, &opts)?
            };
            let fs = st.rootfs(&image)?;
            println!(
                "{r}: {} (rootfs {})",
                image.manifest_digest,
                fs.path.display()
            );
        }
        ImageCmd::Ls => {
            println!("{:<48} {:<20} {:>12}", "REFERENCE", "IMAGE ID", "SIZE");
            for i in st.list()? {
                println!(
                    "{:<48} {:<20} {:>12}",
                    i.reference.to_string(),
                    short(&i.id.to_string()),
                    i.size
                );
            }
        }
        ImageCmd::Rm { reference } => {
            let r: Reference = reference.parse().map_err(|e| anyhow!("{reference}: {e}"))?;
            st.remove(&r)?;
            println!("untagged {r}");
        }
        ImageCmd::Prune => println!("{:?}", st.prune()?),
        ImageCmd::Import { path } => {
            let images = if path.is_dir() {
                control_plane::images::import::import_oci_layout(&st, &path, None)?
            } else {
                control_plane::images::import::import_docker_save(&st, &path)?
            };
            for i in images {
                println!("imported {} ({})", i.reference, i.manifest_digest);
            }
        }
    }
    Ok(0)
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
        Cmd::Run(a) => run(&state_dir, a),
        Cmd::Image(c) => image(&state_dir, c),
    };
    match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("skiff: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(125)
        }
    }
}
