use std::path::PathBuf;

use super::*;

fn file(path: &str, mode: u32, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: SourceKind::File,
        mode,
        size: Some(size),
        sha256: Some(format!("{:064x}", size)),
        link_target: None,
        device: None,
        excluded: false,
    }
}

fn dir(path: &str, mode: u32) -> Entry {
    Entry {
        path: path.into(),
        kind: SourceKind::Dir,
        mode,
        size: None,
        sha256: None,
        link_target: None,
        device: None,
        excluded: false,
    }
}

fn context() -> Manifest {
    let mut link = file("latest", 0o777, 0);
    link.kind = SourceKind::Symlink;
    link.size = None;
    link.link_target = Some("app.jar".into());
    let entries = vec![
        file("app.jar", 0o644, 10),
        link,
        dir("src", 0o750),
        file("src/a.rs", 0o600, 3),
        file("src/b.rs", 0o600, 4),
        dir("src/sub", 0o755),
        file("src/sub/c.rs", 0o755, 0),
    ];
    Manifest {
        total_bytes: 17,
        entries,
    }
}

fn copy(
    sources: &[&str],
    dest: &str,
    image_dirs: &[(&str, DirMeta)],
) -> Result<Vec<LayerEntry>, CopyError> {
    let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    let req = CopyRequest {
        sources: &sources,
        dest,
        workdir: "/srv",
        owner: (0, 0),
        chmod: None,
        mtime: 1000,
    };
    copy_with(&req, image_dirs)
}

fn copy_with(
    req: &CopyRequest<'_>,
    image_dirs: &[(&str, DirMeta)],
) -> Result<Vec<LayerEntry>, CopyError> {
    let image_dirs: Vec<(String, DirMeta)> = image_dirs
        .iter()
        .map(|(p, m)| (p.to_string(), *m))
        .collect();
    copy_entries(
        &context(),
        &IgnoreMatcher::empty(),
        req,
        &SourceFiles {
            content_of: &|e: &Entry| Content::Host(PathBuf::from("/ctx").join(&e.path)),
            xattrs_of: &|_| Vec::new(),
        },
        &|p: &str| image_dirs.iter().find(|(d, _)| d == p).map(|(_, m)| *m),
    )
}

fn paths(entries: &[LayerEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect()
}

fn get<'a>(entries: &'a [LayerEntry], path: &str) -> &'a LayerEntry {
    entries
        .iter()
        .find(|e| e.path == path.as_bytes())
        .unwrap_or_else(|| panic!("{path} in {:?}", paths(entries)))
}

const ROOT_700: DirMeta = DirMeta {
    mode: 0o700,
    uid: 5,
    gid: 6,
    mtime: 77,
};

#[test]
fn a_file_goes_into_a_folder_named_with_a_slash_or_becomes_the_destination() {
    let into = copy(&["app.jar"], "/app/", &[]).unwrap();
    assert_eq!(paths(&into), ["app", "app/app.jar"]);
    let jar = get(&into, "app/app.jar");
    assert_eq!((jar.mode, jar.uid, jar.gid, jar.mtime), (0o644, 0, 0, 1000));
    assert_eq!(
        jar.kind,
        EntryKind::File {
            size: 10,
            content: Content::Host("/ctx/app.jar".into())
        }
    );
    let made = get(&into, "app");
    assert_eq!(
        (made.kind.clone(), made.mode, made.uid),
        (EntryKind::Dir, 0o755, 0)
    );
    let as_file = copy(&["app.jar"], "/app", &[]).unwrap();
    assert_eq!(paths(&as_file), ["app"]);
    assert!(matches!(get(&as_file, "app").kind, EntryKind::File { .. }));
    // A folder the image has: the file goes in, and the folder keeps the image's metadata.
    let existing = copy(&["app.jar"], "/usr", &[("usr", ROOT_700)]).unwrap();
    assert_eq!(paths(&existing), ["usr", "usr/app.jar"]);
    let usr = get(&existing, "usr");
    assert_eq!((usr.mode, usr.uid, usr.gid, usr.mtime), (0o700, 5, 6, 77));
}

