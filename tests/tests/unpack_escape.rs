//! Crafted layers pulled from a real registry must never touch a host file: no symlink is
//! followed and nothing leaves the unpack root, whatever the layer's entries say (issue 13).
//! One registry for all cases, each case its own image; each case is pulled through the
//! library (`ImageStore::pull` + `rootfs`), and the first one also through `skiff image
//! pull`. Host files (a file and a folder) are checked for mode, owner, size, content and
//! mtime afterwards.

use skiff_tests as common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use common::layers::insecure_client;
use common::layers::Crafted;
use common::*;
use control_plane::images::registry::RegistryClient;
use control_plane::images::{ImageStore, Reference};
use serde_json::json;

/// A host file and folder the layers aim at.
struct Victims {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    len: u64,
    mtime: i64,
    content: Vec<String>,
}

fn seen(p: &Path) -> Seen {
    let m = fs::symlink_metadata(p).expect("victim exists");
    let content = if m.is_dir() {
        let mut names: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    } else {
        vec![fs::read_to_string(p).unwrap()]
    };
    Seen {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        len: if m.is_dir() { 0 } else { m.len() },
        mtime: m.mtime(),
        content,
    }
}

impl Victims {
    fn new() -> Result<Victims> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("victim");
        fs::write(&file, "host secret\n")?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640))?;
        let vdir = dir.path().join("victim-dir");
        fs::create_dir(&vdir)?;
        fs::write(vdir.join("kept"), "kept\n")?;
        fs::set_permissions(&vdir, fs::Permissions::from_mode(0o750))?;
        Ok(Victims {
            _dir: dir,
            file,
            dir: vdir,
        })
    }

    fn state(&self) -> (Seen, Seen) {
        (seen(&self.file), seen(&self.dir))
    }
}

fn f(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The crafted layers, by case name.
fn cases(v: &Victims) -> Vec<(&'static str, Vec<u8>)> {
    let (file, dir) = (f(&v.file), f(&v.dir));
    let rel_file = format!("../../../../../../../../../..{file}");
    vec![
        // The reported attack: a directory's mode is applied after the layer, by path, and
        // the path has become a symlink to a host file by then.
        (
            "dir-mode-then-symlink",
            Crafted::new()
                .dir("a", 0o4777)
                .symlink("a", file)
                .dir("b", 0o777)
                .symlink("b", dir)
                .build(),
        ),
        (
            "dir-mode-then-relative-symlink",
            Crafted::new()
                .dir("a", 0o4777)
                .symlink("a", &rel_file)
                .build(),
        ),
        // A symlink to the host, then writes "through" it.
        (
            "symlink-then-write",
            Crafted::new()
                .symlink("s", file)
                .file("s", 0o4777, "pwned\n")
                .symlink("d", dir)
                .file("d/new", 0o644, "pwned\n")
                .dir("d/sub", 0o777)
                .build(),
        ),
        (
            "relative-symlink-dir-then-write",
            Crafted::new()
                .symlink("up", "../../../../../../../../../..")
                .file(&format!("up{}", &file[..file.len().min(90)]), 0o777, "x")
                .build(),
        ),
        // A hardlink aimed outside, then a write through it.
        (
            "hardlink-out-absolute",
            Crafted::new()
                .hardlink("h", file)
                .file("h", 0o4777, "pwned\n")
                .build(),
        ),
        (
            "hardlink-out-dotdot",
            Crafted::new()
                .hardlink("h", &rel_file)
                .file("h", 0o4777, "pwned\n")
                .build(),
        ),
        (
            "hardlink-through-symlink",
            Crafted::new()
                .symlink("s", dir)
                .hardlink("h", "s/kept")
                .file("h", 0o777, "pwned\n")
                .build(),
        ),
        (
            "hardlink-to-symlink-then-dir-mode",
            Crafted::new()
                .symlink("s", file)
                .hardlink("h", "s")
                .dir("h2", 0o4777)
                .hardlink("h2", "s")
                .build(),
        ),
        // `..` and absolute names.
        (
            "dotdot-name",
            Crafted::new()
                .file(&format!("a/{rel_file}"), 0o4777, "pwned\n")
                .build(),
        ),
        (
            "absolute-name",
            Crafted::new().file(file, 0o4777, "pwned\n").build(),
        ),
        ("absolute-dir-name", Crafted::new().dir(dir, 0o4777).build()),
    ]
}

fn client(reg: &Registry) -> RegistryClient {
    insecure_client(&reg.addr)
}

#[test]
fn crafted_layers_never_touch_host_files() -> Result<()> {
    let reg = Registry::start()?;
    let mut failures = Vec::new();
    let count = cases(&Victims::new()?).len();
    for i in 0..count {
        // Fresh host files per case, so each case is judged on its own.
        let v = Victims::new()?;
        let before = v.state();
        let (name, tar) = cases(&v).swap_remove(i);
        reg.push_image(name, "v1", OCI_MANIFEST, &[Layer::gzip(tar)], json!({}))?;
        let state = tempfile::tempdir()?;
        let unpack = tempfile::tempdir()?;
        let store = ImageStore::open(state.path(), None)?.with_unpack_dir(unpack.path())?;
        let r: Reference = format!("{}/{name}:v1", reg.addr).parse()?;
        let outcome = store
            .pull(&client(&reg), &r, &|_| {})
            .and_then(|image| store.rootfs(&image));
        let after = v.state();
        if after != before {
            failures.push(format!(
                "{name}: host files changed ({outcome:?})\n  before {before:?}\n  after  {after:?}"
            ));
        }
        eprintln!("{name}: {:?}", outcome.map(|fs| fs.path));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn skiff_image_pull_of_a_crafted_layer_leaves_host_files_alone() -> Result<()> {
    let reg = Registry::start()?;
    let v = Victims::new()?;
    let before = v.state();
    let (name, tar) = cases(&v).swap_remove(0);
    reg.push_image(name, "v1", OCI_MANIFEST, &[Layer::gzip(tar)], json!({}))?;
    let state = tempfile::tempdir()?;
    let out = Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(state.path())
        .args(["image", "pull", "--insecure", &reg.addr])
        .arg(format!("{}/{name}:v1", reg.addr))
        .env("REGISTRY_AUTH_FILE", state.path().join("no-auth-file.json"))
        .output()?;
    let after = v.state();
    assert_eq!(
        after,
        before,
        "skiff image pull changed host files (exit {:?}, stderr: {})",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
