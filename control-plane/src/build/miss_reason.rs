//! Why a step missed the cache, in words (`COPY src/: src/main.rs changed`): each step's
//! inputs are remembered under its parent's key and its text as written, and a step whose
//! parent was cached but which itself misses is compared with what the last build of that
//! step saw. Records live in `<state>/build-cache/inputs/`, one small JSON file each,
//! written atomically and read bounded; a missing or damaged one just gives no detail.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::cache_key::CacheKey;

/// Context files listed one by one; a step reading more keeps only their checksum.
const MAX_LISTED_FILES: usize = 10_000;
/// Largest inputs record read back.
const MAX_RECORD_BYTES: u64 = 4 << 20;
/// Files named in one reason.
const NAMED_FILES: usize = 3;

/// What one step saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenInputs {
    /// The instruction after expansion (canonical JSON).
    pub instruction: String,
    pub args: BTreeMap<String, String>,
    pub env: Vec<(String, String)>,
    /// Context files read, path → "kind mode size sha256 link" (None: not a COPY/ADD, or
    /// too many to list).
    pub files: Option<BTreeMap<String, String>>,
    /// The checksum of the files (or of the stage copied from).
    pub checksum: Option<String>,
}

impl SeenInputs {
    /// Whether `files` may be listed for a step reading `n` files.
    pub fn listable(n: usize) -> bool {
        n <= MAX_LISTED_FILES
    }
}

/// The remembered inputs of the steps of past builds.
#[derive(Debug, Clone)]
pub struct InputsLog {
    dir: PathBuf,
}

impl InputsLog {
    pub fn new(state_dir: &Path) -> Self {
        InputsLog {
            dir: state_dir.join("build-cache").join("inputs"),
        }
    }

    fn path(&self, parent: &CacheKey, original: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(parent.to_string().as_bytes());
        h.update(b"\n");
        h.update(original.as_bytes());
        self.dir.join(format!("{}.json", hex::encode(h.finalize())))
    }

    /// What the last build of the step `original` on `parent` saw.
    pub fn get(&self, parent: &CacheKey, original: &str) -> Option<SeenInputs> {
        let f = fs::File::open(self.path(parent, original)).ok()?;
        let mut bytes = Vec::new();
        f.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 > MAX_RECORD_BYTES {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }

    /// Remembers what the step saw this time (best effort: only messages depend on it).
    pub fn put(&self, parent: &CacheKey, original: &str, seen: &SeenInputs) {
        let path = self.path(parent, original);
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            serde_json::to_writer(&mut tmp, seen)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!(error = %e, "cannot remember a step's inputs");
        }
    }

