//! The bearer-token flow (`WWW-Authenticate: Bearer realm=…`) against a real registry in
//! token mode, with a token service on loopback that signs JWTs with `openssl`.

use skiff_tests as common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use common::token::{Issuer, TokenServer};
use common::*;
use control_plane::images::registry::Credentials;
use control_plane::images::registry::{RegistryClient, RegistryError, RegistryOptions};
use control_plane::images::{ImageStore, PullError, Reference};
use serde_json::json;

fn client(reg: &Registry, password: Option<&str>) -> Result<RegistryClient> {
    let mut credentials = HashMap::new();
    if let Some(p) = password {
        credentials.insert(
            reg.addr.clone(),
            Credentials {
                username: "alice".into(),
                password: p.into(),
            },
        );
    }
    Ok(RegistryClient::new(RegistryOptions {
        credentials,
        insecure: vec![reg.addr.clone()],
        ..Default::default()
    })?)
}

#[test]
fn bearer_tokens_are_fetched_with_credentials_and_reused() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let issuer = Arc::new(Issuer::new(keys.path())?);
    let tokens = TokenServer::start(issuer.clone(), ("alice", "s3cret"))?;
    let reg = Registry::start_token(&tokens.realm, issuer)?;
    let pushed = reg.push_image(
        "team/secret",
        "v1",
        OCI_MANIFEST,
        &[Layer::zstd(
            Tar::new().file("etc/motd", "tokens work").build(),
        )],
        json!({}),
    )?;
    let r: Reference = format!("{}/team/secret:v1", reg.addr).parse()?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;

    let good = client(&reg, Some("s3cret"))?;
    let image = store.pull(&good, &r, &|_| {})?;
    assert_eq!(image.manifest_digest, pushed.manifest);
    assert_eq!(
        tokens.requests.load(Ordering::SeqCst),
        1,
        "one token for manifest, config and layer"
    );
    store.pull(&good, &r, &|_| {})?;
    assert_eq!(
        tokens.requests.load(Ordering::SeqCst),
        1,
        "the token is reused"
    );

    let fresh = tempfile::tempdir()?;
    let store = ImageStore::open(fresh.path(), None)?;
    let err = store
        .pull(&client(&reg, Some("nope"))?, &r, &|_| {})
        .unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::AuthFailed { .. })),
        "{err:?}"
    );
    let err = store.pull(&client(&reg, None)?, &r, &|_| {}).unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::AuthRequired { .. })),
        "{err:?}"
    );
    Ok(())
}
