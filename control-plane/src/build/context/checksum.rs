//! The cache key of what one `COPY`/`ADD` step reads from the context.
//!
//! Each source (after variable expansion) is cleaned like Go's
//! `filepath.Clean`, a leading `/` is dropped (sources are rooted at the
//! context), and it must not climb out with `..`. A source without wildcard
//! characters (`*`, `?`, `[`, unless escaped with `\`) names one path
//! literally; otherwise each of its components is a Go `filepath.Match`
//! pattern for the component at the same depth. A selected directory brings
//! everything below it. Symbolic links are never followed: a source that
//! would pass through one is an error.
//!
//! The checksum is SHA-256 over a versioned, length-prefixed encoding of the
//! selected entries sorted by path: path, type, permission bits (left out
//! with `--chmod`), size, content hash and link target, and a device node's
//! numbers. Times and owners are not part of it.

use sha2::{Digest, Sha256};

use super::clean::clean;
use super::dockerignore::IgnoreMatcher;
use super::glob::{compile_component, Glob};
use super::manifest::{Entry, EntryKind, Manifest};

/// Why the sources of a step could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("a COPY/ADD source is empty")]
    EmptySource,
    #[error("{path:?} not found in the build context{}", note(.excluded_by))]
    NotFound {
        /// The source as written.
        path: String,
        /// `excluded by .dockerignore line 7` when the ignore rules hid it.
        excluded_by: Option<String>,
    },
    #[error("{path:?}: source path is outside the build context")]
    OutsideContext { path: String },
    #[error("{path:?}: path goes through symbolic link {link:?} -> {target:?}")]
    ThroughSymlink {
        path: String,
        link: String,
        target: String,
    },
    #[error("{path:?}: bad wildcard pattern: {reason}")]
    BadPattern { path: String, reason: String },
}

fn note(excluded_by: &Option<String>) -> String {
    match excluded_by {
        Some(why) => format!(" ({why})"),
        None => String::new(),
    }
}

/// Buildkit's test for wildcards: `*`, `?` or `[`, skipping escaped chars.
fn has_wildcards(path: &str) -> bool {
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// One component of a source.
enum Component<'a> {
    Literal(&'a str),
    Pattern(Glob),
}

impl Component<'_> {
    fn matches(&self, name: &str) -> bool {
        match self {
            Component::Literal(text) => *text == name,
            Component::Pattern(glob) => glob.matches(name),
        }
    }
}

/// The entries (not excluded) that `sources` select, sorted by path, each
/// once. Errors as described for [`checksum_sources`].
pub fn select_sources<'m, S: AsRef<str>>(
    manifest: &'m Manifest,
    sources: &[S],
    ignore: &IgnoreMatcher,
) -> Result<Vec<&'m Entry>, ChecksumError> {
    let mut selected = Vec::new();
    for source in sources {
        select_one(manifest, source.as_ref(), ignore, &mut selected)?;
    }
    selected.sort_by(|a: &&Entry, b: &&Entry| a.path.cmp(&b.path));
    selected.dedup_by(|a, b| a.path == b.path);
    Ok(selected)
}

