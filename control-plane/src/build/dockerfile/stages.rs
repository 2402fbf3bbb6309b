//! Build stages, ARG/ENV scoping, stage dependencies and `--target`.
//!
//! Scoping follows Docker:
//! - ARGs before the first FROM are meta args, visible only in FROM lines
//!   (plus the automatic `BUILDPLATFORM`, `TARGETARCH`, … values).
//! - Inside a stage an ARG is visible from its line on. `ARG X` without a
//!   default takes the meta value of `X` when one was declared.
//! - `--build-arg` values replace the value of declared ARGs only.
//! - ENV (including the base image's) wins over an ARG of the same name.
//! - The platform args are fixed (`linux/amd64`); build args do not change them.
//! - Proxy args (`HTTP_PROXY`, …) given as build args reach RUN steps without
//!   a declaration, through [`Step::proxy_env`]; like Docker they are left out
//!   of [`Step::args_seen`] (the cache key) unless declared with `ARG`.

use std::collections::{BTreeMap, BTreeSet};

use super::error::DockerfileError;
use super::expand::Expander;
use super::instruction::{Dockerfile, Instruction, InstructionLine};
use super::scope::{arg_value, meta_lookup, Scope};
pub use super::scope::{PLATFORM_ARGS, PROXY_ARGS, SUPPORTED_PLATFORM};

/// What a stage (or a `COPY --from`) starts from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Base {
    /// An image reference (expanded), e.g. `alpine:3.20` or `scratch`.
    Image(String),
    /// An earlier stage, by index.
    Stage(usize),
}

/// One build stage: a FROM line and the instructions up to the next FROM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stage {
    /// Position among the stages, from 0.
    pub index: usize,
    /// The `AS` name as written, if any (matched case-insensitively).
    pub name: Option<String>,
    /// The FROM line with image and platform expanded against meta args.
    pub from: InstructionLine,
    /// What the stage starts from.
    pub base: Base,
    /// The expanded `--platform`, when given and not empty.
    pub platform: Option<String>,
    /// Earlier stages this one needs (its base and `COPY --from` sources).
    pub depends_on: BTreeSet<usize>,
    /// The stage's instructions after FROM, unexpanded.
    pub instructions: Vec<InstructionLine>,
    /// For `COPY --from` instructions, by position in `instructions`: what
    /// `--from` names. Resolved with the stage's ARGs and the Dockerfile's own
    /// ENV (the base image's ENV is not known yet when planning).
    pub copy_from: BTreeMap<usize, Base>,
}

/// A Dockerfile split into stages, with build args applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The escape character of the Dockerfile.
    pub escape: char,
    /// Meta args (before the first FROM) and their values after build args.
    pub meta_args: Vec<(String, Option<String>)>,
    /// The stages in file order.
    pub stages: Vec<Stage>,
    /// Build args that no ARG line declared (proxy args excepted), sorted.
    pub unused_build_args: Vec<String>,
    build_args: BTreeMap<String, String>,
}

/// One instruction of a stage, expanded, with what it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line of the instruction.
    pub line: usize,
    /// The instruction as written.
    pub original: String,
    /// The instruction with variables expanded where Docker expands them.
    pub instruction: Instruction,
    /// ARG values the step depends on, for its cache key: for RUN every ARG
    /// set so far in the stage (Docker passes them all to RUN's environment);
    /// for other steps the ARGs its expansion looked up (unless shadowed by
    /// ENV). ARGs declared later, or declared but unused here, are absent.
    pub args_seen: BTreeMap<String, String>,
    /// The environment in force when the step runs: base image ENV, then the
    /// stage's ENV lines so far (not this step's own effect), in order.
    pub env: Vec<(String, String)>,
    /// For RUN: proxy build args given but not declared (not in the cache key).
    pub proxy_env: Vec<(String, String)>,
    /// For `COPY --from`: the stage or image it copies from.
    pub copy_from: Option<Base>,
}

/// A stage's expanded steps and the environment it ends with (the base env
/// of stages built `FROM` it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSteps {
    /// One step per instruction after FROM.
    pub steps: Vec<Step>,
    /// ENV at the end of the stage.
    pub env: Vec<(String, String)>,
}

