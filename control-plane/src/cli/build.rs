//! `skiff build`: with `--local`, a Dockerfile built by this process into the local image store,
//! every `RUN` in a microVM of its own, steps taken from the build cache where their
//! inputs are unchanged. Without it, through the server (`build_remote`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use control_plane::build::context::{walk_context, IgnoreMatcher, StatCache, WalkOptions};
use control_plane::build::dockerfile::MAX_DOCKERFILE_BYTES;
use control_plane::build::image_config::Format;
use control_plane::build::{
    BuildContext, BuildControl, BuildError, BuildEvent, BuildRequest, Builder, ContextFiles,
    StepStatus, Stream, VmParts,
};
use control_plane::images::push::push_image;
use control_plane::images::registry::{Reference, RegistryClient, RegistryOptions};
use control_plane::{install, launcher};
use sha2::{Digest as _, Sha256};

use super::image::store;
use super::local_vm::{self, LocalVm};

/// A context above this size gets a warning naming its largest files.
const LARGE_CONTEXT_BYTES: u64 = 100_000_000;
/// Largest remembered stat cache read back.
const MAX_STAT_CACHE_BYTES: u64 = 256 << 20;

#[derive(Clone, Copy, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Plain,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Oci,
    Docker,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Build here, in microVMs started by this command, without a server (else the
    /// server builds it: the context goes to it, only the files it lacks).
    #[arg(long)]
    pub local: bool,
    /// Name and tag of the result (repeatable).
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build argument K=V (K alone: from this environment).
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// A label K=V on the result (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Do every step again, ignoring the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Clamp every time in the result to this (seconds since the epoch; default:
    /// $SOURCE_DATE_EPOCH): same inputs, same digest.
    #[arg(long)]
    pub source_date_epoch: Option<u64>,
    /// Media types of the result.
    #[arg(long, value_enum, default_value = "oci")]
    pub format: FormatArg,
    /// RUN steps' network: none (loopback only) or default (the server's default
    /// network, as a task's; through skiff serve only).
    #[arg(long, default_value = "none")]
    pub network: String,
    /// vCPUs of each RUN step's microVM.
    #[arg(long, default_value_t = 1)]
    pub cpu: u32,
    /// Memory of each RUN step's microVM, MiB (a quarter of it holds the step's changes).
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// Longest a RUN step may take, seconds (it then fails with code 124).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// How steps are shown: plain text, or one JSON event per line.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Push the result to the registry of each tag after the build.
    #[arg(long)]
    pub push: bool,
    /// Registries (host[:port]) allowed over plain HTTP, for pulls of base images and
    /// --push.
    #[arg(long)]
    pub insecure: Vec<String>,
    /// Size of each RUN step's scratch disk, where its writes go (e.g. 2G; default 10G),
    /// with --local; through the server, its --build-step-disk applies.
    #[arg(long, value_parser = super::serve::parse_step_disk, value_name = "SIZE")]
    pub step_disk: Option<u64>,
    /// With --local: where the RUN steps' VM snapshots are kept (default STATE/snapshots).
    /// The first build of a VM shape boots its RUN steps and leaves a snapshot; later
    /// steps restore it. Through the server, its --snapshot-dir applies.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// With --local: boot every RUN step's VM; make and restore no snapshot.
    #[arg(long)]
    pub no_snapshots: bool,
    /// The build context folder.
    pub context: PathBuf,
}

/// `skiff build` through the server: the same checks and context walk, then the API.
pub fn build_through(
    api: &super::remote::Api,
    state_dir: &Path,
    a: BuildArgs,
) -> anyhow::Result<i32> {
    if a.push && a.tags.is_empty() {
        bail!("--push needs a name to push to: -t REGISTRY/REPO:TAG");
    }
    if !a.insecure.is_empty() {
        bail!("--insecure goes with --local; through the server, its --insecure-registry list applies");
    }
    if a.step_disk.is_some() {
        bail!("--step-disk goes with --local; through the server, its --build-step-disk applies");
    }
    if a.snapshot_dir.is_some() || a.no_snapshots {
        bail!("--snapshot-dir and --no-snapshots go with --local; through the server, its own snapshot flags apply");
    }
    if !matches!(a.network.as_str(), "none" | "default") {
        bail!("--network {}: give none or default", a.network);
    }
    let context = a
        .context
        .canonicalize()
        .with_context(|| format!("the build context {}", a.context.display()))?;
    let dockerfile_path = a.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let dockerfile = read_dockerfile(&dockerfile_path)?;
    let ctx = load_context(state_dir, &context, &dockerfile_path)?;
    super::build_remote::build(api, &a, &context, &dockerfile_path, dockerfile, &ctx)
}

