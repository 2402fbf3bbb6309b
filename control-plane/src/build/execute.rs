//! Doing a step the cache did not have: a `RUN` in a microVM whose root filesystem is the
//! stage's tree so far, a `COPY`/`ADD` from the context or another stage written on the
//! host, a `WORKDIR` that makes its folder when the image lacks it.

use std::path::PathBuf;
use std::time::Duration;

use guest_agent::RunSpec;
use sha2::{Digest as _, Sha256};

use super::add_archive::{archive_kind, missing_parents, unpack_archive, ArchiveKind};
use super::context::{
    select_sources, walk_context, Entry, EntryKind as SourceKind, IgnoreMatcher, Manifest,
    StatCache, WalkOptions,
};
use super::copy::{copy_entries, CopyRequest, SourceFiles};
use super::dockerfile::{Base, Instruction, Step};
use super::executor::{LayerRef, Run};
use super::layer::{file_caps, Content, EntryKind, LayerEntry, FILE_CAPS_XATTR};
use super::request::{BuildError, BuildEvent, ContextFiles, RunPhases, StepNetworkMode, Stream};
use super::stage::{argv, StageState};
use super::step::run_step;
use super::tree::{StageTree, TreeLayer};
use crate::images::digest::Digest;
use crate::images::rootfs::RootfsError;
use crate::launcher::{scratch_disk, LaunchConfig, Output, TaskEnd};

/// Output lines a failed `RUN` shows.
const TAIL_LINES: usize = 20;
/// Output bytes kept for that tail.
const TAIL_BYTES: usize = 16 << 10;

/// What doing a step made.
pub(super) struct Executed {
    /// Its layer; None when it changed no file.
    pub layer: Option<LayerRef>,
    /// A `RUN`'s exit code.
    pub exit_code: Option<i32>,
    /// A `RUN`'s phases.
    pub run: Option<RunPhases>,
}

impl Executed {
    fn layer(layer: Option<LayerRef>) -> Self {
        Executed {
            layer,
            exit_code: None,
            run: None,
        }
    }
}