    /// Forgets everything (`skiff builder prune --all`).
    pub fn clear(&self) -> std::io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Why `now` misses where `before` was built: the first difference found, in words.
pub fn explain(keyword: &str, before: Option<&SeenInputs>, now: &SeenInputs) -> String {
    let Some(before) = before else {
        return "not in the build cache".into();
    };
    if let Some(reason) = changed_files(before, now) {
        return reason;
    }
    for (k, v) in &now.args {
        match before.args.get(k) {
            Some(old) if old == v => {}
            Some(_) => return format!("build argument {k} changed"),
            None => return format!("build argument {k} is new here"),
        }
    }
    if let Some(k) = before.args.keys().find(|k| !now.args.contains_key(*k)) {
        return format!("build argument {k} is no longer set");
    }
    if before.env != now.env {
        let old: BTreeMap<_, _> = before.env.iter().cloned().collect();
        let new: BTreeMap<_, _> = now.env.iter().cloned().collect();
        let changed = new
            .iter()
            .find(|(k, v)| old.get(*k) != Some(v))
            .map(|(k, _)| k)
            .or_else(|| old.keys().find(|k| !new.contains_key(*k)));
        return match changed {
            Some(k) => format!("environment variable {k} changed"),
            None => "the environment's order changed".into(),
        };
    }
    if before.instruction != now.instruction {
        return format!("the {keyword} instruction changed after variable expansion");
    }
    "not in the build cache (its record was pruned)".into()
}

/// `src/main.rs changed`, `src/new.rs added`, `old.txt removed` (a few, then a count).
fn changed_files(before: &SeenInputs, now: &SeenInputs) -> Option<String> {
    if before.checksum == now.checksum {
        return None;
    }
    let (Some(old), Some(new)) = (&before.files, &now.files) else {
        return Some("the files it reads changed".into());
    };
    let mut changes: Vec<String> = Vec::new();
    for (path, what) in new {
        match old.get(path) {
            Some(w) if w == what => {}
            Some(_) => changes.push(format!("{path} changed")),
            None => changes.push(format!("{path} added")),
        }
    }
    changes.extend(
        old.keys()
            .filter(|p| !new.contains_key(*p))
            .map(|p| format!("{p} removed")),
    );
    if changes.is_empty() {
        return Some("the stage it copies from was rebuilt".into());
    }
    let more = changes.len().saturating_sub(NAMED_FILES);
    changes.truncate(NAMED_FILES);
    let mut s = changes.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(files: &[(&str, &str)], args: &[(&str, &str)], env: &[(&str, &str)]) -> SeenInputs {
        let files: BTreeMap<String, String> = files
            .iter()
            .map(|(p, w)| (p.to_string(), w.to_string()))
            .collect();
        SeenInputs {
            instruction: "i".into(),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            checksum: Some(format!("{files:?}")),
            files: Some(files),
        }
    }

    #[test]
    fn reasons_name_the_first_difference() {
        let a = seen(
            &[("src/a.rs", "1"), ("src/b.rs", "2")],
            &[("V", "1")],
            &[("E", "x")],
        );
        assert_eq!(explain("COPY", None, &a), "not in the build cache");
        let b = seen(
            &[("src/a.rs", "9"), ("src/b.rs", "2")],
            &[("V", "1")],
            &[("E", "x")],
        );
        assert_eq!(explain("COPY", Some(&a), &b), "src/a.rs changed");
        let c = seen(
            &[("src/b.rs", "2"), ("src/c.rs", "3")],
            &[("V", "1")],
            &[("E", "x")],
        );
        assert_eq!(
            explain("COPY", Some(&a), &c),
            "src/c.rs added, src/a.rs removed"
        );
        let d = seen(
            &[("src/a.rs", "1"), ("src/b.rs", "2")],
            &[("V", "2")],
            &[("E", "x")],
        );
        assert_eq!(explain("RUN", Some(&a), &d), "build argument V changed");
        let e = seen(
            &[("src/a.rs", "1"), ("src/b.rs", "2")],
            &[("V", "1")],
            &[("E", "y")],
        );
        assert_eq!(
            explain("RUN", Some(&a), &e),
            "environment variable E changed"
        );
        let mut f = a.clone();
        f.instruction = "j".into();
        assert_eq!(
            explain("RUN", Some(&a), &f),
            "the RUN instruction changed after variable expansion"
        );
        let many: Vec<(String, String)> =
            (0..6).map(|i| (format!("f{i}"), "1".to_string())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let g = seen(&many, &[("V", "1")], &[("E", "x")]);
        assert_eq!(
            explain("COPY", Some(&a), &g),
            "f0 added, f1 added, f2 added and 5 more"
        );
    }

    #[test]
    fn records_round_trip_and_damage_is_no_detail() {
        let dir = tempfile::tempdir().unwrap();
        let log = InputsLog::new(dir.path());
        let parent = CacheKey::base(None);
        let s = seen(&[("a", "1")], &[], &[]);
        assert_eq!(log.get(&parent, "COPY a /"), None);
        log.put(&parent, "COPY a /", &s);
        assert_eq!(log.get(&parent, "COPY a /"), Some(s));
        assert_eq!(log.get(&parent, "COPY b /"), None);
        fs::write(log.path(&parent, "COPY a /"), b"{not json").unwrap();
        assert_eq!(log.get(&parent, "COPY a /"), None);
        log.clear().unwrap();
        log.clear().unwrap();
    }
}