pub fn build(state_dir: &Path, a: BuildArgs) -> anyhow::Result<i32> {
    if a.push && a.tags.is_empty() {
        bail!("--push needs a name to push to: -t REGISTRY/REPO:TAG");
    }
    match a.network.as_str() {
        "none" => {}
        "default" => bail!(
            "--network default: RUN steps get a network only through skiff serve (its default network); drop --local"
        ),
        other => bail!("--network {other}: give none or default"),
    }
    let tags = a
        .tags
        .iter()
        .map(|t| t.parse::<Reference>().map_err(|e| anyhow!("-t {t}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let build_args = key_values(&a.build_args, "--build-arg", true)?;
    let labels = key_values(&a.labels, "--label", false)?;
    let epoch = match a.source_date_epoch {
        Some(n) => Some(n),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) if !s.is_empty() => Some(
                s.parse()
                    .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={s}: expected whole seconds"))?,
            ),
            _ => None,
        },
    };
    let context = a
        .context
        .canonicalize()
        .with_context(|| format!("the build context {}", a.context.display()))?;
    let dockerfile_path = a.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let dockerfile = read_dockerfile(&dockerfile_path)?;
    let ctx = load_context(state_dir, &context, &dockerfile_path)?;
    let kernel = install::kernel(None)?.path;
    let agent = install::agent(None)?.path;
    let st = store(state_dir)?;
    let LocalVm {
        work,
        initrd,
        vmm,
        snapshots,
    } = local_vm::prepare(
        state_dir,
        &kernel,
        &agent,
        a.snapshot_dir.as_deref(),
        a.no_snapshots,
    )?;
    let registry = RegistryOptions {
        insecure: a.insecure.clone(),
        ..Default::default()
    };
    let mut builder = Builder::new(
        st,
        registry.clone(),
        VmParts {
            vmm,
            jail: launcher::JailConfig::installed(),
            kernel,
            initrd,
            step_disk_bytes: a
                .step_disk
                .unwrap_or(control_plane::build::DEFAULT_STEP_DISK_BYTES),
        },
    );
    if let Some(s) = &snapshots {
        builder = builder.with_snapshots(Arc::new(s.clone()));
    }
    let req = BuildRequest {
        dockerfile,
        tags: tags.clone(),
        build_args,
        target: a.target.clone(),
        labels,
        no_cache: a.no_cache,
        source_date_epoch: epoch,
        format: match a.format {
            FormatArg::Oci => Format::Oci,
            FormatArg::Docker => Format::Docker,
        },
        cpu: a.cpu,
        memory_mib: a.memory,
        timeout: a.timeout.map(Duration::from_secs),
        network: control_plane::build::StepNetworkMode::None,
    };
    let control = BuildControl::new();
    cancel_on_signals(&control)?;
    let json = matches!(a.progress, ProgressMode::Json);
    let result = builder.build(&req, &ctx, &control, &|e| show(&e, json));
    if let Some(s) = &snapshots {
        local_vm::finish(s, "build", &|| control.is_cancelled());
    }
    let _ = std::fs::remove_dir_all(&work);
    match result {
        Ok(outcome) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"type": "result", "imageDigest": outcome.manifest.to_string(),
                        "imageId": outcome.config.to_string(), "steps": outcome.steps})
                );
            } else {
                eprintln!("built {} (image id {})", outcome.manifest, outcome.config);
                for t in &tags {
                    eprintln!("tagged {t}");
                }
                println!("{}", outcome.manifest);
            }
            if a.push {
                let client = RegistryClient::new(registry)?;
                for t in &tags {
                    push_image(builder.store(), &client, t, t, &super::image::push_progress)?;
                    eprintln!("pushed {t}");
                }
            }
            Ok(0)
        }
        Err(e) => {
            let code = e.exit_code();
            if let BuildError::Step { tail, .. } = &e {
                for l in tail {
                    eprintln!("  | {l}");
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"type": "result", "error": {"message": e.to_string(),
                        "step": match &e { BuildError::Step { index, .. } => Some(*index), _ => None },
                        "exitCode": match &e { BuildError::Step { exit_code, .. } => *exit_code, _ => None }}})
                );
            }
            eprintln!("skiff: error: {e}");
            Ok(code)
        }
    }
}

