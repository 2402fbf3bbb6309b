//! Static guest programs (`tests/guest/NAME.c`) for tasks to run, compiled with
//! `cc -static` (build-essential; scripts/setup.sh installs it) once per test binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The static binary of `tests/guest/{name}.c`, compiled on first use.
pub fn guest_program(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("guest/{name}.c"));
    let out = crate::paths::tmp_dir().join(format!("guest-{name}-{}", std::process::id()));
    let st = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run cc (install build-essential)");
    assert!(st.success(), "cc failed on {}", src.display());
    built.insert(name.to_owned(), out.clone());
    out
}