impl Run<'_> {
    /// Does `step`.
    pub(super) fn execute(
        &self,
        n: usize,
        label: &str,
        step: &Step,
        state: &mut StageState,
    ) -> Result<Executed, BuildError> {
        match &step.instruction {
            Instruction::Run { command } => {
                let argv = argv(command, &state.config);
                self.run(n, label, step, argv, state)
            }
            Instruction::Copy {
                from,
                chown,
                chmod,
                sources,
                dest,
            } => {
                let from = from.as_ref().and(step.copy_from.as_ref());
                let layer = self.copy(label, from, chown, chmod, sources, dest, false, state)?;
                Ok(Executed::layer(Some(layer)))
            }
            Instruction::Add {
                chown,
                chmod,
                sources,
                dest,
            } => {
                let layer = self.copy(label, None, chown, chmod, sources, dest, true, state)?;
                Ok(Executed::layer(Some(layer)))
            }
            Instruction::Workdir(dir) => Ok(Executed::layer(self.workdir(label, dir, state)?)),
            _ => Ok(Executed::layer(None)),
        }
    }

    /// (The stage adds the step's label to internal errors.)
    fn tree_error(&self, _label: &str, e: impl std::fmt::Display) -> BuildError {
        BuildError::Internal(format!("the stage's files: {e}"))
    }

    /// `WORKDIR`: the folders of the path that the image lacks, root-owned `0755`.
    fn workdir(
        &self,
        label: &str,
        dir: &str,
        state: &mut StageState,
    ) -> Result<Option<LayerRef>, BuildError> {
        let mut after = state.config.clone();
        after.set_working_dir(dir);
        let path = after.working_dir();
        let now = super::executor::now_ms() / 1000;
        let tree = state.tree(self).map_err(|e| self.tree_error(label, e))?;
        let resolved = tree.resolve(&path);
        let mut entries = Vec::new();
        let mut at = String::new();
        for c in resolved.split('/').filter(|c| !c.is_empty()) {
            at = if at.is_empty() {
                c.to_owned()
            } else {
                format!("{at}/{c}")
            };
            if tree.dir_meta(&at).is_none() {
                entries.push(LayerEntry {
                    path: at.clone().into_bytes(),
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: now,
                    xattrs: Vec::new(),
                });
            }
        }
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.store_layer(entries, None)?))
    }

    /// A `RUN` in a microVM of its own.
    fn run(
        &self,
        n: usize,
        label: &str,
        step: &Step,
        argv: Vec<String>,
        state: &mut StageState,
    ) -> Result<Executed, BuildError> {
        let started = std::time::Instant::now();
        let layers: Vec<TreeLayer> = state.layers.iter().map(|l| l.tree.clone()).collect();
        let mut chain = Sha256::new();
        for l in &layers {
            chain.update(l.digest.to_string().as_bytes());
            chain.update(b"\n");
        }
        // Named by the layers it holds, so a tree is made once for every build on it.
        let name = format!("build-{}", Digest::from_hasher(chain).hex());
        let mut tree_failure = None;
        let rootfs = self.b.store.rootfs_builder().from_tree(&name, || {
            state.tree(self).map(|t| t.root().to_owned()).map_err(|e| {
                let root = state.tree_root.clone();
                tree_failure = Some(e.to_string());
                RootfsError::Io {
                    path: root,
                    source: std::io::Error::other("the stage's files"),
                }
            })
        });
        let rootfs = match (rootfs, tree_failure) {
            (_, Some(e)) => return Err(self.tree_error(label, e)),
            (Ok(r), None) => r,
            (Err(e), None) => return Err(self.tree_error(label, e)),
        };
        let mut env: Vec<String> = step.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // ARGs reach RUN as environment variables, under ENV of the same name.
        for (k, v) in step.args_seen.iter().chain(
            step.proxy_env
                .iter()
                .map(|(k, v)| (k, v))
                .collect::<Vec<_>>(),
        ) {
            if !step.env.iter().any(|(e, _)| e == k) {
                env.push(format!("{k}={v}"));
            }
        }
        let memory = self.req.memory_mib;
        let mut spec = RunSpec {
            argv,
            env,
            working_dir: state.config.working_dir(),
            user: Some(state.config.user())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "0".into()),
            image_disk: "/dev/vda".into(),
            upper_size_mib: (memory / 4).max(16),
            scratch_disk: scratch_disk::GUEST_DEVICE.into(),
            hostname: "skiff-build".into(),
            wall_clock_ms: super::executor::now_ms(),
            ..Default::default()
        };
        let work = self.work_path(&format!("vm-{n}"));
        std::fs::create_dir_all(&work).map_err(|e| BuildError::internal("a VM's folder", e))?;
        // The step's writes go to a disk of its own, not its memory (the launcher makes
        // it, or copies the template of the snapshot it restores).
        let scratch = scratch_disk::ScratchDisk {
            path: work.join("scratch.img"),
            bytes: self.b.vm.step_disk_bytes,
        };
        let mut cfg = LaunchConfig {
            vmm: self.b.vm.vmm.clone(),
            jail: self.b.vm.jail.clone(),
            kernel: self.b.vm.kernel.clone(),
            initrd: self.b.vm.initrd.clone(),
            vcpus: self.req.cpu,
            memory_mib: memory,
            rootfs: rootfs.path,
            scratch: Some(scratch),
            work_dir: work.clone(),
            timeout: self.req.timeout,
            stop_timeout: Duration::from_secs(10),
            boot_timeout: Duration::from_secs(600),
            snapshot: None,
            net: None,
        };
        // Room for the VM first (the server's capacity), as a task's VM waits for it.
        let _lease = match &self.b.admission {
            Some(admit) => {
                Some(admit(self.req.cpu, memory, self.control).ok_or(BuildError::Cancelled)?)
            }
            None => None,
        };
        // With `--network default`, the VM joins the server's default network as a
        // task's does; it is taken back when the VM is gone.
        let net = match (self.req.network, &self.b.networks) {
            (StepNetworkMode::Default, Some(nets)) => {
                let id = format!("b{}-{n}", self.work_suffix());
                let attached = nets.attach(&id, &work).map_err(|e| {
                    let _ = std::fs::remove_dir_all(&work);
                    BuildError::Step {
                        index: n,
                        message: format!("{label}: its network: {e}"),
                        exit_code: None,
                        tail: Vec::new(),
                    }
                })?;
                Some((nets.clone(), attached))
            }
            _ => None,
        };
        cfg.net = net.as_ref().map(|(_, s)| s.net.clone());
        spec.network = net.as_ref().map(|(_, s)| Box::new(s.guest.clone()));
        // A shape with a network card restores a snapshot that has one.
        cfg.snapshot = self.b.snapshots.as_ref().and_then(|s| s.for_shape(&cfg));
        let task = self.control.task();
        let mut tail: Vec<u8> = Vec::new();
        let launch_ms = started.elapsed().as_millis() as u64;
        let outcome = run_step(
            &cfg,
            &spec,
            &task,
            *self.b.store.limits(),
            &self.work,
            &mut |o, bytes| {
                (self.events)(BuildEvent::Log {
                    index: n,
                    stream: match o {
                        Output::Stdout => Stream::Stdout,
                        Output::Stderr => Stream::Stderr,
                    },
                    data: bytes.to_vec(),
                });
                tail.extend_from_slice(bytes);
                if tail.len() > 2 * TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            },
        );
        self.control.done(&task);
        if let Some((nets, s)) = net {
            nets.detach(&s.net, &work);
        }
        let _ = std::fs::remove_dir_all(&work);
        let outcome = outcome.map_err(|e| BuildError::Internal(e.to_string()))?;
        if let (true, Some(snaps), Some(snap)) =
            (outcome.bad_snapshot, &self.b.snapshots, &cfg.snapshot)
        {
            snaps.discard(snap);
        }
        let failed = |message: String, code: Option<i32>| BuildError::Step {
            index: n,
            message,
            exit_code: code,
            tail: last_lines(&tail),
        };
        match outcome.end {
            TaskEnd::Exited(r) if r.exit_code == 0 => {}
            TaskEnd::Exited(r) if r.oom_killed => {
                return Err(failed(
                    format!(
                        "{label} ran out of memory (exit code {}); give it more with --memory",
                        r.exit_code
                    ),
                    Some(r.exit_code),
                ))
            }
            TaskEnd::Exited(r) => {
                return Err(failed(
                    format!("{label} exited with code {}", r.exit_code),
                    Some(r.exit_code),
                ))
            }
            TaskEnd::TimedOut(t) => {
                return Err(failed(
                    format!("{label} timed out after {} s", t.as_secs()),
                    Some(124),
                ))
            }
            TaskEnd::Killed if self.control.is_cancelled() => return Err(BuildError::Cancelled),
            TaskEnd::Killed => {
                return Err(failed(
                    format!("{label}: its changes were refused (over a limit or malformed)"),
                    None,
                ))
            }
            TaskEnd::Failed { message, .. } => {
                return Err(failed(format!("{label}: {message}"), None))
            }
            TaskEnd::Lost(why) => {
                return Err(failed(format!("{label}: the VM was lost: {why}"), None))
            }
        }
        let t = &outcome.timings;
        let ready_ms = launch_ms + t.agent_ready_ms;
        let exec_ms = t.process_started_ms.map_or(ready_ms, |e| launch_ms + e);
        let ran_ms = match (t.guest_exec_ms, t.guest_exited_ms) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        let received_ms = launch_ms + outcome.received_ms;
        let mut phases = RunPhases {
            from_snapshot: outcome.from_snapshot,
            launch_ms,
            ready_ms,
            exec_ms,
            // The changes are sent after the exit, so they cannot have arrived before it.
            exit_ms: (exec_ms + ran_ms).min(received_ms),
            received_ms,
            written_ms: 0,
        };
        let Some(changes) = outcome.changes else {
            return Err(failed(format!("{label}: the VM sent no changes"), None));
        };
        let layer = if changes.entries.is_empty() {
            None
        } else {
            Some(self.store_layer(changes.entries, Some(&changes.spool))?)
        };
        phases.written_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(step = n, ?phases, "RUN step done");
        Ok(Executed {
            layer,
            exit_code: Some(0),
            run: Some(phases),
        })
    }

    /// A `COPY`, or an `ADD` (the same, except that a local tar archive is unpacked).
    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        label: &str,
        from: Option<&Base>,
        chown: &Option<String>,
        chmod: &Option<String>,
        sources: &[String],
        dest: &str,
        is_add: bool,
        state: &mut StageState,
    ) -> Result<LayerRef, BuildError> {
        let chmod = match chmod {
            None => None,
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        self.step_error(
                            label,
                            format_args!("invalid --chmod={m}: expected octal bits"),
                        )
                    })?,
            ),
        };
        let workdir = state.config.working_dir();
        let tree = state.tree(self).map_err(|e| self.tree_error(label, e))?;
        let owner = match chown {
            None => (0, 0),
            Some(c) => tree.owner(c).map_err(|e| self.step_error(label, e))?,
        };
        // The destination through the image's own links (`/bin` → `usr/bin`).
        let full = if dest.starts_with('/') {
            dest.to_owned()
        } else {
            format!("{workdir}/{dest}")
        };
        let named_dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
        let resolved = format!(
            "/{}{}",
            tree.resolve(&full),
            if named_dir { "/" } else { "" }
        );
        let source = match from {
            None => Source::context(self),
            Some(base) => self.other_source(label, base, sources)?,
        };
        let mut sources = source.sources.clone().unwrap_or_else(|| sources.to_vec());
        let archive = if is_add {
            self.take_archive(label, &source, &mut sources)?
        } else {
            None
        };
        let content_root = source.root.clone();
        let by_hash = source.by_hash;
        let content_of = |e: &Entry| match (&e.sha256, by_hash) {
            (Some(h), true) => Content::Host(content_root.join(h)),
            _ => Content::Host(content_root.join(&e.path)),
        };
        // A file copied from another stage or an image keeps its capabilities, as
        // BuildKit's copy keeps them; a context's files have none to keep.
        let from_tree = from.is_some();
        let xattrs_of = |e: &Entry| match e.kind {
            SourceKind::File if from_tree => file_caps(&content_root.join(&e.path))
                .map(|caps| vec![(FILE_CAPS_XATTR.to_owned(), caps)])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let req = CopyRequest {
            sources: &sources,
            dest: &resolved,
            workdir: "/",
            owner,
            chmod,
            mtime: super::executor::now_ms() / 1000,
        };
        let mut entries = if sources.is_empty() {
            Vec::new()
        } else {
            let files = SourceFiles {
                content_of: &content_of,
                xattrs_of: &xattrs_of,
            };
            copy_entries(&source.manifest, &source.ignore, &req, &files, &|p| {
                tree.dir_meta(p)
            })
            .map_err(|e| self.step_error(label, e))?
        };
        let Some(archive) = archive else {
            return self.store_layer(entries, None);
        };
        // The archive's contents go into the destination folder, made if missing.
        let dir = resolved.trim_matches('/').to_owned();
        let mut at = String::new();
        for c in dir.split('/').filter(|c| !c.is_empty()) {
            at = if at.is_empty() {
                c.to_owned()
            } else {
                format!("{at}/{c}")
            };
            if tree.dir_meta(&at).is_none() && !entries.iter().any(|e| e.path == at.as_bytes()) {
                entries.push(LayerEntry {
                    path: at.clone().into_bytes(),
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: req.mtime,
                    xattrs: Vec::new(),
                });
            }
        }
        let spooled = unpack_archive(&archive, &dir, *self.b.store.limits(), &self.work)
            .map_err(|e| self.step_error(label, e))?;
        let unpacked: std::collections::HashSet<&[u8]> =
            spooled.entries.iter().map(|e| e.path.as_slice()).collect();
        entries.retain(|e| !unpacked.contains(e.path.as_slice()));
        let parents = missing_parents(
            &entries,
            &spooled.entries,
            &|p| tree.dir_meta(p).is_some(),
            req.mtime,
        );
        entries.extend(parents);
        entries.extend(spooled.entries.iter().cloned());
        self.store_layer(entries, Some(&spooled.spool))
    }

    /// The files of an earlier stage or of an image, below the folder the sources share.
    fn other_source(
        &self,
        label: &str,
        base: &Base,
        sources: &[String],
    ) -> Result<Source, BuildError> {
        let walk = |tree: &StageTree| -> Result<Source, BuildError> {
            let (dir, rewritten) = walk_root(tree, sources);
            let root = tree.root().join(&dir);
            let manifest = walk_context(
                &root,
                &IgnoreMatcher::empty(),
                &[],
                &mut StatCache::new(),
                &WalkOptions {
                    special_files: true,
                    ..WalkOptions::default()
                },
            )
            .map_err(|e| self.step_error(label, e))?;
            Ok(Source {
                manifest,
                ignore: IgnoreMatcher::empty(),
                root,
                by_hash: false,
                sources: Some(rewritten),
            })
        };
        match base {
            Base::Stage(i) => {
                let s = self.stage(*i)?;
                let mut s = s
                    .lock()
                    .map_err(|_| BuildError::Internal("a stage's state was poisoned".into()))?;
                let tree = s.tree(self).map_err(|e| self.tree_error(label, e))?;
                walk(tree)
            }
            Base::Image(name) => {
                let (_, layers, manifest) = self.base_image(name)?;
                let mut tree = StageTree::new(
                    self.work_path(&format!("from-{}", manifest.hex())),
                    *self.b.store.limits(),
                )
                .map_err(|e| self.tree_error(label, e))?;
                let layers: Vec<TreeLayer> = layers.into_iter().map(|l| l.tree).collect();
                tree.catch_up(&layers)
                    .map_err(|e| self.tree_error(label, e))?;
                walk(&tree)
            }
        }
    }

    /// `ADD`: takes out of `sources` the one that names a local tar archive (unpacked
    /// rather than copied), and returns its file.
    fn take_archive(
        &self,
        label: &str,
        source: &Source,
        sources: &mut Vec<String>,
    ) -> Result<Option<PathBuf>, BuildError> {
        let mut archive = None;
        let mut rest = Vec::new();
        for s in sources.drain(..) {
            let selected =
                select_sources(&source.manifest, std::slice::from_ref(&s), &source.ignore)
                    .map_err(|e| self.step_error(label, e))?;
            let file = match selected.as_slice() {
                [e] if e.kind == SourceKind::File => Some(match (&e.sha256, source.by_hash) {
                    (Some(h), true) => source.root.join(h),
                    _ => source.root.join(&e.path),
                }),
                _ => None,
            };
            let kind = match &file {
                Some(f) => archive_kind(f).map_err(|e| self.step_error(label, e))?,
                None => None,
            };
            match (kind, file) {
                (Some(ArchiveKind::Tar), Some(f)) if archive.is_none() => archive = Some(f),
                (Some(ArchiveKind::Tar), Some(_)) => {
                    return Err(self.step_error(
                        label,
                        "ADD unpacks one archive per instruction here: use one ADD for each",
                    ))
                }
                (Some(ArchiveKind::Unsupported(what)), _) => {
                    return Err(self.step_error(
                        label,
                        format_args!("{s:?} is a {what} archive, which ADD cannot unpack yet (gzip, zstd and plain tar can)"),
                    ))
                }
                _ => rest.push(s),
            }
        }
        *sources = rest;
        Ok(archive)
    }
}

