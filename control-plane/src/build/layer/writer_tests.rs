use std::io::{Read, Write};

use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::build::layer::spool::spool_tar;
use crate::images::limits::Limits;
use crate::images::unpack::Budget;

fn entry(path: &str, kind: EntryKind) -> LayerEntry {
    LayerEntry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        xattrs: Vec::new(),
    }
}

fn file(path: &str, spool: &mut File, bytes: &[u8]) -> LayerEntry {
    let offset = spool.metadata().unwrap().len();
    spool.write_all(bytes).unwrap();
    entry(
        path,
        EntryKind::File {
            size: bytes.len() as u64,
            content: Content::Spooled { offset },
        },
    )
}

/// (path, type, mode, uid, gid, mtime, link, content) of each entry of a written layer.
type Read_ = (String, char, u32, u64, u64, u64, Option<String>, Vec<u8>);

fn read_back(blob: &[u8]) -> Vec<Read_> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(GzDecoder::new(blob));
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        assert!(h.username_bytes().unwrap_or_default().is_empty());
        assert!(h.groupname_bytes().unwrap_or_default().is_empty());
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((
            path,
            h.entry_type().as_byte() as char,
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
            link,
            data,
        ));
    }
    out
}

#[test]
fn the_same_entries_in_any_order_give_the_same_bytes() {
    let mut spool = tempfile::tempfile().unwrap();
    let mut entries = vec![
        entry("usr", EntryKind::Dir),
        file("usr/b.txt", &mut spool, b"bee"),
        file("usr/a.txt", &mut spool, b"ay"),
        entry("usr/link", EntryKind::Symlink(b"a.txt".to_vec())),
        entry(
            "usr/.wh.gone",
            EntryKind::File {
                size: 0,
                content: Content::Empty,
            },
        ),
        entry("dev-null", EntryKind::Char { major: 1, minor: 3 }),
    ];
    entries[0].mode = 0o755;
    entries[2].uid = 1000;
    entries[2].gid = 1001;
    let mut one = Vec::new();
    let d1 = write_layer(entries.clone(), Some(&spool), None, &mut one).unwrap();
    entries.reverse();
    let mut two = Vec::new();
    let d2 = write_layer(entries, Some(&spool), None, &mut two).unwrap();
    assert_eq!(one, two);
    assert_eq!(d1, d2);
    // gzip: no mtime in its header, an "unknown" OS byte.
    assert_eq!(&one[4..8], &[0, 0, 0, 0]);
    assert_eq!(one[9], 255);
    assert_eq!(d1.size, one.len() as u64);
    assert_eq!(d1.digest.hex(), hex::encode(Sha256::digest(&one)));
    let mut tar = Vec::new();
    GzDecoder::new(&one[..]).read_to_end(&mut tar).unwrap();
    assert_eq!(d1.uncompressed_size, tar.len() as u64);
    assert_eq!(d1.diff_id.hex(), hex::encode(Sha256::digest(&tar)));
    let back = read_back(&one);
    let names: Vec<&str> = back.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "dev-null",
            "usr/",
            "usr/.wh.gone",
            "usr/a.txt",
            "usr/b.txt",
            "usr/link"
        ]
    );
    assert_eq!(back[1].2, 0o755);
    assert_eq!(
        (back[3].3, back[3].4, back[3].7.as_slice()),
        (1000, 1001, &b"ay"[..])
    );
    assert_eq!(back[5].6.as_deref(), Some("a.txt"));
    assert_eq!(back[0].1, '3');
}

#[test]
fn source_date_epoch_clamps_every_mtime_and_keeps_earlier_ones() {
    let mut a = entry("a", EntryKind::Dir);
    a.mtime = 10;
    let b = entry("b", EntryKind::Fifo);
    let mut out = Vec::new();
    write_layer(vec![a, b], None, Some(1000), &mut out).unwrap();
    let back = read_back(&out);
    assert_eq!((back[0].5, back[1].5), (10, 1000));
}

