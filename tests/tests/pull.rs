//! Pulls from a real registry (Debian's docker-registry on 127.0.0.1): layer formats,
//! whiteouts, indexes, Docker schema2, missing tags, shared layers, concurrent pulls.

use skiff_tests as common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::sync::Mutex;

use anyhow::Result;
use common::layers::insecure_client;
use common::*;
use control_plane::images::registry::RegistryClient;
use control_plane::images::registry::RegistryError;
use control_plane::images::{ImageStore, PullError, PullEvent, Reference};
use serde_json::json;

fn client(reg: &Registry) -> RegistryClient {
    insecure_client(&reg.addr)
}

fn reference(reg: &Registry, name: &str) -> Reference {
    format!("{}/{name}", reg.addr).parse().unwrap()
}

fn base_layers() -> Vec<Layer> {
    vec![
        Layer::gzip(
            Tar::new()
                .dir("bin/")
                .exe("bin/hello", b"#!/bin/sh\necho hello\n")
                .symlink("bin/hi", "hello")
                .hardlink("bin/hello2", "bin/hello")
                .fifo("run/fifo")
                .chardev("dev/null", 1, 3)
                .file_with_xattr("bin/ping", "ping", "user.skiff", b"cap")
                .file("etc/gone", "g")
                .file("etc/keep", "k")
                .file("var/cache/a", "a")
                .file("var/cache/sub/b", "b")
                .file("opt/old/x", "x")
                .build(),
        ),
        Layer::zstd(
            Tar::new()
                .file("etc/zstd", "z")
                .file("var/lib/dropme/y", "y")
                .build(),
        ),
    ]
}

fn top_layer() -> Layer {
    Layer::plain(
        Tar::new()
            .file("etc/.wh.gone", "")
            .file("var/cache/new", "n")
            .file("var/cache/.wh..wh..opq", "")
            .file("opt/.wh..wh..opq", "")
            .file("opt/fresh", "f")
            .file("var/lib/.wh.dropme", "")
            .file("etc/plain", "p")
            .build(),
    )
}

#[test]
fn multi_layer_image_with_every_whiteout_and_compression_becomes_an_erofs_image() -> Result<()> {
    let reg = Registry::start()?;
    let mut layers = base_layers();
    layers.push(top_layer());
    let run = json!({"Entrypoint": ["/bin/hello"], "Cmd": ["--loud"], "Env": ["PATH=/bin", "MODE=test"],
        "WorkingDir": "/srv", "User": "1000:1000"});
    let pushed = reg.push_image("team/app", "1.2", OCI_MANIFEST, &layers, run)?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let events = Mutex::new(Vec::new());
    let image = store.pull(&client(&reg), &reference(&reg, "team/app:1.2"), &|e| {
        events.lock().unwrap().push(e)
    })?;
    assert_eq!(image.manifest_digest, pushed.manifest);
    assert_eq!(image.id(), &pushed.config);
    let run = image.config.run_defaults();
    assert_eq!(run.argv(None), ["/bin/hello", "--loud"]);
    assert_eq!(run.working_dir.as_deref(), Some("/srv"));
    assert_eq!(run.user.as_deref(), Some("1000:1000"));
    assert_eq!(run.env.unwrap(), ["PATH=/bin", "MODE=test"]);
    let events = events.into_inner().unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, PullEvent::LayerDone { .. }))
            .count(),
        3
    );

    let rootfs = store.rootfs(&image)?;
    assert!(!rootfs.cached);
    let out = tempfile::tempdir()?;
    let root = out.path().join("root");
    extract_erofs(&rootfs.path, &root)?;
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let exists = |p: &str| fs::symlink_metadata(root.join(p)).is_ok();
    assert_eq!(read("bin/hello"), "#!/bin/sh\necho hello\n");
    assert_eq!(
        fs::metadata(root.join("bin/hello"))?.permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(fs::read_link(root.join("bin/hi"))?.to_str(), Some("hello"));
    assert_eq!(
        erofs_nid(&rootfs.path, "/bin/hello2")?,
        erofs_nid(&rootfs.path, "/bin/hello")?,
        "hardlink"
    );
    assert!(fs::symlink_metadata(root.join("run/fifo"))?
        .file_type()
        .is_fifo());
    let null = fs::symlink_metadata(root.join("dev/null"))?;
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(
        erofs_xattr_size(&rootfs.path, "/bin/ping")? > 0,
        "xattr kept in the image"
    );
    assert_eq!(erofs_xattr_size(&rootfs.path, "/bin/hello")?, 0);
    assert!(!exists("etc/gone"), "file whiteout");
    assert_eq!(read("etc/keep"), "k");
    assert_eq!(read("etc/zstd"), "z");
    assert_eq!(read("etc/plain"), "p");
    assert!(
        !exists("var/cache/a") && !exists("var/cache/sub"),
        "opaque whiteout after entries"
    );
    assert_eq!(read("var/cache/new"), "n");
    assert!(!exists("opt/old"), "opaque whiteout before entries");
    assert_eq!(read("opt/fresh"), "f");
    assert!(
        !exists("var/lib/dropme") && exists("var/lib"),
        "directory whiteout"
    );
    assert!(!root.join("etc/.wh.gone").exists());

    // Warm: the same pull finds every blob and the built image.
    let again = store.pull(&client(&reg), &reference(&reg, "team/app:1.2"), &|_| {})?;
    assert!(store.rootfs(&again)?.cached);
    assert_eq!(
        reg.wait_blob_gets(4)?,
        4,
        "3 layers + config, each fetched once"
    );
    // Offline lookup by tag and by digest.
    let by_tag = store
        .lookup(&reference(&reg, "team/app:1.2"))?
        .expect("stored by tag");
    assert_eq!(by_tag.manifest_digest, pushed.manifest);
    let by_digest = store.lookup(&reference(&reg, &format!("team/app@{}", pushed.manifest)))?;
    assert!(by_digest.is_some());
    Ok(())
}

