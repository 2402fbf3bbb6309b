//! `image ls / rm / prune` on a store filled from a real registry.

use skiff_tests as common;

use anyhow::Result;
use common::layers::insecure_client;
use common::*;
use control_plane::build::cache_key::CacheKey;
use control_plane::build::cache_store::{BuildCache, CacheRecord, CachedLayer};
use control_plane::images::{Digest, ImageStore, PullError, Reference};
use serde_json::json;

#[test]
fn list_remove_and_prune_keep_what_tags_still_reach() -> Result<()> {
    let reg = Registry::start()?;
    let base = Layer::gzip(Tar::new().file("etc/base", "b").build());
    let only_one = Layer::zstd(Tar::new().file("etc/one", "1").build());
    let only_two = Layer::plain(Tar::new().file("etc/two", "2").build());
    let one = reg.push_image(
        "app/one",
        "v1",
        OCI_MANIFEST,
        &[base.clone(), only_one],
        json!({"Cmd": ["one"]}),
    )?;
    let two = reg.push_image(
        "app/two",
        "v1",
        OCI_MANIFEST,
        &[base, only_two],
        json!({"Cmd": ["two"]}),
    )?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let client = insecure_client(&reg.addr);
    let r1: Reference = format!("{}/app/one:v1", reg.addr).parse()?;
    let r2: Reference = format!("{}/app/two:v1", reg.addr).parse()?;
    let i1 = store.pull(&client, &r1, &|_| {})?;
    let i2 = store.pull(&client, &r2, &|_| {})?;
    store.rootfs(&i1)?;
    store.rootfs(&i2)?;

    let listed = store.list()?;
    assert_eq!(
        listed
            .iter()
            .map(|s| s.reference.clone())
            .collect::<Vec<_>>(),
        [r1.clone(), r2.clone()]
    );
    assert_eq!(listed[0].id, one.config);
    assert!(listed.iter().all(|s| s.rootfs.is_some() && s.size > 0));
    assert_eq!(store.prune()?.blobs, 0, "everything is still tagged");

    // A download that never finished: prune deletes it too.
    let half = store.blobs().partial_path(&Digest::of(b"never finished"));
    std::fs::write(&half, b"half a blob")?;

    store.remove(&r1)?;
    let err = store.remove(&r1).unwrap_err();
    assert!(matches!(err, PullError::NotFound(_)), "{err:?}");
    let report = store.prune()?;
    assert_eq!(
        (report.blobs, report.rootfs),
        (3, 1),
        "manifest, config, own layer, rootfs of one: {report:?}"
    );
    assert_eq!(report.partial, 1);
    assert!(!half.exists());
    assert!(
        report
            .to_string()
            .starts_with("deleted 3 blobs, 1 root filesystem and 1 partial download: "),
        "{report}"
    );
    assert!(!store.blobs().contains(&one.layers[1]) && !store.blobs().contains(&one.manifest));
    assert!(
        store.blobs().contains(&one.layers[0]),
        "the shared base layer stays"
    );
    let kept = store.lookup(&r2)?.expect("two is intact");
    assert_eq!(kept.manifest_digest, two.manifest);
    assert!(store.rootfs(&kept)?.cached);
    assert_eq!(store.list()?.len(), 1);

    // A build cache record pins its layer: image prune keeps it until builder prune lets
    // the record go.
    let cache = BuildCache::new(state.path());
    cache.put(&CacheRecord {
        key: CacheKey::base(Some(&two.manifest)),
        layer: Some(CachedLayer {
            digest: two.layers[1].clone(),
            diff_id: Digest::of(b"its diff id"),
            size: 1,
        }),
        created_by: "RUN make".into(),
        created_ms: 1,
        last_used_ms: 1,
    })?;
    store.remove(&r2)?;
    store.prune()?;
    assert!(
        store.blobs().contains(&two.layers[1]),
        "pinned by the record"
    );
    assert!(!store.blobs().contains(&two.manifest) && !store.blobs().contains(&two.layers[0]));
    assert_eq!(cache.prune(true, None)?.records, 1);
    assert_eq!(store.prune()?.blobs, 1, "the layer the record pinned");
    assert!(!store.blobs().contains(&two.layers[1]));
    Ok(())
}
