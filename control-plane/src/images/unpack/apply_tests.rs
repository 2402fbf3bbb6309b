use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::*;
use crate::images::unpack::compression::{detect, Compression};

/// Builds a layer tar in memory, with raw names (so tests can write hostile ones).
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn header(name: &str, kind: EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }
    fn add(mut self, mut h: tar::Header, data: &[u8]) -> Self {
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(self, name: &str, data: &str) -> Self {
        let h = Self::header(name, EntryType::Regular, 0o644, data.len() as u64);
        self.add(h, data.as_bytes())
    }
    fn dir(self, name: &str) -> Self {
        self.add(Self::header(name, EntryType::Directory, 0o755, 0), b"")
    }
    fn link(self, name: &str, kind: EntryType, target: &str) -> Self {
        let mut h = Self::header(name, kind, 0o777, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.add(h, b"")
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.link(name, EntryType::Symlink, target)
    }
    fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// True when files we make belong to root (the effective uid, found without unsafe code).
fn running_as_root(dir: &Path) -> bool {
    let probe = dir.join(".uid-probe");
    fs::write(&probe, "").unwrap();
    let uid = fs::metadata(&probe).unwrap().uid();
    fs::remove_file(probe).unwrap();
    uid == 0
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn exists(root: &Path, p: &str) -> bool {
    fs::symlink_metadata(root.join(p)).is_ok()
}

#[test]
fn files_dirs_links_devices_owners_modes_and_xattrs() {
    let root = tempfile::tempdir().unwrap();
    let mut l = Layer::new()
        .dir("etc/")
        .file("etc/hosts", "127.0.0.1 localhost\n");
    let mut h = Layer::header("bin/tool", EntryType::Regular, 0o4755, 3);
    h.set_uid(1234);
    h.set_gid(5678);
    l = l.add(h, b"abc");
    l = l
        .symlink("bin/sh", "tool")
        .link("bin/tool2", EntryType::Link, "bin/tool");
    let mut dev = Layer::header("dev/null", EntryType::Char, 0o666, 0);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    l = l.add(dev, b"");
    l = l.add(Layer::header("run/fifo", EntryType::Fifo, 0o600, 0), b"");
    l.0.append_pax_extensions([("SCHILY.xattr.user.skiff", b"yes".as_slice())])
        .unwrap();
    l = l.file("etc/tagged", "x");
    l = l
        .add(Layer::header("ro/", EntryType::Directory, 0o555, 0), b"")
        .file("ro/inside", "in");
    let stats = apply_layer(root.path(), l.tar().as_slice()).unwrap();
    let r = root.path();
    assert_eq!(stats.entries, 10);
    assert_eq!(read(r, "etc/hosts"), "127.0.0.1 localhost\n");
    let m = fs::metadata(r.join("bin/tool")).unwrap();
    if running_as_root(r) {
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    }
    assert_eq!(m.mode() & 0o7777, 0o4755);
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(fs::read_link(r.join("bin/sh")).unwrap(), Path::new("tool"));
    assert_eq!(fs::metadata(r.join("bin/tool2")).unwrap().ino(), m.ino());
    // Device nodes need root (CAP_MKNOD); without it they are skipped with a warning.
    if running_as_root(r) {
        let d = fs::metadata(r.join("dev/null")).unwrap();
        assert!(d.file_type().is_char_device());
        assert_eq!(d.rdev(), rustix::fs::makedev(1, 3));
    } else {
        assert!(!exists(r, "dev/null"));
    }
    assert!(fs::metadata(r.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let x = rustix::fs::lgetxattr(r.join("etc/tagged"), "user.skiff", &mut [0u8; 16][..]).unwrap();
    assert_eq!(x, 3);
    assert_eq!(fs::metadata(r.join("ro")).unwrap().mode() & 0o777, 0o555);
    assert_eq!(read(r, "ro/inside"), "in");
}

#[test]
fn compression_is_detected_by_magic() {
    let tar = Layer::new().file("a", "plain").tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(tar.as_slice(), 3).unwrap();
    assert_eq!(detect(&gz), Compression::Gzip);
    assert_eq!(detect(&zst), Compression::Zstd);
    assert_eq!(detect(&tar), Compression::None);
    for layer in [tar, gz, zst] {
        let root = tempfile::tempdir().unwrap();
        apply_layer(root.path(), layer.as_slice()).unwrap();
        assert_eq!(read(root.path(), "a"), "plain");
    }
}

fn base(root: &Path) {
    let l = Layer::new()
        .file("keep", "k")
        .file("gone", "g")
        .file("dir/a", "a")
        .file("dir/sub/b", "b")
        .file("opq/old1", "o")
        .file("opq/nested/old2", "o")
        .file("opq2/old", "o")
        .file("redo/old", "o");
    apply_layer(root, l.tar().as_slice()).unwrap();
}

#[test]
fn whiteouts_hide_lower_layers_in_any_order() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    base(r);
    let upper = Layer::new()
        .file(".wh.gone", "")
        .file("dir/.wh.sub", "")
        // opaque marker after this layer's own entries in that folder
        .file("opq/new", "n")
        .file("opq/nested/new2", "n")
        .file("opq/.wh..wh..opq", "")
        // opaque marker before this layer's entries
        .file("opq2/.wh..wh..opq", "")
        .file("opq2/fresh", "f")
        // whiteout a folder, then recreate it in the same layer
        .file(".wh.redo", "")
        .file("redo/new", "n")
        // a file of this layer, then a whiteout of it: the whiteout only hides lower layers
        .file("mine", "m")
        .file(".wh.mine", "")
        // whiteout of something that never existed
        .file("nowhere/.wh.ghost", "");
    let stats = apply_layer(r, upper.tar().as_slice()).unwrap();
    assert_eq!(stats.whiteouts, 7);
    assert_eq!(read(r, "keep"), "k");
    assert!(!exists(r, "gone"));
    assert_eq!(read(r, "dir/a"), "a");
    assert!(!exists(r, "dir/sub"));
    assert!(!exists(r, "opq/old1") && !exists(r, "opq/nested/old2"));
    assert_eq!(read(r, "opq/new"), "n");
    assert_eq!(read(r, "opq/nested/new2"), "n");
    assert!(!exists(r, "opq2/old"));
    assert_eq!(read(r, "opq2/fresh"), "f");
    assert!(!exists(r, "redo/old"));
    assert_eq!(read(r, "redo/new"), "n");
    assert_eq!(read(r, "mine"), "m");
    assert!(!exists(r, "nowhere/.wh.ghost") && !exists(r, ".wh.gone"));
}

#[test]
fn entries_replace_lower_entries_of_another_kind_without_following_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let r = root.path();
    let target = outside.path().join("victim");
    fs::write(&target, "safe").unwrap();
    let lower = Layer::new()
        .symlink("f", target.to_str().unwrap())
        .file("d", "file")
        .dir("x/");
    apply_layer(r, lower.tar().as_slice()).unwrap();
    let upper = Layer::new()
        .file("f", "over")
        .dir("d/")
        .file("d/in", "i")
        .file("x", "now a file");
    apply_layer(r, upper.tar().as_slice()).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "safe");
    assert_eq!(read(r, "f"), "over");
    assert_eq!(read(r, "d/in"), "i");
    assert_eq!(read(r, "x"), "now a file");
}

#[test]
fn absolute_symlinks_resolve_inside_the_root() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let l = Layer::new()
        .dir("usr/etc/")
        .symlink("etc", "/usr/etc")
        .file("etc/conf", "c");
    apply_layer(r, l.tar().as_slice()).unwrap();
    assert_eq!(read(r, "usr/etc/conf"), "c");
    assert!(fs::symlink_metadata(r.join("etc"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn escapes_are_rejected_and_write_nothing_outside() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", Layer::new().file("../evil", "x").tar()),
        (
            "nested dotdot",
            Layer::new().file("a/../../evil", "x").tar(),
        ),
        ("absolute", Layer::new().file("/evil", "x").tar()),
        (
            "symlink out",
            Layer::new().symlink("up", "../").file("up/evil", "x").tar(),
        ),
        (
            "deep symlink out",
            Layer::new()
                .dir("a/")
                .symlink("a/l", "../../..")
                .file("a/l/evil", "x")
                .tar(),
        ),
        (
            "hardlink out",
            Layer::new().link("h", EntryType::Link, "../evil").tar(),
        ),
        (
            "whiteout via symlink",
            Layer::new().symlink("w", "..").file("w/.wh.root", "").tar(),
        ),
    ];
    fs::write(outer.path().join("evil"), "untouched").unwrap();
    for (what, tar) in cases {
        let err = apply_layer(&root, tar.as_slice()).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{what}: {err}");
        assert!(
            err.to_string().contains("escapes the root"),
            "{what}: {err}"
        );
    }
    assert_eq!(
        fs::read_to_string(outer.path().join("evil")).unwrap(),
        "untouched"
    );
    assert!(outer.path().join("root").exists());
}

#[test]
fn garbage_and_broken_links_give_errors_not_panics() {
    let root = tempfile::tempdir().unwrap();
    let err = apply_layer(root.path(), &[0x1f, 0x8b, 1, 2, 3][..]).unwrap_err();
    assert!(matches!(err, UnpackError::Read(_)), "{err}");
    let err = apply_layer(root.path(), &[0x28, 0xb5, 0x2f, 0xfd, 9, 9][..]).unwrap_err();
    assert!(matches!(err, UnpackError::Read(_)), "{err}");
    let err = apply_layer(
        root.path(),
        Layer::new()
            .link("h", EntryType::Link, "missing")
            .tar()
            .as_slice(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let loop_layer = Layer::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", "")
        .tar();
    let err = apply_layer(root.path(), loop_layer.as_slice()).unwrap_err();
    assert!(err.to_string().contains("symlinks"), "{err}");
}
