use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use super::*;
use crate::build::context::checksum_sources;

fn write(root: &Path, rel: &str, contents: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, contents).expect("write");
}

fn rules(text: &str) -> IgnoreMatcher {
    IgnoreMatcher::parse(".dockerignore", text.as_bytes()).expect("rules")
}

fn walk(root: &Path, ignore: &IgnoreMatcher, always: &[&str]) -> Result<Manifest, WalkError> {
    let always: Vec<String> = always.iter().map(|s| s.to_string()).collect();
    walk_context(
        root,
        ignore,
        &always,
        &mut StatCache::new(),
        &WalkOptions::default(),
    )
}

/// `root` walked with `options`, nothing ignored, with a cache of its own.
fn walk_with(root: &Path, options: &WalkOptions) -> Result<Manifest, WalkError> {
    walk_context(
        root,
        &IgnoreMatcher::empty(),
        &[],
        &mut StatCache::new(),
        options,
    )
}

fn paths(m: &Manifest) -> Vec<&str> {
    m.entries.iter().map(|e| e.path.as_str()).collect()
}

/// Runs `cmd PATH ARGS…` (mkfifo, mknod), which must succeed.
fn make(cmd: &str, path: &Path, args: &[&str]) {
    let ok = Command::new(cmd)
        .arg(path)
        .args(args)
        .status()
        .expect(cmd)
        .success();
    assert!(ok, "{cmd} {} failed (mknod needs root)", path.display());
}

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[test]
fn records_files_dirs_and_links_sorted_bytewise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "a/b", "hello");
    write(root, "a.txt", "xy");
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    symlink("/etc/passwd", root.join("link")).expect("symlink");
    symlink("../../outside", root.join("a/up")).expect("symlink");
    let m = walk(root, &IgnoreMatcher::empty(), &[]).expect("walk");
    // '.' (0x2e) sorts before '/' (0x2f).
    assert_eq!(paths(&m), ["a", "a.txt", "a/b", "a/up", "link"]);
    let a_txt = m.get("a.txt").expect("a.txt");
    assert_eq!(a_txt.kind, EntryKind::File);
    assert_eq!(a_txt.mode, 0o4755);
    assert_eq!(a_txt.size, Some(2));
    assert_eq!(a_txt.sha256.as_deref(), Some(sha("xy").as_str()));
    let link = m.get("link").expect("link");
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(link.sha256, None);
    assert_eq!(
        m.get("a/up").and_then(|e| e.link_target.as_deref()),
        Some("../../outside")
    );
    assert_eq!(m.get("a").map(|e| e.kind), Some(EntryKind::Dir));
    assert_eq!(m.total_bytes, 7);
}

#[test]
fn json_uses_camel_case_and_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    symlink("t", dir.path().join("l")).expect("symlink");
    let m = walk(dir.path(), &IgnoreMatcher::empty(), &[]).expect("walk");
    let json = serde_json::to_string(&m).expect("json");
    assert!(json.contains("\"type\":\"symlink\""), "{json}");
    assert!(json.contains("\"linkTarget\":\"t\""), "{json}");
    assert!(json.contains("\"totalBytes\":0"), "{json}");
    assert!(!json.contains("excluded"), "{json}");
    let back: Manifest = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, m);
}

#[test]
fn symlinked_directory_is_not_entered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("ctx");
    write(dir.path(), "outside/secret", "s");
    fs::create_dir(&root).expect("mkdir");
    symlink(dir.path().join("outside"), root.join("out")).expect("symlink");
    let m = walk(&root, &IgnoreMatcher::empty(), &[]).expect("walk");
    assert_eq!(paths(&m), ["out"]);
}

#[test]
fn excluded_paths_are_skipped_and_not_entered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "node_modules/x/y.js", "1");
    write(root, "src/main.rs", "2");
    write(root, "debug.log", "3");
    // A FIFO inside an excluded directory is never looked at.
    fs::create_dir(root.join("private")).expect("mkdir");
    Command::new("mkfifo")
        .arg(root.join("private/pipe"))
        .status()
        .expect("mkfifo");
    let m = walk(root, &rules("node_modules\n*.log\nprivate\n"), &[]).expect("walk");
    assert_eq!(paths(&m), ["src", "src/main.rs"]);
}