#[test]
fn long_names_and_link_targets_get_pax_records_only_when_needed() {
    let deep = format!("{}/{}", "d".repeat(150), "f".repeat(90));
    let huge = "y".repeat(300);
    let target = format!("/{}", "t".repeat(150));
    let entries = vec![
        entry(&deep, EntryKind::Fifo),
        entry(&huge, EntryKind::Fifo),
        entry("l", EntryKind::Symlink(target.clone().into_bytes())),
    ];
    let mut out = Vec::new();
    write_layer(entries, None, None, &mut out).unwrap();
    let back = read_back(&out);
    assert_eq!(back[0].0, deep, "split into prefix and name, no PAX");
    assert_eq!(back[1].6.as_deref(), Some(target.as_str()));
    assert_eq!(back[2].0, huge);
    let mut tar = Vec::new();
    GzDecoder::new(&out[..]).read_to_end(&mut tar).unwrap();
    let pax_headers = tar
        .chunks(512)
        .filter(|b| b.len() > 156 && b[156] == b'x')
        .count();
    assert_eq!(
        pax_headers, 2,
        "one for the long link, one for the long name"
    );
}

#[test]
fn a_hard_link_is_written_after_the_name_that_holds_the_content() {
    let mut spool = tempfile::tempfile().unwrap();
    let entries = vec![
        file("z", &mut spool, b"shared"),
        entry("a", EntryKind::Hardlink(b"z".to_vec())),
        entry("m", EntryKind::Hardlink(b"a".to_vec())),
    ];
    let mut out = Vec::new();
    write_layer(entries, Some(&spool), None, &mut out).unwrap();
    let back = read_back(&out);
    assert_eq!((back[0].0.as_str(), back[0].1), ("a", '0'));
    assert_eq!(back[0].7, b"shared");
    for e in &back[1..] {
        assert_eq!((e.1, e.6.as_deref()), ('1', Some("a")), "{e:?}");
    }
}

#[test]
fn bad_entries_are_refused_by_name() {
    let dangling = vec![entry("a", EntryKind::Hardlink(b"nowhere".to_vec()))];
    let e = write_layer(dangling, None, None, Vec::new()).unwrap_err();
    assert!(
        e.to_string().contains("which the layer does not hold"),
        "{e}"
    );
    let twice = vec![entry("a", EntryKind::Fifo), entry("a", EntryKind::Dir)];
    let e = write_layer(twice, None, None, Vec::new()).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, b"abc").unwrap();
    let shrunk = vec![entry(
        "f",
        EntryKind::File {
            size: 10,
            content: Content::Host(short.clone()),
        },
    )];
    let e = write_layer(shrunk, None, None, Vec::new()).unwrap_err();
    assert!(
        matches!(&e, LayerError::Content { entry, .. } if entry == "f"),
        "{e}"
    );
    std::os::unix::fs::symlink(&short, dir.path().join("link")).unwrap();
    let through_link = vec![entry(
        "f",
        EntryKind::File {
            size: 3,
            content: Content::Host(dir.path().join("link")),
        },
    )];
    assert!(write_layer(through_link, None, None, Vec::new()).is_err());
}