fn select_one<'m>(
    manifest: &'m Manifest,
    raw: &str,
    ignore: &IgnoreMatcher,
    selected: &mut Vec<&'m Entry>,
) -> Result<(), ChecksumError> {
    if raw.is_empty() {
        return Err(ChecksumError::EmptySource);
    }
    let cleaned = clean(raw);
    let cleaned = cleaned.trim_start_matches('/');
    let cleaned = if cleaned.is_empty() { "." } else { cleaned };
    if cleaned == ".." || cleaned.starts_with("../") {
        return Err(ChecksumError::OutsideContext {
            path: raw.to_owned(),
        });
    }
    let wildcard = has_wildcards(cleaned);
    let mut components = Vec::new();
    if cleaned != "." {
        for part in cleaned.split('/') {
            components.push(if wildcard {
                Component::Pattern(compile_component(part).map_err(|e| {
                    ChecksumError::BadPattern {
                        path: raw.to_owned(),
                        reason: e.to_string(),
                    }
                })?)
            } else {
                Component::Literal(part)
            });
        }
    }
    let mut found = false;
    let mut first_hidden: Option<&str> = None;
    for entry in &manifest.entries {
        let mut parts = entry.path.split('/');
        let mut depth = 0;
        let mut matched = true;
        for component in &components {
            match parts.next() {
                Some(part) if component.matches(part) => depth += 1,
                Some(_) => {
                    matched = false;
                    break;
                }
                None => break,
            }
        }
        if !matched {
            continue;
        }
        if depth < components.len() {
            // The entry is a proper prefix of the source: a link there
            // would have to be followed.
            if entry.kind == EntryKind::Symlink {
                return Err(ChecksumError::ThroughSymlink {
                    path: raw.to_owned(),
                    link: entry.path.clone(),
                    target: entry.link_target.clone().unwrap_or_default(),
                });
            }
            continue;
        }
        if entry.excluded {
            first_hidden.get_or_insert(entry.path.as_str());
        } else {
            found = true;
            selected.push(entry);
        }
    }
    if found || cleaned == "." {
        return Ok(());
    }
    Err(ChecksumError::NotFound {
        path: raw.to_owned(),
        excluded_by: why_missing(cleaned, wildcard, first_hidden, ignore),
    })
}

/// Names the ignore line that hid a missing source, if one did.
fn why_missing(
    cleaned: &str,
    wildcard: bool,
    first_hidden: Option<&str>,
    ignore: &IgnoreMatcher,
) -> Option<String> {
    let probe = if let Some(hidden) = first_hidden {
        hidden.to_owned()
    } else if !wildcard {
        cleaned.to_owned()
    } else {
        // The literal directories in front of the first wildcard.
        let literal: Vec<&str> = cleaned
            .split('/')
            .take_while(|part| !has_wildcards(part))
            .collect();
        if literal.is_empty() {
            return None;
        }
        literal.join("/")
    };
    ignore.explain(&ignore.decide(&probe))
}

/// The cache-key checksum (lowercase hex SHA-256) of what a step with these
/// `sources` reads from the context described by `manifest`.
///
/// `chmod_override` is true when the step has `--chmod`: permission bits are
/// then left out. Errors: a source that is empty, leaves the context, passes
/// through a symbolic link, is a malformed pattern, or selects nothing (the
/// message names the `.dockerignore` line when the ignore rules hid it).
pub fn checksum_sources<S: AsRef<str>>(
    manifest: &Manifest,
    sources: &[S],
    ignore: &IgnoreMatcher,
    chmod_override: bool,
) -> Result<String, ChecksumError> {
    let selected = select_sources(manifest, sources, ignore)?;
    let mut hasher = Sha256::new();
    hasher.update(b"skiff-context-checksum/v1\n");
    hasher.update((selected.len() as u64).to_be_bytes());
    for entry in selected {
        field(&mut hasher, Some(entry.path.as_bytes()));
        field(&mut hasher, Some(entry.kind.as_str().as_bytes()));
        let mode = (!chmod_override).then(|| entry.mode.to_be_bytes());
        field(&mut hasher, mode.as_ref().map(|m| &m[..]));
        let size = entry.size.map(u64::to_be_bytes);
        field(&mut hasher, size.as_ref().map(|s| &s[..]));
        field(&mut hasher, entry.sha256.as_deref().map(str::as_bytes));
        field(&mut hasher, entry.link_target.as_deref().map(str::as_bytes));
        // Only device nodes add a field, so every other entry keeps the key it had.
        if let Some(d) = entry.device {
            let numbers = [d.major.to_be_bytes(), d.minor.to_be_bytes()].concat();
            field(&mut hasher, Some(&numbers));
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Feeds an optional field: a presence byte, then length and bytes.
fn field(hasher: &mut Sha256, value: Option<&[u8]>) {
    match value {
        None => hasher.update([0u8]),
        Some(bytes) => {
            hasher.update([1u8]);
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        }
    }
}

#[cfg(test)]
#[path = "checksum_tests.rs"]
mod tests;
