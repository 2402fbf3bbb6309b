//! Dockerfile front end: parse a Dockerfile into typed, line-numbered
//! instructions the way Docker's BuildKit frontend reads it, expand variables
//! with Docker's rules, and split the file into build stages.
//!
//! - [`parse`] / [`parse_bytes`]: text → [`Dockerfile`] (no expansion yet).
//! - [`plan`]: stages, meta args, build args, dependencies ([`Plan`]).
//! - [`Plan::target`], [`Plan::build_order`], [`Plan::build_waves`]: what to build.
//! - [`Plan::steps`]: a stage's instructions expanded in scope, with the
//!   ARG/ENV values each step sees (for cache keys).
//!
//! Input is treated as hostile: size, line count and `${…}` nesting are
//! capped, and every error names the Dockerfile line.

mod args;
mod error;
mod expand;
mod instruction;
mod parse;
mod scope;
mod stages;

pub use error::DockerfileError;
pub use expand::{expand_word, expand_words, ExpandError, Expander, Lookup, MAX_EXPANSION_DEPTH};
pub use instruction::{
    parse, parse_bytes, parse_instruction, Command, Dockerfile, Instruction, InstructionLine,
};
pub use parse::{
    logical_lines, logical_lines_bytes, Flag, Lines, LogicalLine, MAX_DOCKERFILE_BYTES,
    MAX_LOGICAL_LINES,
};
pub use stages::{
    plan, Base, Plan, Stage, StageSteps, Step, PLATFORM_ARGS, PROXY_ARGS, SUPPORTED_PLATFORM,
};

#[cfg(test)]
mod hostile_tests;