/// A tar header with any name, written raw (the tar crate refuses `..` itself).
fn raw_entry(out: &mut Vec<u8>, name: &[u8], kind: EntryType, data: &[u8]) {
    let mut h = Header::new_ustar();
    h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(0o600);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[test]
fn a_hostile_tar_is_refused_or_made_canonical() {
    let dir = tempfile::tempdir().unwrap();
    let budget = || Budget::new(Limits::default());
    for bad in [&b"../../etc/passwd"[..], b"/etc/passwd", b"a/../../b"] {
        let mut tar = Vec::new();
        raw_entry(&mut tar, bad, EntryType::Regular, b"x");
        tar.extend_from_slice(&[0; 1024]);
        let e = spool_tar(&tar[..], &budget(), dir.path()).unwrap_err();
        assert!(matches!(e, LayerError::BadEntry { .. }), "{bad:?}: {e}");
    }
    // The last of two entries of one name wins; `./` is the root and is skipped.
    let mut tar = Vec::new();
    raw_entry(&mut tar, b"./", EntryType::Directory, b"");
    raw_entry(&mut tar, b"./etc//conf", EntryType::Regular, b"first");
    raw_entry(&mut tar, b"etc/conf", EntryType::Regular, b"second");
    raw_entry(&mut tar, b"etc/.wh.old", EntryType::Regular, b"");
    tar.extend_from_slice(&[0; 1024]);
    let s = spool_tar(&tar[..], &budget(), dir.path()).unwrap();
    assert_eq!(s.entries.len(), 2);
    let mut out = Vec::new();
    write_layer(s.entries, Some(&s.spool), None, &mut out).unwrap();
    let back = read_back(&out);
    assert_eq!(back[0].0, "etc/.wh.old");
    assert_eq!(
        (back[1].0.as_str(), back[1].7.as_slice()),
        ("etc/conf", &b"second"[..])
    );
    // Over the entry limit.
    let small = Budget::new(Limits {
        max_image_entries: 1,
        ..Limits::default()
    });
    let e = spool_tar(&tar[..], &small, dir.path()).unwrap_err();
    assert!(matches!(e, LayerError::Limit(_)), "{e}");
    // Over the byte limit: stops reading rather than spooling it all.
    let tiny = Budget::new(Limits {
        max_image_bytes: 1024,
        ..Limits::default()
    });
    let mut big = Vec::new();
    raw_entry(&mut big, b"big", EntryType::Regular, &[7u8; 4096]);
    big.extend_from_slice(&[0; 1024]);
    let e = spool_tar(&big[..], &tiny, dir.path()).unwrap_err();
    assert!(matches!(e, LayerError::Limit(_)), "{e}");
}

/// A tar with one file whose PAX header carries `xattrs`.
fn tar_with_xattrs(xattrs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let records: Vec<(String, &[u8])> = xattrs
        .iter()
        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
        .collect();
    b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
        .unwrap();
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(3);
    b.append_data(&mut h, "bin/ping", &b"elf"[..]).unwrap();
    b.into_inner().unwrap()
}

/// `vfs_cap_data` revision 2: CAP_NET_RAW (13) permitted, effective.
const CAPS: [u8; 20] = [
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn file_capabilities_are_kept_and_other_xattrs_refused() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget::new(Limits::default());
    let tar = tar_with_xattrs(&[("security.capability", &CAPS)]);
    let s = spool_tar(&tar[..], &budget, dir.path()).unwrap();
    assert_eq!(
        s.entries[0].xattrs,
        vec![("security.capability".to_owned(), CAPS.to_vec())]
    );
    let mut out = Vec::new();
    write_layer(s.entries, Some(&s.spool), None, &mut out).unwrap();
    let mut archive = tar::Archive::new(GzDecoder::new(&out[..]));
    let mut e = archive.entries().unwrap().next().unwrap().unwrap();
    let records: Vec<(String, Vec<u8>)> = e
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.key().unwrap().to_owned(), r.value_bytes().to_vec())
        })
        .collect();
    assert_eq!(
        records,
        vec![("SCHILY.xattr.security.capability".to_owned(), CAPS.to_vec())]
    );
    let mut data = Vec::new();
    e.read_to_end(&mut data).unwrap();
    assert_eq!(data, b"elf");
    // A forged stream's other names and oversized values are refused by name.
    for (name, value, why) in [
        ("user.note", &b"x"[..], "keeps only security.capability"),
        (
            "trusted.overlay.opaque",
            b"y",
            "keeps only security.capability",
        ),
        ("security.capability", &[0u8; 64][..], "64 bytes"),
    ] {
        let tar = tar_with_xattrs(&[(name, value)]);
        let e = spool_tar(&tar[..], &budget, dir.path()).unwrap_err();
        assert!(
            matches!(&e, LayerError::BadEntry { entry, .. } if entry == "bin/ping"),
            "{e}"
        );
        assert!(e.to_string().contains(why), "{e}");
    }
}