/// Split a parsed Dockerfile into stages, applying `build_args`.
pub fn plan(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
) -> Result<Plan, DockerfileError> {
    if df.instructions.is_empty() {
        return Err(DockerfileError::Empty);
    }
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let first_from = df
        .instructions
        .iter()
        .position(|i| matches!(i.instruction, Instruction::From { .. }))
        .unwrap_or(df.instructions.len());
    let mut meta_args: Vec<(String, Option<String>)> = Vec::new();
    for il in &df.instructions[..first_from] {
        let Instruction::Arg(pairs) = &il.instruction else {
            return Err(DockerfileError::BeforeFrom {
                line: il.line,
                instruction: il.instruction.keyword().to_string(),
            });
        };
        // Meta ARGs see the ones declared before them, even on the same line.
        for (name, default) in pairs {
            let default = match default {
                Some(d) => Some(
                    Expander::new(df.escape, &|n| meta_lookup(&meta_args, n))
                        .word(d)
                        .map_err(|source| DockerfileError::Expand {
                            line: il.line,
                            source,
                        })?,
                ),
                None => None,
            };
            let value = arg_value(name, default, build_args, &meta_args);
            declared.insert(name.clone());
            meta_args.retain(|(n, _)| n != name);
            meta_args.push((name.clone(), value));
        }
    }
    if first_from == df.instructions.len() {
        return Err(DockerfileError::NoFrom);
    }

    // Group the rest into stages.
    let mut groups: Vec<(&InstructionLine, Vec<InstructionLine>)> = Vec::new();
    for il in &df.instructions[first_from..] {
        match (&il.instruction, groups.last_mut()) {
            (Instruction::From { .. }, _) | (_, None) => groups.push((il, Vec::new())),
            (_, Some((_, body))) => body.push(il.clone()),
        }
    }
    let names = stage_names(&groups)?;

    let mut stages: Vec<Stage> = Vec::with_capacity(groups.len());
    for (index, (from_line, instructions)) in groups.into_iter().enumerate() {
        let from = from_line.expand(df.escape, &|n| meta_lookup(&meta_args, n))?;
        let Instruction::From {
            image, platform, ..
        } = &from.instruction
        else {
            return Err(DockerfileError::NoFrom);
        };
        let platform = platform.clone().filter(|p| !p.is_empty());
        if let Some(p) = &platform {
            if p != SUPPORTED_PLATFORM {
                return Err(DockerfileError::Platform {
                    line: from.line,
                    platform: p.clone(),
                });
            }
        }
        let base = match find_name(&names, image) {
            Some(j) if j < index => Base::Stage(j),
            Some(_) => {
                return Err(DockerfileError::ForwardReference {
                    line: from.line,
                    reference: image.clone(),
                })
            }
            None => Base::Image(image.clone()),
        };
        let mut stage = Stage {
            index,
            name: names[index].clone(),
            from: from.clone(),
            base,
            platform,
            depends_on: BTreeSet::new(),
            instructions,
            copy_from: BTreeMap::new(),
        };
        resolve_copy_from(
            &mut stage,
            &names,
            df.escape,
            build_args,
            &meta_args,
            &mut declared,
        )?;
        if let Base::Stage(j) = stage.base {
            stage.depends_on.insert(j);
        }
        stages.push(stage);
    }

    let unused_build_args = build_args
        .keys()
        .filter(|k| !declared.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .cloned()
        .collect();
    Ok(Plan {
        escape: df.escape,
        meta_args,
        stages,
        unused_build_args,
        build_args: build_args.clone(),
    })
}

/// Stage names (validated, no duplicates), by stage index.
fn stage_names(
    groups: &[(&InstructionLine, Vec<InstructionLine>)],
) -> Result<Vec<Option<String>>, DockerfileError> {
    let mut names: Vec<Option<String>> = Vec::with_capacity(groups.len());
    for (from, _) in groups {
        let Instruction::From { alias, .. } = &from.instruction else {
            return Err(DockerfileError::NoFrom);
        };
        if let Some(name) = alias {
            let lower = name.to_ascii_lowercase();
            let valid = lower.starts_with(|c: char| c.is_ascii_lowercase())
                && lower
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !valid {
                return Err(DockerfileError::BadStageName {
                    line: from.line,
                    name: name.clone(),
                });
            }
            if find_name(&names, name).is_some() {
                return Err(DockerfileError::DuplicateStage {
                    line: from.line,
                    name: name.clone(),
                });
            }
        }
        names.push(alias.clone());
    }
    Ok(names)
}

fn find_name(names: &[Option<String>], wanted: &str) -> Option<usize> {
    names
        .iter()
        .position(|n| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(wanted)))
}