#[test]
fn an_index_resolves_to_linux_amd64_and_docker_schema2_pulls() -> Result<()> {
    let reg = Registry::start()?;
    let amd = reg.push_image(
        "multi",
        "amd64-only",
        OCI_MANIFEST,
        &[Layer::gzip(Tar::new().file("arch", "amd64").build())],
        json!({}),
    )?;
    let arm = Layer::gzip(Tar::new().file("arch", "arm64").build());
    let arm_manifest = reg.push_image("multi", "arm64-only", OCI_MANIFEST, &[arm], json!({}))?;
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": arm_manifest.manifest.to_string(), "size": arm_manifest.size,
         "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": OCI_MANIFEST, "digest": amd.manifest.to_string(), "size": amd.size,
         "platform": {"os": "linux", "architecture": "amd64"}}]});
    reg.push_manifest("multi", "latest", OCI_INDEX, &index)?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let image = store.pull(&client(&reg), &reference(&reg, "multi"), &|_| {})?;
    assert_eq!(image.manifest_digest, amd.manifest);
    assert_eq!(image.layers(), amd.layers);
    assert!(
        !store.blobs().contains(&arm_manifest.layers[0]),
        "the arm64 layer is not fetched"
    );

    let docker = reg.push_image(
        "dockerish",
        "v2",
        DOCKER_MANIFEST,
        &[Layer::gzip(Tar::new().file("etc/os", "docker").build())],
        json!({"Cmd": ["sh"]}),
    )?;
    let image = store.pull(&client(&reg), &reference(&reg, "dockerish:v2"), &|_| {})?;
    assert_eq!(image.manifest_digest, docker.manifest);
    assert_eq!(image.config.run_defaults().argv(None), ["sh"]);
    let root = tempfile::tempdir()?;
    extract_erofs(&store.rootfs(&image)?.path, &root.path().join("r"))?;
    assert_eq!(fs::read_to_string(root.path().join("r/etc/os"))?, "docker");
    Ok(())
}

#[test]
fn missing_tags_and_repositories_are_clear_errors() -> Result<()> {
    let reg = Registry::start()?;
    reg.push_image(
        "team/app",
        "1.0",
        OCI_MANIFEST,
        &[Layer::plain(Tar::new().file("a", "a").build())],
        json!({}),
    )?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let err = store
        .pull(&client(&reg), &reference(&reg, "team/app:1.2"), &|_| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Registry(RegistryError::ManifestUnknown { .. })
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "manifest unknown: tag 1.2 not found in registry {} (repository team/app)",
            reg.addr
        )
    );
    let err = store
        .pull(&client(&reg), &reference(&reg, "nobody/here:1.0"), &|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("not found in registry"), "{err}");
    let err = store
        .pull(&client(&reg), &"local/busybox:latest".parse()?, &|_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "image local/busybox:latest is not in the local store"
    );
    Ok(())
}

