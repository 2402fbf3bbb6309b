//! Where Skiff keeps its state: `--state-dir`, else `SKIFF_STATE_DIR`, else a per-user
//! default like other daemons and tools: `/var/lib/skiff` for root,
//! `$XDG_STATE_HOME/skiff` or `~/.local/state/skiff` for everyone else.

use std::path::{Path, PathBuf};

/// The state dir to use, given the `--state-dir` flag (if any) and the environment.
pub fn resolve(flag: Option<&Path>) -> PathBuf {
    resolve_from(flag, |k| std::env::var_os(k), running_as_root())
}

fn running_as_root() -> bool {
    // The owner of /proc/self is our effective uid; read without unsafe code.
    std::os::unix::fs::MetadataExt::uid(&match std::fs::metadata("/proc/self") {
        Ok(m) => m,
        Err(_) => return false,
    }) == 0
}

fn resolve_from(
    flag: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    root: bool,
) -> PathBuf {
    let non_empty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(f) = flag {
        return f.to_path_buf();
    }
    if let Some(d) = non_empty("SKIFF_STATE_DIR") {
        return d;
    }
    if root {
        return PathBuf::from("/var/lib/skiff");
    }
    if let Some(x) = non_empty("XDG_STATE_HOME") {
        return x.join("skiff");
    }
    match non_empty("HOME") {
        Some(h) => h.join(".local/state/skiff"),
        None => std::env::temp_dir().join("skiff-state"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn flag_beats_environment_beats_defaults() {
        let all = [
            ("SKIFF_STATE_DIR", "/srv/skiff"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            resolve_from(Some(Path::new("/flag")), env(&all), false),
            Path::new("/flag")
        );
        assert_eq!(
            resolve_from(None, env(&all), false),
            Path::new("/srv/skiff")
        );
        assert_eq!(
            resolve_from(None, env(&all[1..]), true),
            Path::new("/var/lib/skiff")
        );
        assert_eq!(
            resolve_from(None, env(&all[1..]), false),
            Path::new("/x/skiff")
        );
        assert_eq!(
            resolve_from(None, env(&all[2..]), false),
            Path::new("/home/u/.local/state/skiff")
        );
        assert_eq!(
            resolve_from(None, env(&[("SKIFF_STATE_DIR", "")]), true),
            Path::new("/var/lib/skiff")
        );
    }
}