#[test]
fn exception_under_excluded_directory_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "node_modules/keep.txt", "keep");
    write(root, "node_modules/drop.txt", "drop");
    write(root, "node_modules/sub/deep.txt", "deep");
    let m = walk(root, &rules("node_modules\n!node_modules/keep.txt\n"), &[]).expect("walk");
    assert_eq!(paths(&m), ["node_modules", "node_modules/keep.txt"]);
    assert!(m.get("node_modules").is_some_and(|e| e.excluded));
    assert!(m.get("node_modules/keep.txt").is_some_and(|e| !e.excluded));
}

#[test]
fn excluded_directory_entered_for_nothing_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "vendor/a.txt", "a");
    let m = walk(root, &rules("vendor\n!*/keep.txt\n"), &[]).expect("walk");
    assert!(m.entries.is_empty(), "{:?}", paths(&m));
}

#[test]
fn always_included_paths_are_present_even_if_excluded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "build/app.Dockerfile", "FROM x");
    write(root, "build/other", "o");
    write(root, ".dockerignore", "build\n.dockerignore\n");
    write(root, "main.c", "c");
    let m = walk(
        root,
        &rules("build\n.dockerignore\n"),
        &["build/app.Dockerfile", "./.dockerignore", "missing"],
    )
    .expect("walk");
    assert_eq!(
        paths(&m),
        [".dockerignore", "build", "build/app.Dockerfile", "main.c"]
    );
    assert!(m.get(".dockerignore").is_some_and(|e| e.excluded));
    assert!(m.get("build/app.Dockerfile").is_some_and(|e| e.excluded));
    assert!(m.get("main.c").is_some_and(|e| !e.excluded));
}

#[test]
fn fifo_and_socket_are_refused_unless_excluded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir(root.join("build")).expect("mkdir");
    make("mkfifo", &root.join("build/pipe"), &[]);
    let err = walk(root, &IgnoreMatcher::empty(), &[]).expect_err("fifo");
    assert_eq!(
        err.to_string(),
        "context: build/pipe is a FIFO; only files, directories and symbolic links can be sent"
    );
    let m = walk(root, &rules("build/pipe\n"), &[]).expect("excluded fifo");
    assert_eq!(paths(&m), ["build"]);

    let _listener = std::os::unix::net::UnixListener::bind(root.join("sock")).expect("bind socket");
    let err = walk(root, &rules("build/pipe\n"), &[]).expect_err("socket");
    assert!(
        matches!(&err, WalkError::SpecialFile { path, kind: "a socket" } if path == "sock"),
        "{err}"
    );
}

#[test]
fn another_stages_tree_lists_devices_and_fifos_and_leaves_sockets_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir(root.join("dev")).expect("mkdir");
    make("mkfifo", &root.join("dev/pipe"), &[]);
    let _listener = std::os::unix::net::UnixListener::bind(root.join("dev/sock")).expect("bind");
    // Device nodes need CAP_MKNOD: tests run as root (as the server does).
    make("mknod", &root.join("dev/null"), &["c", "1", "3"]);
    make("mknod", &root.join("dev/loop9"), &["b", "7", "9"]);
    // Another stage's tree is walked as `COPY --from` walks it.
    let walk_tree = || {
        let options = WalkOptions {
            special_files: true,
            ..WalkOptions::default()
        };
        walk_with(root, &options).expect("walk")
    };
    let m = walk_tree();
    let kinds: Vec<(&str, EntryKind, Option<DeviceNumbers>)> = m
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.device))
        .collect();
    assert_eq!(
        kinds,
        [
            ("dev", EntryKind::Dir, None),
            (
                "dev/loop9",
                EntryKind::Block,
                Some(DeviceNumbers { major: 7, minor: 9 })
            ),
            (
                "dev/null",
                EntryKind::Char,
                Some(DeviceNumbers { major: 1, minor: 3 })
            ),
            ("dev/pipe", EntryKind::Fifo, None),
        ]
    );
    // The device's numbers are in the cache key: another device is another key.
    let key = |m: &Manifest| checksum_sources(m, &["dev"], &IgnoreMatcher::empty(), false);
    let before = key(&m).expect("key");
    fs::remove_file(root.join("dev/null")).expect("rm");
    make("mknod", &root.join("dev/null"), &["c", "1", "5"]);
    let m = walk_tree();
    assert_ne!(key(&m).expect("key"), before);
}

