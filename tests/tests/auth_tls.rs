//! Basic auth over TLS against a real registry with a CA made by `openssl` in the test.

use skiff_tests as common;

use std::collections::HashMap;

use anyhow::Result;
use common::*;
use control_plane::images::registry::Credentials;
use control_plane::images::registry::{RegistryClient, RegistryError, RegistryOptions};
use control_plane::images::{ImageStore, PullError, Reference};
use serde_json::json;

fn client(reg: &Registry, user: Option<(&str, &str)>, ca: bool) -> Result<RegistryClient> {
    let mut credentials = HashMap::new();
    if let Some((u, p)) = user {
        credentials.insert(
            reg.addr.clone(),
            Credentials {
                username: u.into(),
                password: p.into(),
            },
        );
    }
    let ca_file = if ca {
        reg.tls.as_ref().map(|t| t.ca.clone())
    } else {
        None
    };
    Ok(RegistryClient::new(RegistryOptions {
        credentials,
        ca_file,
        ..Default::default()
    })?)
}

fn pull_err(store: &ImageStore, c: &RegistryClient, r: &Reference) -> PullError {
    store.pull(c, r, &|_| {}).expect_err("pull must fail")
}

#[test]
fn basic_auth_over_tls_pulls_and_bad_credentials_are_named() -> Result<()> {
    let reg = Registry::start_with(true, Some(("alice", "s3cret")))?;
    let pushed = reg.push_image(
        "private/app",
        "v1",
        OCI_MANIFEST,
        &[Layer::gzip(Tar::new().file("etc/secret", "42").build())],
        json!({"Cmd": ["cat", "/etc/secret"]}),
    )?;
    let r: Reference = format!("{}/private/app:v1", reg.addr).parse()?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;

    let image = store.pull(&client(&reg, Some(("alice", "s3cret")), true)?, &r, &|_| {})?;
    assert_eq!(image.manifest_digest, pushed.manifest);
    assert!(store.rootfs(&image)?.path.is_file());
    assert!(
        reg.log_text().contains("/v2/private/app/blobs/"),
        "blobs came from the TLS registry"
    );

    let fresh = tempfile::tempdir()?;
    let store = ImageStore::open(fresh.path(), None)?;
    let err = pull_err(&store, &client(&reg, Some(("alice", "wrong")), true)?, &r);
    assert!(
        matches!(err, PullError::Registry(RegistryError::AuthFailed { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "authentication failed for registry {}: wrong username or password",
            reg.addr
        )
    );

    let err = pull_err(&store, &client(&reg, None, true)?, &r);
    assert!(
        matches!(err, PullError::Registry(RegistryError::AuthRequired { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("requires authentication for private/app"),
        "{err}"
    );

    // Without the CA the certificate is not trusted, and we do not fall back to plain HTTP.
    let err = pull_err(&store, &client(&reg, Some(("alice", "s3cret")), false)?, &r);
    assert!(
        matches!(err, PullError::Registry(RegistryError::Unreachable { .. })),
        "{err:?}"
    );
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
    assert!(!store.blobs().contains(&pushed.layers[0]));
    Ok(())
}

#[test]
fn a_ca_file_without_certificates_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("empty.pem");
    std::fs::write(&ca, "not a certificate\n")?;
    let err = RegistryClient::new(RegistryOptions {
        ca_file: Some(ca.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, RegistryError::CaFile { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("reading CA file {}", ca.display())),
        "{err}"
    );
    Ok(())
}
