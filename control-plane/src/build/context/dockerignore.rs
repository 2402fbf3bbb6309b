//! `.dockerignore`: which files of the build context are left out.
//!
//! The rules are Docker's (the CLI's `ignorefile.ReadAll` followed by moby's
//! `patternmatcher`):
//!
//! * one pattern per line; a UTF-8 byte-order mark on line 1 is dropped; a
//!   line whose first byte is `#` is a comment (checked *before* trimming,
//!   so `  # x` is a pattern); whitespace around a line is trimmed and empty
//!   lines are skipped;
//! * a leading `!` makes the line an exception (re-includes), the rest is
//!   trimmed again; a lone `!` is an error;
//! * patterns are cleaned like Go's `filepath.Clean` and a leading `/` is
//!   dropped: patterns are rooted at the context directory;
//! * a pattern that cleans to `.` never matches anything (the context root is
//!   never matched against the patterns), so `.` and `!.` have no effect;
//! * a path is excluded when it, or any directory above it, matches; the last
//!   matching line decides, and [`Decision::line`] says which one.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::clean::clean;
use super::glob::{compile_path, validate, PathPattern};

/// Largest `.dockerignore` read, in bytes.
pub const MAX_IGNORE_FILE_BYTES: u64 = 1 << 20;
/// Most patterns accepted from one `.dockerignore`.
pub const MAX_IGNORE_PATTERNS: usize = 10_000;

/// Why the ignore rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("{file} is larger than {MAX_IGNORE_FILE_BYTES} bytes")]
    TooLarge { file: String },
    #[error("{file} has more than {MAX_IGNORE_PATTERNS} patterns")]
    TooManyPatterns { file: String },
    #[error("{file} line {line}: {reason}")]
    BadPattern {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file} line {line} is not valid UTF-8")]
    NotUtf8 { file: String, line: usize },
    #[error("{} is not a regular file", path.display())]
    NotRegularFile { path: PathBuf },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which kind of ignore file applies to a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreFileKind {
    /// `<Dockerfile>.dockerignore` beside the Dockerfile (takes precedence).
    DockerfileSpecific,
    /// `.dockerignore` at the root of the context.
    Context,
}

/// The ignore file chosen for a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreFile {
    /// Where the file is on disk.
    pub path: PathBuf,
    /// Whether it is the Dockerfile's own or the context's.
    pub kind: IgnoreFileKind,
    /// How messages name it: its path inside the context (`.dockerignore`,
    /// `build/app.Dockerfile.dockerignore`), or its file name if outside.
    pub display_name: String,
    /// Its path relative to the context when it lies inside it (so the walk
    /// can always include it).
    pub context_relative: Option<String>,
}

/// Picks the ignore file for a build of `context_dir` with `dockerfile`
/// (relative paths are taken relative to `context_dir`):
/// `<dockerfile>.dockerignore` next to the Dockerfile if it exists, else
/// `<context_dir>/.dockerignore` if it exists, else `None`.
pub fn select_ignore_file(
    context_dir: &Path,
    dockerfile: &Path,
) -> Result<Option<IgnoreFile>, IgnoreError> {
    let dockerfile = context_dir.join(dockerfile);
    if let (Some(parent), Some(name)) = (dockerfile.parent(), dockerfile.file_name()) {
        let mut specific_name = name.to_os_string();
        specific_name.push(".dockerignore");
        let specific = parent.join(specific_name);
        if exists(&specific)? {
            return Ok(Some(describe_file(
                context_dir,
                specific,
                IgnoreFileKind::DockerfileSpecific,
            )));
        }
    }
    let general = context_dir.join(".dockerignore");
    if exists(&general)? {
        return Ok(Some(describe_file(
            context_dir,
            general,
            IgnoreFileKind::Context,
        )));
    }
    Ok(None)
}