#[test]
fn non_utf8_name_is_refused() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("d")).expect("mkdir");
    let name = OsStr::from_bytes(b"bad\xffname");
    fs::write(dir.path().join("d").join(name), "x").expect("write");
    let err = walk(dir.path(), &IgnoreMatcher::empty(), &[]).expect_err("non-utf8");
    assert!(
        matches!(&err, WalkError::NonUtf8Name { path } if path == "d/bad\u{fffd}name"),
        "{err}"
    );
    let m = walk(dir.path(), &rules("d/bad*\n"), &[]).expect("excluded non-utf8");
    assert_eq!(paths(&m), ["d"]);
}

#[test]
fn bounds_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "a/b/c/d", "x");
    let tight = |f: fn(&mut WalkOptions)| {
        let mut options = WalkOptions::default();
        f(&mut options);
        walk_with(root, &options)
    };
    assert!(matches!(
        tight(|o| o.max_entries = 3),
        Err(WalkError::TooManyEntries { limit: 3 })
    ));
    assert!(tight(|o| o.max_entries = 4).is_ok());
    assert!(matches!(
        tight(|o| o.max_depth = 3),
        Err(WalkError::TooDeep { limit: 3, .. })
    ));
    assert!(matches!(
        tight(|o| o.max_path_bytes = 6),
        Err(WalkError::PathTooLong { limit: 6, .. })
    ));
    assert!(tight(|o| o.max_path_bytes = 7).is_ok());
}

#[test]
fn root_must_be_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "f", "x");
    let err = walk(&dir.path().join("f"), &IgnoreMatcher::empty(), &[]).expect_err("file root");
    assert!(matches!(err, WalkError::NotADirectory { .. }));
}

fn walk_cached(root: &Path, cache: &mut StatCache) -> Manifest {
    let options = WalkOptions {
        racy_margin: Duration::ZERO,
        ..WalkOptions::default()
    };
    walk_context(root, &IgnoreMatcher::empty(), &[], cache, &options).expect("walk")
}

#[test]
fn stat_cache_reuses_hash_when_stat_is_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "f", "content");
    let mut cache = StatCache::new();
    std::thread::sleep(Duration::from_millis(20));
    walk_cached(dir.path(), &mut cache);
    assert_eq!(cache.len(), 1);
    // Plant a marker hash: it is reused because nothing changed.
    let stat = cache.get("f").expect("cached").stat;
    cache.insert("f".into(), stat, "marker".into());
    let m = walk_cached(dir.path(), &mut cache);
    assert_eq!(m.get("f").and_then(|e| e.sha256.as_deref()), Some("marker"));
}

#[test]
fn stat_cache_misses_after_rewrite_with_restored_mtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    fs::write(&path, "aaaa").expect("write");
    let mtime = fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::thread::sleep(Duration::from_millis(50));
    let mut cache = StatCache::new();
    let first = walk_cached(dir.path(), &mut cache);
    assert_eq!(cache.len(), 1);
    std::thread::sleep(Duration::from_millis(50));
    fs::write(&path, "bbbb").expect("rewrite");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_modified(mtime).expect("restore mtime");
    drop(file);
    let after = fs::metadata(&path).expect("stat");
    assert_eq!(after.modified().expect("mtime"), mtime);
    assert_eq!(after.len(), 4);
    let second = walk_cached(dir.path(), &mut cache);
    let h1 = first.get("f").and_then(|e| e.sha256.clone());
    let h2 = second.get("f").and_then(|e| e.sha256.clone());
    assert_eq!(h1, Some(sha("aaaa")));
    assert_eq!(h2, Some(sha("bbbb")));
}

#[test]
fn recently_changed_files_are_not_remembered() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "f", "x");
    write(dir.path(), "g", "y");
    let mut cache = StatCache::new();
    cache.insert(
        "gone".into(),
        StatKey {
            dev: 0,
            ino: 0,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            mode: 0,
        },
        "00".into(),
    );
    let m = walk(dir.path(), &IgnoreMatcher::empty(), &[]).expect("walk");
    assert_eq!(m.entries.len(), 2);
    walk_context(
        dir.path(),
        &IgnoreMatcher::empty(),
        &[],
        &mut cache,
        &WalkOptions::default(),
    )
    .expect("walk");
    // Files just written are inside the 2 s racy window; stale paths go.
    assert!(cache.is_empty());
}