#[test]
fn a_folder_copies_its_contents_relative_to_workdir() {
    let out = copy(&["src"], "code/", &[]).unwrap();
    assert_eq!(
        paths(&out),
        [
            "srv",
            "srv/code",
            "srv/code/a.rs",
            "srv/code/b.rs",
            "srv/code/sub",
            "srv/code/sub/c.rs"
        ]
    );
    assert_eq!(
        get(&out, "srv/code").mode,
        0o750,
        "the source folder's mode"
    );
    assert_eq!(get(&out, "srv").mode, 0o755, "a parent made new");
    assert_eq!(
        get(&out, "srv/code/sub/c.rs").kind,
        EntryKind::File {
            size: 0,
            content: Content::Empty
        }
    );
    let all = copy(&["."], "/app/", &[]).unwrap();
    assert_eq!(all.len(), 8, "app and the 7 entries: {:?}", paths(&all));
    assert_eq!(
        get(&all, "app/latest").kind,
        EntryKind::Symlink(b"app.jar".to_vec()),
        "links are copied as links"
    );
}

#[test]
fn several_sources_need_a_folder_and_wildcards_fill_one() {
    assert!(matches!(
        copy(&["app.jar", "src"], "/x", &[]),
        Err(CopyError::NotADirectory)
    ));
    let out = copy(&["app.jar", "src/a.rs"], "/x/", &[]).unwrap();
    assert_eq!(paths(&out), ["x", "x/a.rs", "x/app.jar"]);
    let wild = copy(&["src/*.rs"], "/y", &[]).unwrap();
    assert_eq!(paths(&wild), ["y", "y/a.rs", "y/b.rs"]);
    let one = copy(&["app.*"], "/z", &[]).unwrap();
    assert_eq!(paths(&one), ["z"], "one match: the destination is the file");
}

#[test]
fn chown_and_chmod_apply_to_everything_copied_but_not_to_parents() {
    let sources = vec!["src".to_string()];
    let req = CopyRequest {
        sources: &sources,
        dest: "/opt/app/",
        workdir: "/",
        owner: (1000, 1001),
        chmod: Some(0o640),
        mtime: 5,
    };
    let out = copy_with(&req, &[]).unwrap();
    for e in &out {
        let p = String::from_utf8_lossy(&e.path);
        if p == "opt" {
            assert_eq!((e.uid, e.mode), (0, 0o755));
        } else {
            assert_eq!((e.uid, e.gid, e.mode), (1000, 1001, 0o640), "{p}");
        }
    }
}

#[test]
fn missing_sources_and_escaping_destinations() {
    let e = copy(&["nope.jar"], "/app/", &[]).unwrap_err();
    assert!(e.to_string().contains("\"nope.jar\" not found"), "{e}");
    let e = copy(&["../x"], "/app/", &[]).unwrap_err();
    assert!(matches!(e, CopyError::Source(_)), "{e}");
    // `..` in the destination stops at the root.
    let out = copy(&["app.jar"], "../../../b", &[]).unwrap();
    assert_eq!(paths(&out), ["b"]);
}

#[test]
fn device_nodes_and_fifos_of_another_stage_are_copied_as_they_are() {
    let mut null = dir("devs/null", 0o666);
    null.kind = SourceKind::Char;
    null.device = Some(DeviceNumbers { major: 1, minor: 3 });
    let mut disk = dir("devs/disk", 0o660);
    disk.kind = SourceKind::Block;
    disk.device = Some(DeviceNumbers { major: 8, minor: 0 });
    let mut pipe = dir("devs/pipe", 0o600);
    pipe.kind = SourceKind::Fifo;
    let tree = Manifest {
        total_bytes: 0,
        entries: vec![dir("devs", 0o755), disk, null, pipe],
    };
    let sources = ["devs".to_owned()];
    let req = CopyRequest {
        sources: &sources,
        dest: "/dev/",
        workdir: "/",
        owner: (0, 0),
        chmod: None,
        mtime: 1000,
    };
    let out = copy_entries(
        &tree,
        &IgnoreMatcher::empty(),
        &req,
        &SourceFiles {
            content_of: &|_| Content::Empty,
            xattrs_of: &|_| Vec::new(),
        },
        &|_| None,
    )
    .unwrap();
    let kinds: Vec<(String, EntryKind, u32)> = out
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(&e.path).into_owned(),
                e.kind.clone(),
                e.mode,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("dev".to_owned(), EntryKind::Dir, 0o755),
            (
                "dev/disk".to_owned(),
                EntryKind::Block { major: 8, minor: 0 },
                0o660
            ),
            (
                "dev/null".to_owned(),
                EntryKind::Char { major: 1, minor: 3 },
                0o666
            ),
            ("dev/pipe".to_owned(), EntryKind::Fifo, 0o600),
        ]
    );
}