fn exists(path: &Path) -> Result<bool, IgnoreError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(IgnoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn describe_file(context_dir: &Path, path: PathBuf, kind: IgnoreFileKind) -> IgnoreFile {
    let context_relative = path
        .strip_prefix(context_dir)
        .ok()
        .and_then(|rel| rel.to_str())
        .map(clean)
        .filter(|rel| rel != "." && rel != ".." && !rel.starts_with("../"));
    let display_name = context_relative.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".dockerignore".to_owned())
    });
    IgnoreFile {
        path,
        kind,
        display_name,
        context_relative,
    }
}

/// The outcome of matching one path against the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// True when the path is left out of the context.
    pub excluded: bool,
    /// The 1-based line of the ignore file that decided, if any matched.
    pub line: Option<usize>,
    /// Index of the deciding pattern, for matching children incrementally.
    index: Option<usize>,
}

impl Decision {
    /// The decision for a path no pattern matches (the context root).
    pub const UNMATCHED: Decision = Decision {
        excluded: false,
        line: None,
        index: None,
    };
}

/// One parsed line.
#[derive(Debug, Clone)]
struct Pattern {
    /// 1-based line number in the file.
    line: usize,
    /// `!` line: re-includes what it matches.
    exception: bool,
    /// The compiled, cleaned pattern.
    compiled: PathPattern,
}

/// Parsed ignore rules, ready to match context-relative paths.
#[derive(Debug, Clone)]
pub struct IgnoreMatcher {
    /// How messages name the file (e.g. `.dockerignore`).
    name: String,
    /// The patterns in file order.
    patterns: Vec<Pattern>,
    /// True when at least one `!` line exists.
    has_exceptions: bool,
}

impl Default for IgnoreMatcher {
    fn default() -> Self {
        Self::empty()
    }
}

impl IgnoreMatcher {
    /// Rules that exclude nothing (no ignore file).
    pub fn empty() -> Self {
        IgnoreMatcher {
            name: ".dockerignore".to_owned(),
            patterns: Vec::new(),
            has_exceptions: false,
        }
    }

    /// Picks the ignore file for `context_dir` and `dockerfile` (see
    /// [`select_ignore_file`]) and loads it; empty rules when there is none.
    pub fn load(
        context_dir: &Path,
        dockerfile: &Path,
    ) -> Result<(Self, Option<IgnoreFile>), IgnoreError> {
        match select_ignore_file(context_dir, dockerfile)? {
            Some(file) => Ok((Self::read(&file)?, Some(file))),
            None => Ok((Self::empty(), None)),
        }
    }

