use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::*;
use crate::build::context::manifest::{walk_context, WalkOptions};
use crate::build::context::statcache::StatCache;

fn file(path: &str, contents: &str) -> Entry {
    Entry {
        path: path.to_owned(),
        kind: EntryKind::File,
        mode: 0o644,
        size: Some(contents.len() as u64),
        sha256: Some(hex::encode(Sha256::digest(contents.as_bytes()))),
        link_target: None,
        device: None,
        excluded: false,
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.to_owned(),
        kind: EntryKind::Dir,
        mode: 0o755,
        size: None,
        sha256: None,
        link_target: None,
        device: None,
        excluded: false,
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: path.to_owned(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        size: None,
        sha256: None,
        link_target: Some(target.to_owned()),
        device: None,
        excluded: false,
    }
}

fn manifest(mut entries: Vec<Entry>) -> Manifest {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let total_bytes = entries.iter().filter_map(|e| e.size).sum();
    Manifest {
        entries,
        total_bytes,
    }
}

fn sample() -> Manifest {
    manifest(vec![
        file("app.jar", "jar"),
        dir("src"),
        file("src/a.rs", "fn a() {}"),
        file("src/b.txt", "b"),
        dir("src/nested"),
        file("src/nested/c.rs", "c"),
        link("etc", "/etc"),
        link("up", "../.."),
        file("Dockerfile", "FROM scratch"),
    ])
}

fn sum(m: &Manifest, sources: &[&str]) -> String {
    checksum_sources(m, sources, &IgnoreMatcher::empty(), false).expect("checksum")
}

fn selected_paths(m: &Manifest, sources: &[&str]) -> Vec<String> {
    select_sources(m, sources, &IgnoreMatcher::empty())
        .expect("select")
        .into_iter()
        .map(|e| e.path.clone())
        .collect()
}

#[test]
fn selects_literal_wildcard_and_directory_sources() {
    let m = sample();
    assert_eq!(selected_paths(&m, &["app.jar"]), ["app.jar"]);
    assert_eq!(selected_paths(&m, &["/app.jar"]), ["app.jar"]);
    assert_eq!(selected_paths(&m, &["./src/../app.jar"]), ["app.jar"]);
    assert_eq!(
        selected_paths(&m, &["src"]),
        [
            "src",
            "src/a.rs",
            "src/b.txt",
            "src/nested",
            "src/nested/c.rs"
        ]
    );
    assert_eq!(selected_paths(&m, &["src/*.rs"]), ["src/a.rs"]);
    assert_eq!(
        selected_paths(&m, &["src/*/*.rs", "src/?.rs"]),
        ["src/a.rs", "src/nested/c.rs"]
    );
    assert_eq!(
        selected_paths(&m, &["src/[ab].*"]),
        ["src/a.rs", "src/b.txt"]
    );
    // Overlapping sources select each entry once.
    assert_eq!(selected_paths(&m, &["app.jar", "app.*"]), ["app.jar"]);
    // The last component may be a link: it is selected as a link.
    assert_eq!(selected_paths(&m, &["etc"]), ["etc"]);
    assert_eq!(selected_paths(&m, &["."]).len(), m.entries.len());
}

#[test]
fn checksum_is_stable_and_order_independent() {
    let m = sample();
    let a = sum(&m, &["src", "app.jar"]);
    assert_eq!(a.len(), 64);
    assert_eq!(a, sum(&m, &["app.jar", "src"]));
    assert_ne!(a, sum(&m, &["src"]));
}

#[test]
fn rename_under_wildcard_changes_checksum() {
    let before = manifest(vec![dir("src"), file("src/a.rs", "x")]);
    let after = manifest(vec![dir("src"), file("src/b.rs", "x")]);
    assert_ne!(sum(&before, &["src/*.rs"]), sum(&after, &["src/*.rs"]));
}

#[test]
fn same_size_content_change_changes_checksum() {
    let before = manifest(vec![file("a", "aaaa")]);
    let after = manifest(vec![file("a", "bbbb")]);
    assert_ne!(sum(&before, &["a"]), sum(&after, &["a"]));
}

#[test]
fn mode_counts_unless_chmod() {
    let before = manifest(vec![file("run.sh", "echo")]);
    let mut after = before.clone();
    after.entries[0].mode = 0o755;
    assert_ne!(sum(&before, &["run.sh"]), sum(&after, &["run.sh"]));
    let none = IgnoreMatcher::empty();
    assert_eq!(
        checksum_sources(&before, &["run.sh"], &none, true),
        checksum_sources(&after, &["run.sh"], &none, true)
    );
    assert_ne!(
        checksum_sources(&before, &["run.sh"], &none, true),
        checksum_sources(&before, &["run.sh"], &none, false)
    );
}

#[test]
fn link_target_counts() {
    let before = manifest(vec![link("cur", "v1")]);
    let after = manifest(vec![link("cur", "v2")]);
    assert_ne!(sum(&before, &["cur"]), sum(&after, &["cur"]));
}

#[test]
fn field_boundaries_are_unambiguous() {
    // Same concatenated text, different split between path and target.
    let one = manifest(vec![link("ab", "c")]);
    let two = manifest(vec![link("a", "bc")]);
    assert_ne!(sum(&one, &["*"]), sum(&two, &["*"]));
}

#[test]
fn missing_sources_are_errors() {
    let m = sample();
    let none = IgnoreMatcher::empty();
    let err = checksum_sources(&m, &["missing.jar"], &none, false).expect_err("missing");
    assert_eq!(
        err.to_string(),
        "\"missing.jar\" not found in the build context"
    );
    let err = checksum_sources(&m, &["src/*.go"], &none, false).expect_err("no match");
    assert_eq!(
        err.to_string(),
        "\"src/*.go\" not found in the build context"
    );
    let err = checksum_sources(&m, &["app.jar/x"], &none, false).expect_err("under file");
    assert!(matches!(err, ChecksumError::NotFound { .. }));
    assert_eq!(
        checksum_sources(&m, &[""], &none, false),
        Err(ChecksumError::EmptySource)
    );
}

#[test]
fn excluded_source_names_the_ignore_line() {
    let ignore = IgnoreMatcher::parse(
        ".dockerignore",
        b"# build output\n\n*.class\n\n\n\ntarget\napp.jar\nDockerfile\n",
    )
    .expect("rules");
    // app.jar was excluded, so the walk left it out.
    let mut m = manifest(vec![dir("src"), file("src/a.rs", "a")]);
    let err = checksum_sources(&m, &["app.jar"], &ignore, false).expect_err("excluded");
    assert_eq!(
        err.to_string(),
        "\"app.jar\" not found in the build context (excluded by .dockerignore line 8)"
    );
    // Below an excluded directory: the directory's line is named.
    let err = checksum_sources(&m, &["target/*.jar"], &ignore, false).expect_err("excluded");
    assert_eq!(
        err.to_string(),
        "\"target/*.jar\" not found in the build context (excluded by .dockerignore line 7)"
    );
    // Present only because always included: COPY still does not see it.
    let mut dockerfile = file("Dockerfile", "FROM x");
    dockerfile.excluded = true;
    m.entries.insert(0, dockerfile);
    let err = checksum_sources(&m, &["Docker*"], &ignore, false).expect_err("hidden");
    assert_eq!(
        err.to_string(),
        "\"Docker*\" not found in the build context (excluded by .dockerignore line 9)"
    );
    assert_eq!(selected_paths(&m, &["."]), ["src", "src/a.rs"]);
}

#[test]
fn sources_outside_the_context_are_refused() {
    let m = sample();
    let none = IgnoreMatcher::empty();
    for source in ["../x", "..", "src/../../x", "./../*"] {
        let err = checksum_sources(&m, &[source], &none, false).expect_err(source);
        assert_eq!(
            err,
            ChecksumError::OutsideContext {
                path: source.to_owned()
            }
        );
    }
    // A rooted path is relative to the context, and `/..` stays at the root.
    assert_eq!(selected_paths(&m, &["/../app.jar"]), ["app.jar"]);
}

#[test]
fn paths_through_symlinks_are_refused() {
    let m = sample();
    let none = IgnoreMatcher::empty();
    let err = checksum_sources(&m, &["etc/passwd"], &none, false).expect_err("through link");
    assert_eq!(
        err.to_string(),
        "\"etc/passwd\": path goes through symbolic link \"etc\" -> \"/etc\""
    );
    let err = checksum_sources(&m, &["up/x/y"], &none, false).expect_err("through link");
    assert!(
        matches!(&err, ChecksumError::ThroughSymlink { link, target, .. }
            if link == "up" && target == "../.."),
        "{err}"
    );
    let err = checksum_sources(&m, &["*/passwd"], &none, false).expect_err("wildcard link");
    assert!(matches!(err, ChecksumError::ThroughSymlink { .. }), "{err}");
}

#[test]
fn bad_wildcard_is_an_error() {
    let m = sample();
    let err = checksum_sources(&m, &["src/[a"], &IgnoreMatcher::empty(), false).expect_err("bad");
    assert!(matches!(err, ChecksumError::BadPattern { .. }), "{err}");
}

#[test]
fn escaped_wildcard_is_literal_per_buildkit() {
    let m = manifest(vec![file("a*b", "x"), file("axb", "y"), file("a\\*b", "z")]);
    assert_eq!(selected_paths(&m, &["a*b"]), ["a*b", "a\\*b", "axb"]);
    assert_eq!(selected_paths(&m, &["a[*]b"]), ["a*b"]);
    // No unescaped wildcard: the text, backslash included, names the path.
    assert_eq!(selected_paths(&m, &["a\\*b"]), ["a\\*b"]);
}

fn walked(root: &Path) -> Manifest {
    walk_context(
        root,
        &IgnoreMatcher::empty(),
        &[],
        &mut StatCache::new(),
        &WalkOptions::default(),
    )
    .expect("walk")
}

#[test]
fn walked_context_ignores_mtime_but_sees_content_and_renames() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fs::create_dir(root.join("src")).expect("mkdir");
    fs::write(root.join("src/a.rs"), "fn main() {}").expect("write");
    let base = sum(&walked(root), &["src/*.rs"]);

    let f = fs::File::options()
        .write(true)
        .open(root.join("src/a.rs"))
        .expect("open");
    f.set_modified(std::time::UNIX_EPOCH).expect("touch");
    drop(f);
    assert_eq!(sum(&walked(root), &["src/*.rs"]), base, "mtime is not part");

    fs::write(root.join("src/a.rs"), "fn mian() {}").expect("rewrite");
    let changed = sum(&walked(root), &["src/*.rs"]);
    assert_ne!(changed, base);

    fs::rename(root.join("src/a.rs"), root.join("src/b.rs")).expect("rename");
    assert_ne!(sum(&walked(root), &["src/*.rs"]), changed);

    fs::set_permissions(root.join("src/b.rs"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let m = walked(root);
    assert_ne!(
        checksum_sources(&m, &["src"], &IgnoreMatcher::empty(), false),
        checksum_sources(
            &walked_with_mode(root, 0o644),
            &["src"],
            &IgnoreMatcher::empty(),
            false
        )
    );
    symlink("/etc", root.join("etc")).expect("symlink");
    let err = checksum_sources(
        &walked(root),
        &["etc/passwd"],
        &IgnoreMatcher::empty(),
        false,
    )
    .expect_err("through link");
    assert!(matches!(err, ChecksumError::ThroughSymlink { .. }));
}

fn walked_with_mode(root: &Path, mode: u32) -> Manifest {
    fs::set_permissions(root.join("src/b.rs"), fs::Permissions::from_mode(mode)).expect("chmod");
    walked(root)
}

#[test]
fn reincluded_file_under_excluded_directory_is_copyable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fs::create_dir(root.join("node_modules")).expect("mkdir");
    fs::write(root.join("node_modules/keep.txt"), "k").expect("write");
    fs::write(root.join("node_modules/drop.txt"), "d").expect("write");
    let ignore = IgnoreMatcher::parse(".dockerignore", b"node_modules\n!node_modules/keep.txt\n")
        .expect("rules");
    let m = walk_context(
        root,
        &ignore,
        &[],
        &mut StatCache::new(),
        &WalkOptions::default(),
    )
    .expect("walk");
    let picked: Vec<&str> = select_sources(&m, &["node_modules"], &ignore)
        .expect("select")
        .into_iter()
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(picked, ["node_modules/keep.txt"]);
    let err =
        checksum_sources(&m, &["node_modules/drop.txt"], &ignore, false).expect_err("excluded");
    assert_eq!(
        err.to_string(),
        "\"node_modules/drop.txt\" not found in the build context \
         (excluded by .dockerignore line 1)"
    );
}