/// Where a `COPY` reads from.
struct Source {
    manifest: Manifest,
    ignore: IgnoreMatcher,
    root: PathBuf,
    /// Files are kept by content hash under `root` (an uploaded context).
    by_hash: bool,
    /// The sources rewritten against `root`, when it is not the stage's `/`.
    sources: Option<Vec<String>>,
}

impl Source {
    fn context(run: &Run<'_>) -> Source {
        let (root, by_hash) = match &run.ctx.files {
            ContextFiles::Dir(d) => (d.clone(), false),
            ContextFiles::ByHash(d) => (d.clone(), true),
        };
        Source {
            manifest: run.ctx.manifest.clone(),
            ignore: run.ctx.ignore.clone(),
            root,
            by_hash,
            sources: None,
        }
    }
}

fn has_wildcard(c: &str) -> bool {
    c.contains(['*', '?', '[', '\\'])
}

/// The folder under `tree` to walk for `sources` (resolved, relative) and the sources
/// rewritten against it: the literal folders the sources share, so that copying one
/// folder out of a large image does not read (or hash) the rest of it. A source that
/// names a folder becomes `.` (its contents are copied either way).
fn walk_root(tree: &StageTree, sources: &[String]) -> (String, Vec<String>) {
    let comps: Vec<Vec<&str>> = sources
        .iter()
        .map(|s| {
            s.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect()
        })
        .collect();
    let mut prefix: Option<Vec<&str>> = None;
    for c in &comps {
        let literal: Vec<&str> = c.iter().take_while(|c| !has_wildcard(c)).copied().collect();
        let whole_dir = literal.len() == c.len()
            && !c.contains(&"..")
            && tree.dir_meta(&tree.resolve(&c.join("/"))).is_some();
        let mut mine = if whole_dir {
            literal
        } else {
            literal[..literal.len().min(c.len().saturating_sub(1))].to_vec()
        };
        if mine.contains(&"..") {
            mine.clear();
        }
        prefix = Some(match prefix {
            None => mine,
            Some(p) => p
                .iter()
                .zip(&mine)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    let prefix = prefix.unwrap_or_default();
    let rewritten = comps
        .iter()
        .map(|c| {
            let rest = c[prefix.len().min(c.len())..].join("/");
            if rest.is_empty() {
                ".".to_owned()
            } else {
                rest
            }
        })
        .collect();
    (tree.resolve(&prefix.join("/")), rewritten)
}

/// The last lines of a step's output.
fn last_lines(tail: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(tail);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}