    /// Reads and parses `file`. Symbolic links are not followed, and only a
    /// regular file of at most [`MAX_IGNORE_FILE_BYTES`] is accepted.
    pub fn read(file: &IgnoreFile) -> Result<Self, IgnoreError> {
        let io_err = |source| IgnoreError::Io {
            path: file.path.clone(),
            source,
        };
        let handle = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&file.path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    IgnoreError::NotRegularFile {
                        path: file.path.clone(),
                    }
                } else {
                    io_err(e)
                }
            })?;
        if !handle.metadata().map_err(io_err)?.is_file() {
            return Err(IgnoreError::NotRegularFile {
                path: file.path.clone(),
            });
        }
        let mut bytes = Vec::new();
        handle
            .take(MAX_IGNORE_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        Self::parse(&file.display_name, &bytes)
    }

    /// Parses the contents of an ignore file; `name` is how messages call it.
    pub fn parse(name: &str, contents: &[u8]) -> Result<Self, IgnoreError> {
        let file = || name.to_owned();
        if contents.len() as u64 > MAX_IGNORE_FILE_BYTES {
            return Err(IgnoreError::TooLarge { file: file() });
        }
        let mut patterns = Vec::new();
        for (index, raw) in contents.split(|b| *b == b'\n').enumerate() {
            let line = index + 1;
            let mut raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line == 1 {
                raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
            }
            if raw.first() == Some(&b'#') {
                continue;
            }
            let text = std::str::from_utf8(raw)
                .map_err(|_| IgnoreError::NotUtf8 { file: file(), line })?;
            let Some(pattern) = parse_line(text).map_err(|reason| IgnoreError::BadPattern {
                file: file(),
                line,
                reason,
            })?
            else {
                continue;
            };
            if patterns.len() >= MAX_IGNORE_PATTERNS {
                return Err(IgnoreError::TooManyPatterns { file: file() });
            }
            let (exception, compiled) = pattern;
            patterns.push(Pattern {
                line,
                exception,
                compiled,
            });
        }
        let has_exceptions = patterns.iter().any(|p| p.exception);
        Ok(IgnoreMatcher {
            name: name.to_owned(),
            patterns,
            has_exceptions,
        })
    }

    /// How messages name the ignore file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of patterns (comments and blank lines not counted).
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Matches a context-relative path (`/`-separated; cleaned first), taking
    /// its parent directories into account.
    pub fn decide(&self, path: &str) -> Decision {
        let path = clean(path);
        let path = path.trim_start_matches('/');
        if path.is_empty() || path == "." {
            return Decision::UNMATCHED;
        }
        let mut decision = Decision::UNMATCHED;
        for (i, b) in path.bytes().enumerate() {
            if b == b'/' {
                decision = self.decide_below(&path[..i], decision);
            }
        }
        self.decide_below(path, decision)
    }

    /// Matches `path` given the decision for its parent directory (use
    /// [`Decision::UNMATCHED`] for top-level entries). `path` must already be
    /// clean and relative. Cheaper than [`decide`](Self::decide) during a walk.
    pub fn decide_below(&self, path: &str, parent: Decision) -> Decision {
        let floor = parent.index.map_or(0, |i| i + 1);
        for index in (floor..self.patterns.len()).rev() {
            let pattern = &self.patterns[index];
            if pattern.compiled.matches(path) {
                return Decision {
                    excluded: !pattern.exception,
                    line: Some(pattern.line),
                    index: Some(index),
                };
            }
        }
        parent
    }

    /// True when something strictly below the excluded directory `dir`
    /// (whose decision is `decision`) could be re-included by a later `!`
    /// line, so the walk must still look inside it. May answer yes
    /// needlessly, never no wrongly.
    pub fn may_reinclude_below(&self, dir: &str, decision: Decision) -> bool {
        if !self.has_exceptions {
            return false;
        }
        let floor = decision.index.map_or(0, |i| i + 1);
        self.patterns
            .get(floor..)
            .unwrap_or_default()
            .iter()
            .any(|p| p.exception && p.compiled.may_match_below(dir))
    }

    /// `excluded by .dockerignore line 7` for an exclusion, else `None`.
    pub fn explain(&self, decision: &Decision) -> Option<String> {
        match (decision.excluded, decision.line) {
            (true, Some(line)) => Some(format!("excluded by {} line {line}", self.name)),
            _ => None,
        }
    }
}

/// Applies `ReadAll` then `NewPatternMatcher` to one line: `Ok(None)` for a
/// blank line, else whether it is an exception and the compiled pattern.
fn parse_line(text: &str) -> Result<Option<(bool, PathPattern)>, String> {
    // Stage 1: the CLI's ReadAll.
    let mut pattern = text.trim();
    if pattern.is_empty() {
        return Ok(None);
    }
    let invert = pattern.starts_with('!');
    if invert {
        pattern = pattern[1..].trim();
    }
    let mut cleaned = String::new();
    if !pattern.is_empty() {
        cleaned = clean(pattern);
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
    }
    if invert {
        cleaned.insert(0, '!');
    }
    // Stage 2: moby's NewPatternMatcher cleans again and splits off `!`.
    let cleaned = clean(cleaned.trim());
    let (exception, body) = match cleaned.strip_prefix('!') {
        Some("") => return Err("illegal exclusion pattern: \"!\"".to_owned()),
        Some(body) => (true, body),
        None => (false, cleaned.as_str()),
    };
    validate(body).map_err(|e| format!("bad pattern {body:?}: {e}"))?;
    let compiled = compile_path(body).map_err(|e| format!("bad pattern {body:?}: {e}"))?;
    Ok(Some((exception, compiled)))
}

#[cfg(test)]
#[path = "dockerignore_tests.rs"]
mod tests;
