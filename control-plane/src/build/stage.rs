//! One stage of a build: its FROM resolved, then each step either taken from the build
//! cache (its layer and time as recorded) or done (a `RUN` in a VM, a `COPY` on the host,
//! a `WORKDIR` that makes its folder), with the config changed as Docker changes it and
//! one history entry per step.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::cache_key::{CacheKey, StepInputs};
use super::cache_store::{CacheRecord, CachedLayer};
use super::context::{checksum_sources, select_sources};
use super::dockerfile::{Base, Command, Instruction, Stage, Step};
use super::executor::{now_ms, LayerRef, Run};
use super::image_config::{BuildConfig, Clock};
use super::miss_reason::{explain, SeenInputs};
use super::request::{BuildError, BuildEvent, StepReport, StepStatus};
use super::tree::{StageTree, TreeError, TreeLayer};
use crate::images::registry::Reference;
use crate::images::source::get_image;

/// A stage as far as it is built.
#[derive(Debug)]
pub(super) struct StageState {
    pub config: BuildConfig,
    pub layers: Vec<LayerRef>,
    /// The last step's cache key (the base's before any step).
    pub key: CacheKey,
    /// The unpacked tree, made the first time a step needs it.
    pub tree: Option<StageTree>,
    pub tree_root: PathBuf,
    /// When the last step was first built (ms).
    pub last_ms: u64,
    /// A step of this stage (or of the stage it is built on) was not cached.
    pub rebuilt: bool,
}

impl StageState {
    /// The tree with every layer so far applied.
    pub fn tree(&mut self, run: &Run<'_>) -> Result<&StageTree, TreeError> {
        let layers: Vec<TreeLayer> = self.layers.iter().map(|l| l.tree.clone()).collect();
        if self.tree.is_none() {
            self.tree = Some(StageTree::new(
                self.tree_root.clone(),
                *run.b.store.limits(),
            )?);
        }
        let tree = self.tree.as_mut().ok_or_else(|| TreeError::Io {
            path: self.tree_root.clone(),
            source: std::io::Error::other("no tree"),
        })?;
        tree.catch_up(&layers)?;
        Ok(tree)
    }
}

/// What a `COPY`/`ADD` step reads.
#[derive(Debug, Default)]
struct FilesRead {
    checksum: Option<String>,
    files: Option<std::collections::BTreeMap<String, String>>,
}

/// An instruction cut for a reason line (`COPY src/ /app/`).
fn short(original: &str) -> String {
    const MAX: usize = 40;
    match original.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &original[..at]),
        None => original.to_owned(),
    }
}

/// What a step is called in progress lines and errors.
pub(super) fn label(n: usize, total: usize, original: &str, line: usize) -> String {
    format!("[{n}/{total}] {original} (Dockerfile:{line})")
}

/// The argv of a `RUN`, `CMD` or `ENTRYPOINT`: shell form through the stage's shell.
pub(super) fn argv(command: &Command, config: &BuildConfig) -> Vec<String> {
    match command {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let mut a = config.shell();
            a.push(s.clone());
            a
        }
    }
}