#[test]
fn a_second_image_sharing_base_layers_downloads_only_its_new_layers() -> Result<()> {
    let reg = Registry::start()?;
    let base = base_layers();
    let first = reg.push_image("app/one", "v1", OCI_MANIFEST, &base, json!({}))?;
    let mut second_layers = base.clone();
    second_layers.push(top_layer());
    let second = reg.push_image(
        "app/two",
        "v1",
        OCI_MANIFEST,
        &second_layers,
        json!({"Cmd": ["two"]}),
    )?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    store.pull(&client(&reg), &reference(&reg, "app/one:v1"), &|_| {})?;
    let before = reg.wait_blob_gets(3)?;
    assert_eq!(before, 3, "two layers and a config");
    let events = Mutex::new(Vec::new());
    let img = store.pull(&client(&reg), &reference(&reg, "app/two:v1"), &|e| {
        events.lock().unwrap().push(e)
    })?;
    assert_eq!(
        reg.wait_blob_gets(5)?,
        5,
        "only the new layer and the new config"
    );
    for shared in &first.layers {
        assert_eq!(reg.blob_gets(Some(shared)), 1, "{shared} fetched again");
    }
    assert_eq!(reg.blob_gets(Some(&second.layers[2])), 1);
    let cached = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerCached { .. }))
        .count();
    assert_eq!(cached, 2);
    assert_eq!(img.layers().len(), 3);
    Ok(())
}

#[test]
fn concurrent_pulls_of_one_image_fetch_each_blob_once() -> Result<()> {
    let reg = Registry::start()?;
    let big: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let layer = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "big.bin", big.as_slice())?;
        Layer::gzip(b.into_inner()?)
    };
    reg.push_image(
        "big",
        "v1",
        OCI_MANIFEST,
        &[layer, Layer::plain(Tar::new().file("small", "s").build())],
        json!({}),
    )?;
    let state = tempfile::tempdir()?;
    let r = reference(&reg, "big:v1");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (state, r, reg) = (state.path(), &r, &reg);
                s.spawn(move || {
                    let store = ImageStore::open(state, None)?;
                    let image = store.pull(&client(reg), r, &|_| {})?;
                    Ok::<_, anyhow::Error>(store.rootfs(&image)?.path)
                })
            })
            .collect();
        let paths: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect::<Result<_>>()?;
        assert!(paths.windows(2).all(|w| w[0] == w[1]));
        Ok::<_, anyhow::Error>(())
    })?;
    assert_eq!(
        reg.wait_blob_gets(3)?,
        3,
        "two layers and a config, once each"
    );
    let rootfs_files = fs::read_dir(state.path().join("rootfs"))?.filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
    });
    assert_eq!(rootfs_files.count(), 1);
    Ok(())
}

#[test]
fn an_image_pushed_by_skopeo_pulls_and_unpacks() -> Result<()> {
    let reg = Registry::start()?;
    let layout = tempfile::tempdir()?;
    let layers = [
        Layer::gzip(
            Tar::new()
                .file("etc/first", "1")
                .file("etc/old", "o")
                .build(),
        ),
        Layer::zstd(
            Tar::new()
                .file("etc/.wh.old", "")
                .file("etc/second", "2")
                .build(),
        ),
    ];
    write_oci_layout(layout.path(), "v3", &layers, json!({"Cmd": ["true"]}))?;
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v3", layout.path().display()))
        .arg(format!("docker://{}/by/skopeo:v3", reg.addr))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let image = store.pull(&client(&reg), &reference(&reg, "by/skopeo:v3"), &|_| {})?;
    assert_eq!(image.config.run_defaults().argv(None), ["true"]);
    let root = tempfile::tempdir()?;
    extract_erofs(&store.rootfs(&image)?.path, &root.path().join("r"))?;
    assert_eq!(fs::read_to_string(root.path().join("r/etc/second"))?, "2");
    assert_eq!(fs::read_to_string(root.path().join("r/etc/first"))?, "1");
    assert!(!root.path().join("r/etc/old").exists());
    Ok(())
}