/// Walk the stage's ARG/ENV scope (without base image ENV) to expand and
/// resolve each `COPY --from`, and note every declared ARG name.
fn resolve_copy_from(
    stage: &mut Stage,
    names: &[Option<String>],
    escape: char,
    build_args: &BTreeMap<String, String>,
    meta: &[(String, Option<String>)],
    declared: &mut BTreeSet<String>,
) -> Result<(), DockerfileError> {
    let mut scope = Scope::new(&[]);
    for (at, il) in stage.instructions.iter().enumerate() {
        match &il.instruction {
            Instruction::Copy {
                from: Some(from), ..
            } => {
                let l = |n: &str| scope.lookup(n);
                let from = Expander::new(escape, &l).word(from).map_err(|source| {
                    DockerfileError::Expand {
                        line: il.line,
                        source,
                    }
                })?;
                let base = resolve_ref(&from, stage.index, names, il.line)?;
                if let Base::Stage(j) = base {
                    stage.depends_on.insert(j);
                }
                stage.copy_from.insert(at, base);
            }
            // Expansion failures here may depend on base image ENV; they are
            // reported by `Plan::steps`, so treat the value as unset for now.
            Instruction::Arg(_) | Instruction::Env(_) => {
                let l = |n: &str| scope.lookup(n);
                if let Ok(done) = il.expand(escape, &l) {
                    scope.apply(&done.instruction, build_args, meta);
                }
                if let Instruction::Arg(pairs) = &il.instruction {
                    declared.extend(pairs.iter().map(|(n, _)| n.clone()));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a `--from` value names, seen from stage `current`.
fn resolve_ref(
    reference: &str,
    current: usize,
    names: &[Option<String>],
    line: usize,
) -> Result<Base, DockerfileError> {
    let forward = || DockerfileError::ForwardReference {
        line,
        reference: reference.to_string(),
    };
    if let Some(j) = find_name(names, reference) {
        return if j < current {
            Ok(Base::Stage(j))
        } else {
            Err(forward())
        };
    }
    if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(j) = reference.parse::<usize>() {
            if j < current {
                return Ok(Base::Stage(j));
            }
            if j < names.len() {
                return Err(forward());
            }
        }
    }
    Ok(Base::Image(reference.to_string()))
}

impl Plan {
    /// The stage named `name` (case-insensitive).
    pub fn stage_by_name(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| {
            s.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    }

    /// Index of the `--target` stage: the named one, or the last by default.
    pub fn target(&self, name: Option<&str>) -> Result<usize, DockerfileError> {
        match name {
            None => Ok(self.stages.len().saturating_sub(1)),
            Some(n) => self
                .stage_by_name(n)
                .map(|s| s.index)
                .ok_or_else(|| DockerfileError::TargetNotFound(n.to_string())),
        }
    }

    /// The stages `target` needs, itself included, dependencies first.
    pub fn build_order(&self, target: usize) -> Result<Vec<usize>, DockerfileError> {
        if target >= self.stages.len() {
            return Err(DockerfileError::NoSuchStage(target));
        }
        let mut needed = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if needed.insert(i) {
                if let Some(s) = self.stages.get(i) {
                    todo.extend(s.depends_on.iter().copied());
                }
            }
        }
        // Dependencies always have lower indexes, so index order is a
        // valid build order.
        Ok(needed.into_iter().collect())
    }

    /// [`Plan::build_order`] grouped in waves: every stage of a wave depends
    /// only on stages of earlier waves, so a wave's stages can run at once.
    pub fn build_waves(&self, target: usize) -> Result<Vec<Vec<usize>>, DockerfileError> {
        let order = self.build_order(target)?;
        let mut level: BTreeMap<usize, usize> = BTreeMap::new();
        let mut waves: Vec<Vec<usize>> = Vec::new();
        for i in order {
            let deps = self.stages.get(i).map(|s| &s.depends_on);
            let l = deps
                .into_iter()
                .flatten()
                .filter_map(|d| level.get(d))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            level.insert(i, l);
            if waves.len() <= l {
                waves.resize_with(l + 1, Vec::new);
            }
            if let Some(w) = waves.get_mut(l) {
                w.push(i);
            }
        }
        Ok(waves)
    }

    /// Expand stage `stage`'s instructions in order. `base_env` is the ENV
    /// of what the stage starts from: the image config's, or the
    /// [`StageSteps::env`] of the base stage.
    pub fn steps(
        &self,
        stage: usize,
        base_env: &[(String, String)],
    ) -> Result<StageSteps, DockerfileError> {
        let st = self
            .stages
            .get(stage)
            .ok_or(DockerfileError::NoSuchStage(stage))?;
        let mut scope = Scope::new(base_env);
        let mut steps = Vec::with_capacity(st.instructions.len());
        for (at, il) in st.instructions.iter().enumerate() {
            let (expanded, used) = {
                let l = |n: &str| scope.lookup(n);
                let mut ex = Expander::new(self.escape, &l);
                let expanded = il.expand_with(&mut ex)?;
                (expanded, ex.take_used())
            };
            let is_run = matches!(expanded.instruction, Instruction::Run { .. });
            let args_seen = if is_run {
                scope.set_args()
            } else {
                scope
                    .set_args()
                    .into_iter()
                    .filter(|(k, _)| used.contains(k) && !scope.env.iter().any(|(e, _)| e == k))
                    .collect()
            };
            let proxy_env = if is_run {
                PROXY_ARGS
                    .iter()
                    .filter(|p| !scope.args.contains_key(**p))
                    .filter_map(|p| Some((p.to_string(), self.build_args.get(*p)?.clone())))
                    .collect()
            } else {
                Vec::new()
            };
            let env = scope.env.clone();
            scope.apply(&expanded.instruction, &self.build_args, &self.meta_args);
            steps.push(Step {
                line: expanded.line,
                original: expanded.original,
                instruction: expanded.instruction,
                args_seen,
                env,
                proxy_env,
                copy_from: st.copy_from.get(&at).cloned(),
            });
        }
        Ok(StageSteps {
            steps,
            env: scope.env,
        })
    }
}

#[cfg(test)]
#[path = "stages_tests.rs"]
mod tests;