impl Run<'_> {
    pub(super) fn step_error(&self, label: &str, e: impl std::fmt::Display) -> BuildError {
        BuildError::Step {
            index: 0,
            message: format!("{label}: {e}"),
            exit_code: None,
            tail: Vec::new(),
        }
    }

    fn emit(&self, index: usize, label: &str, status: StepStatus, miss_reason: Option<String>) {
        (self.events)(BuildEvent::Step {
            index,
            label: label.to_owned(),
            status,
            miss_reason,
        });
    }

    pub(super) fn build_stage(&self, index: usize) -> Result<(), BuildError> {
        let stage = &self.plan.stages[index];
        let mut n = self.first_step.get(&index).copied().unwrap_or(1);
        let from_label = label(n, self.total_steps, &stage.from.original, stage.from.line);
        let started = now_ms();
        self.emit(n, &from_label, StepStatus::Started, None);
        let mut state = self.start(stage).map_err(|e| {
            self.emit(n, &from_label, StepStatus::Failed, None);
            match e {
                BuildError::Internal(m) => self.step_error(&from_label, m),
                e => e,
            }
        })?;
        self.emit(n, &from_label, StepStatus::Done, None);
        self.report(StepReport {
            index: n,
            stage: index,
            instruction: stage.from.original.clone(),
            line: stage.from.line,
            cached: !state.rebuilt,
            miss_reason: None,
            start_ms: started,
            end_ms: now_ms(),
            layer: None,
            exit_code: None,
            run: None,
        });
        let steps = self.plan.steps(index, &state.config.env())?;
        for step in &steps.steps {
            n += 1;
            let l = label(n, self.total_steps, &step.original, step.line);
            if self.control.is_cancelled() {
                return Err(BuildError::Cancelled);
            }
            self.step(index, n, &l, step, &mut state).map_err(|e| {
                self.emit(n, &l, StepStatus::Failed, None);
                match e {
                    BuildError::Step {
                        message,
                        exit_code,
                        tail,
                        ..
                    } => BuildError::Step {
                        index: n,
                        message,
                        exit_code,
                        tail,
                    },
                    BuildError::Internal(m) => self.step_error(&l, m),
                    e => e,
                }
            })?;
        }
        if let Ok(mut stages) = self.stages.lock() {
            stages.insert(index, Arc::new(Mutex::new(state)));
        }
        Ok(())
    }

    /// The state a stage starts from: `scratch`, an image, or an earlier stage. Its key
    /// holds `SOURCE_DATE_EPOCH`, which changes the layers a step writes.
    fn start(&self, stage: &Stage) -> Result<StageState, BuildError> {
        let mut state = self.start_from(stage)?;
        if let (Some(n), Base::Image(_)) = (self.req.source_date_epoch, &stage.base) {
            state.key = state.key.step(&StepInputs {
                instruction: b"source-date-epoch",
                args: [("SOURCE_DATE_EPOCH".to_owned(), n.to_string())].into(),
                ..Default::default()
            });
        }
        Ok(state)
    }

    fn start_from(&self, stage: &Stage) -> Result<StageState, BuildError> {
        let tree_root = self.work_path(&format!("stage-{}", stage.index));
        match &stage.base {
            Base::Image(name) if name.eq_ignore_ascii_case("scratch") => Ok(StageState {
                config: BuildConfig::scratch(),
                layers: Vec::new(),
                key: CacheKey::base(None),
                tree: None,
                tree_root,
                last_ms: 0,
                rebuilt: false,
            }),
            Base::Image(name) => {
                let (config, layers, manifest) = self.base_image(name)?;
                Ok(StageState {
                    config,
                    layers,
                    key: CacheKey::base(Some(&manifest)),
                    tree: None,
                    tree_root,
                    last_ms: 0,
                    rebuilt: false,
                })
            }
            Base::Stage(i) => {
                let parent = self.stage(*i)?;
                let p = parent
                    .lock()
                    .map_err(|_| BuildError::Internal("a stage's state was poisoned".into()))?;
                // A new image on top of the stage: its CMD is the base's, not "set here".
                let blob = p.config.clone().finish(Clock { epoch: Some(0) });
                Ok(StageState {
                    config: BuildConfig::from_base(&blob)
                        .map_err(|e| BuildError::internal("the base stage's config", e))?,
                    layers: p.layers.clone(),
                    key: p.key.clone(),
                    tree: None,
                    tree_root,
                    last_ms: p.last_ms,
                    rebuilt: p.rebuilt,
                })
            }
        }
    }

    /// An image's config, layers and manifest digest: from the store, else pulled.
    pub(super) fn base_image(
        &self,
        name: &str,
    ) -> Result<(BuildConfig, Vec<LayerRef>, crate::images::digest::Digest), BuildError> {
        let r: Reference = name
            .parse()
            .map_err(|e| BuildError::Internal(format!("{name}: {e}")))?;
        let image = get_image(&self.b.store, &r, &self.b.registry, &|_| {})
            .map_err(|e| BuildError::Internal(format!("cannot get image {r}: {e}")))?;
        let diff_ids = image
            .config
            .rootfs
            .as_ref()
            .map(|r| r.diff_ids.clone())
            .unwrap_or_default();
        if diff_ids.len() != image.manifest.layers.len() {
            return Err(BuildError::Internal(format!(
                "image {r}: its config lists {} diff_ids for {} layers",
                diff_ids.len(),
                image.manifest.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in image.manifest.layers.iter().zip(diff_ids) {
            // Carried into the new manifest as gzip or plain tar layers.
            let gzip = l.media_type.ends_with("gzip");
            if !gzip && !l.media_type.ends_with(".tar") {
                return Err(BuildError::Internal(format!(
                    "image {r}: layer {} is {:?}; only gzip and plain tar layers can be built on",
                    l.digest, l.media_type
                )));
            }
            layers.push(LayerRef {
                tree: TreeLayer {
                    path: self.b.store.blobs().path(&l.digest),
                    digest: l.digest.clone(),
                    diff_id,
                },
                size: l.size,
                gzip,
            });
        }
        let blob = self
            .b
            .store
            .blobs()
            .read(image.id())
            .map_err(|e| BuildError::internal("the base image's config", e))?;
        let config = BuildConfig::from_base(&blob)
            .map_err(|e| BuildError::Internal(format!("image {r}: {e}")))?;
        Ok((config, layers, image.manifest_digest))
    }

    /// One step: from the cache or done, then applied to the stage's config.
    fn step(
        &self,
        stage: usize,
        n: usize,
        label: &str,
        step: &Step,
        state: &mut StageState,
    ) -> Result<(), BuildError> {
        let started = now_ms();
        let instruction = serde_json::to_vec(&step.instruction)
            .map_err(|e| BuildError::internal("the instruction", e))?;
        let read = self.files_read(label, step)?;
        let key = state.key.step(&StepInputs {
            instruction: &instruction,
            args: step.args_seen.clone(),
            env: &step.env,
            files: read.checksum.as_deref(),
        });
        let created_by = match &step.instruction {
            Instruction::Run { command } => {
                format!("RUN {}", argv(command, &state.config).join(" "))
            }
            _ => step.original.clone(),
        };
        let blobs = self.b.store.blobs();
        let hit = if self.req.no_cache {
            None
        } else {
            self.b
                .cache
                .get(&key)
                .filter(|r| r.layer.as_ref().is_none_or(|l| blobs.contains(&l.digest)))
        };
        let mut run_phases = None;
        let (layer, step_ms, miss_reason, exit_code) = match hit {
            Some(mut record) => {
                self.emit(n, label, StepStatus::Cached, None);
                record.last_used_ms = now_ms();
                // Only the prune order depends on it; a failed write is not worth a build.
                let _ = self.b.cache.put(&record);
                let layer = record.layer.map(|l| LayerRef {
                    tree: TreeLayer {
                        path: blobs.path(&l.digest),
                        digest: l.digest,
                        diff_id: l.diff_id,
                    },
                    size: l.size,
                    gzip: true,
                });
                (layer, record.created_ms, None, None)
            }
            None => {
                let seen = SeenInputs {
                    instruction: String::from_utf8_lossy(&instruction).into_owned(),
                    args: step.args_seen.clone(),
                    env: step.env.clone(),
                    files: read.files,
                    checksum: read.checksum,
                };
                let reason = if self.req.no_cache {
                    "--no-cache".to_owned()
                } else if state.rebuilt {
                    "an earlier step was rebuilt".to_owned()
                } else {
                    let before = self.inputs.get(&state.key, &step.original);
                    let what = explain(step.instruction.keyword(), before.as_ref(), &seen);
                    format!("{}: {what}", short(&step.original))
                };
                self.inputs.put(&state.key, &step.original, &seen);
                self.emit(n, label, StepStatus::Started, Some(reason.clone()));
                state.rebuilt = true;
                let done = self.execute(n, label, step, state)?;
                let (layer, exit_code) = (done.layer, done.exit_code);
                run_phases = done.run;
                let now = now_ms();
                let record = CacheRecord {
                    key: key.clone(),
                    layer: layer.as_ref().map(|l| CachedLayer {
                        digest: l.tree.digest.clone(),
                        diff_id: l.tree.diff_id.clone(),
                        size: l.size,
                    }),
                    created_by: created_by.clone(),
                    created_ms: now,
                    last_used_ms: now,
                };
                self.b
                    .cache
                    .put(&record)
                    .map_err(|e| BuildError::internal("the build cache", e))?;
                self.emit(n, label, StepStatus::Done, None);
                (layer, now, Some(reason), exit_code)
            }
        };
        apply_config(&mut state.config, &step.instruction);
        if let Some(l) = &layer {
            state.config.add_layer(&l.tree.diff_id);
        }
        state
            .config
            .add_history(self.clock(step_ms), &created_by, layer.is_none());
        self.report(StepReport {
            index: n,
            stage,
            instruction: step.original.clone(),
            line: step.line,
            cached: miss_reason.is_none(),
            miss_reason,
            start_ms: started,
            end_ms: now_ms(),
            layer: layer.as_ref().map(|l| l.tree.digest.clone()),
            exit_code,
            run: run_phases,
        });
        state.layers.extend(layer);
        state.key = key;
        state.last_ms = state.last_ms.max(step_ms);
        Ok(())
    }

    /// What a `COPY`/`ADD` reads, for its key: the context files' checksum (and the files,
    /// for a miss's reason), or the key of the stage (or the digest of the image) it copies
    /// from.
    fn files_read(&self, label: &str, step: &Step) -> Result<FilesRead, BuildError> {
        let (sources, chmod) = match &step.instruction {
            Instruction::Copy { from: Some(_), .. } => {
                let checksum = match &step.copy_from {
                    Some(Base::Stage(i)) => {
                        let s = self.stage(*i)?;
                        let key = s.lock().map(|s| s.key.to_string()).unwrap_or_default();
                        format!("stage:{key}")
                    }
                    Some(Base::Image(name)) => {
                        let (_, _, manifest) = self
                            .base_image(name)
                            .map_err(|e| self.step_error(label, e))?;
                        format!("image:{manifest}")
                    }
                    None => return Err(self.step_error(label, "COPY --from names nothing")),
                };
                return Ok(FilesRead {
                    checksum: Some(checksum),
                    files: None,
                });
            }
            Instruction::Copy { sources, chmod, .. } | Instruction::Add { sources, chmod, .. } => {
                (sources, chmod)
            }
            _ => return Ok(FilesRead::default()),
        };
        let (manifest, ignore) = (&self.ctx.manifest, &self.ctx.ignore);
        let checksum = checksum_sources(manifest, sources, ignore, chmod.is_some())
            .map_err(|e| self.step_error(label, e))?;
        let selected =
            select_sources(manifest, sources, ignore).map_err(|e| self.step_error(label, e))?;
        let files = SeenInputs::listable(selected.len()).then(|| {
            selected
                .iter()
                .map(|e| {
                    let mode = if chmod.is_some() { 0 } else { e.mode };
                    let what = format!(
                        "{} {mode:o} {} {} {}",
                        e.kind.as_str(),
                        e.size.unwrap_or(0),
                        e.sha256.as_deref().unwrap_or("-"),
                        e.link_target.as_deref().unwrap_or("-")
                    );
                    (e.path.clone(), what)
                })
                .collect()
        });
        Ok(FilesRead {
            checksum: Some(checksum),
            files,
        })
    }

    pub(super) fn report(&self, r: StepReport) {
        if let Ok(mut reports) = self.reports.lock() {
            reports.push(r);
        }
    }
}

/// What an instruction changes in the image's config.
fn apply_config(config: &mut BuildConfig, instruction: &Instruction) {
    match instruction {
        Instruction::Env(pairs) => {
            for (k, v) in pairs {
                config.set_env(k, v);
            }
        }
        Instruction::Workdir(dir) => config.set_working_dir(dir),
        Instruction::User(u) => config.set_user(u),
        Instruction::Expose(ports) => {
            for p in ports.iter().flat_map(|p| p.split_whitespace()) {
                config.expose(p);
            }
        }
        Instruction::Label(pairs) => {
            for (k, v) in pairs {
                config.set_label(k, v);
            }
        }
        Instruction::StopSignal(s) => config.set_stop_signal(s),
        Instruction::Volume(v) => {
            for p in v {
                config.add_volume(p);
            }
        }
        Instruction::Shell(s) => config.set_shell(s.clone()),
        Instruction::Cmd { command } => {
            let a = argv(command, config);
            config.set_cmd(a);
        }
        Instruction::Entrypoint { command } => {
            let a = argv(command, config);
            config.set_entrypoint(a);
        }
        Instruction::From { .. }
        | Instruction::Run { .. }
        | Instruction::Copy { .. }
        | Instruction::Add { .. }
        | Instruction::Arg(_)
        | Instruction::Maintainer(_) => {}
    }
}