/// `K=V` pairs; `K` alone takes this environment's value when `from_env`.
pub fn key_values(
    items: &[String],
    flag: &str,
    from_env: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None if from_env => match std::env::var(item) {
                Ok(v) => (item.clone(), v),
                // Docker leaves an argument that is not set here out.
                Err(_) => continue,
            },
            None => bail!("{flag} {item}: expected KEY=VALUE"),
        };
        if k.is_empty() {
            bail!("{flag} {item}: the name is empty");
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn read_dockerfile(path: &Path) -> anyhow::Result<Vec<u8>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read the Dockerfile {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_DOCKERFILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the Dockerfile {}", path.display()))?;
    Ok(bytes)
}

/// The context's manifest, with the hashes of files unchanged since the last build of
/// this folder taken from its remembered stat cache.
fn load_context(
    state_dir: &Path,
    context: &Path,
    dockerfile: &Path,
) -> anyhow::Result<BuildContext> {
    let rel_dockerfile = dockerfile
        .strip_prefix(context)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| dockerfile.to_path_buf());
    let (ignore, file) = IgnoreMatcher::load(context, &rel_dockerfile)?;
    let mut always: Vec<String> = vec![rel_dockerfile.to_string_lossy().into_owned()];
    always.extend(file.and_then(|f| f.context_relative));
    let cache_dir = state_dir.join("build-contexts");
    let cache_path = cache_dir.join(format!(
        "stat-{}.json",
        hex::encode(Sha256::digest(context.as_os_str().as_encoded_bytes()))
    ));
    let mut stats: StatCache = std::fs::File::open(&cache_path)
        .ok()
        .and_then(|f| {
            let mut s = Vec::new();
            f.take(MAX_STAT_CACHE_BYTES).read_to_end(&mut s).ok()?;
            serde_json::from_slice(&s).ok()
        })
        .unwrap_or_default();
    let manifest = walk_context(
        context,
        &ignore,
        &always,
        &mut stats,
        &WalkOptions::default(),
    )?;
    if std::fs::create_dir_all(&cache_dir).is_ok() {
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(&cache_dir) {
            if serde_json::to_writer(&mut tmp, &stats).is_ok() {
                let _ = tmp.persist(&cache_path);
            }
        }
    }
    if manifest.total_bytes > LARGE_CONTEXT_BYTES {
        let mut big: Vec<_> = manifest
            .entries
            .iter()
            .filter(|e| !e.excluded)
            .filter_map(|e| Some((e.size?, e.path.as_str())))
            .collect();
        big.sort_by(|a, b| b.cmp(a));
        let names: Vec<String> = big
            .iter()
            .take(5)
            .map(|(s, p)| format!("{p} ({} MB)", s / 1_000_000))
            .collect();
        eprintln!(
            "skiff: warning: the build context is {} MB; the largest files: {}; exclude what the build does not need in .dockerignore",
            manifest.total_bytes / 1_000_000,
            names.join(", ")
        );
    }
    Ok(BuildContext {
        manifest,
        ignore,
        files: ContextFiles::Dir(context.to_path_buf()),
    })
}

/// A build event on stderr (plain) or as one JSON line on stdout.
pub fn show(e: &BuildEvent, json: bool) {
    if json {
        let v = match e {
            BuildEvent::Step {
                index,
                label,
                status,
                miss_reason,
            } => serde_json::json!({"type": "step", "index": index, "label": label,
                "status": status, "missReason": miss_reason}),
            BuildEvent::Log {
                index,
                stream,
                data,
            } => serde_json::json!({"type": "log", "index": index, "stream": stream,
                "data": String::from_utf8_lossy(data)}),
            BuildEvent::Warning(w) => serde_json::json!({"type": "warning", "message": w}),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}").and_then(|_| out.flush());
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = match e {
        BuildEvent::Step {
            label,
            status: StepStatus::Started,
            miss_reason,
            ..
        } => match miss_reason {
            Some(r) => writeln!(err, "{label}  ({r})"),
            None => writeln!(err, "{label}"),
        },
        BuildEvent::Step {
            label,
            status: StepStatus::Cached,
            ..
        } => writeln!(err, "{label}  CACHED"),
        BuildEvent::Step { .. } => Ok(()),
        BuildEvent::Log {
            index,
            stream,
            data,
        } => {
            let text = String::from_utf8_lossy(data);
            let mark = match stream {
                Stream::Stdout => "",
                Stream::Stderr => "!",
            };
            text.lines()
                .try_for_each(|l| writeln!(err, "#{index}{mark} {l}"))
        }
        BuildEvent::Warning(w) => writeln!(err, "skiff: warning: {w}"),
    };
}

/// SIGINT or SIGTERM cancels the build: its VMs end and its work folder goes.
fn cancel_on_signals(control: &BuildControl) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let control = control.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            control.cancel();
        }
    });
    Ok(())
}
