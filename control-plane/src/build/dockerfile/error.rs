//! Why a Dockerfile could not be parsed, expanded or planned.

use super::expand::ExpandError;

/// Why a Dockerfile was rejected. Every variant tied to a place in the file
/// carries the 1-based `line` where the offending logical line starts, and its
/// message starts with `Dockerfile:<line>:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    /// The file is bigger than [`super::MAX_DOCKERFILE_BYTES`].
    #[error("Dockerfile is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The file has more logical lines than [`super::MAX_LOGICAL_LINES`].
    #[error("Dockerfile:{line}: more than {limit} instructions")]
    TooManyLines { line: usize, limit: usize },
    /// The bytes are not UTF-8; `line` holds the first bad byte.
    #[error("Dockerfile:{line}: invalid UTF-8")]
    InvalidUtf8 { line: usize },
    /// The file contains a NUL byte.
    #[error("Dockerfile:{line}: NUL byte in Dockerfile")]
    NulByte { line: usize },
    /// The file holds no instruction at all.
    #[error("the Dockerfile has no instructions")]
    Empty,
    /// A bad parser directive (`# escape=x`, a repeated directive).
    #[error("Dockerfile:{line}: {message}")]
    Directive { line: usize, message: String },
    /// An instruction keyword Docker does not know; `word` is as written.
    #[error("Dockerfile:{line}: unknown instruction \"{word}\"")]
    UnknownInstruction { line: usize, word: String },
    /// A Docker instruction Skiff does not implement (`ONBUILD`, `HEALTHCHECK`).
    #[error("Dockerfile:{line}: {instruction} is not supported")]
    Unsupported { line: usize, instruction: String },
    /// A heredoc (`RUN <<EOF`).
    #[error("Dockerfile:{line}: heredocs are not supported")]
    Heredoc { line: usize },
    /// Any flag on `RUN` (`--mount`, `--network`, `--security`); `flag` has no dashes.
    #[error("Dockerfile:{line}: RUN --{flag} is not supported")]
    RunFlag { line: usize, flag: String },
    /// A flag the instruction does not take; `flag` has no dashes.
    #[error("Dockerfile:{line}: unknown flag --{flag} for {instruction}")]
    UnknownFlag {
        line: usize,
        flag: String,
        instruction: String,
    },
    /// `ADD` with a URL or git source.
    #[error("Dockerfile:{line}: ADD of URLs is not supported")]
    AddUrl { line: usize },
    /// Missing or malformed arguments; `message` says what is wrong.
    #[error("Dockerfile:{line}: {message}")]
    Invalid { line: usize, message: String },
    /// Variable expansion failed on that line.
    #[error("Dockerfile:{line}: {source}")]
    Expand {
        line: usize,
        #[source]
        source: ExpandError,
    },
    /// `FROM --platform=` names a platform other than `linux/amd64`.
    #[error("Dockerfile:{line}: platform \"{platform}\" is not supported, only linux/amd64")]
    Platform { line: usize, platform: String },
    /// An instruction other than `ARG` before the first `FROM`.
    #[error("Dockerfile:{line}: {instruction} before the first FROM (only ARG may come first)")]
    BeforeFrom { line: usize, instruction: String },
    /// The Dockerfile has instructions but no `FROM`.
    #[error("the Dockerfile has no FROM instruction")]
    NoFrom,
    /// Two stages share a name (compared case-insensitively).
    #[error("Dockerfile:{line}: duplicate stage name \"{name}\"")]
    DuplicateStage { line: usize, name: String },
    /// A stage name that does not match `[a-z][a-z0-9._-]*` (case-insensitively).
    #[error(
        "Dockerfile:{line}: invalid name for build stage: \"{name}\", name can't start with a number or contain symbols"
    )]
    BadStageName { line: usize, name: String },
    /// `FROM x` or `COPY --from=x` names the current stage or a later one.
    #[error("Dockerfile:{line}: \"{reference}\" refers to this stage or a later one")]
    ForwardReference { line: usize, reference: String },
    /// `--target` names no stage.
    #[error("target stage \"{0}\" could not be found")]
    TargetNotFound(String),
    /// A stage index out of range was passed to the API.
    #[error("there is no stage {0}")]
    NoSuchStage(usize),
}

impl DockerfileError {
    /// The 1-based line the error is about, when it is about one.
    pub fn line(&self) -> Option<usize> {
        use DockerfileError as E;
        match self {
            E::TooManyLines { line, .. }
            | E::InvalidUtf8 { line }
            | E::NulByte { line }
            | E::Directive { line, .. }
            | E::UnknownInstruction { line, .. }
            | E::Unsupported { line, .. }
            | E::Heredoc { line }
            | E::RunFlag { line, .. }
            | E::UnknownFlag { line, .. }
            | E::AddUrl { line }
            | E::Invalid { line, .. }
            | E::Expand { line, .. }
            | E::Platform { line, .. }
            | E::BeforeFrom { line, .. }
            | E::DuplicateStage { line, .. }
            | E::BadStageName { line, .. }
            | E::ForwardReference { line, .. } => Some(*line),
            E::TooLarge { .. }
            | E::Empty
            | E::NoFrom
            | E::TargetNotFound(_)
            | E::NoSuchStage(_) => None,
        }
    }

    pub(super) fn invalid(line: usize, message: impl Into<String>) -> Self {
        DockerfileError::Invalid {
            line,
            message: message.into(),
        }
    }
}
