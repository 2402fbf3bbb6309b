use super::*;

const BASE: &str = r#"{"architecture":"amd64","os":"linux","container":"abc","docker_version":"20",
    "config":{"Cmd":["sh"],"Env":["PATH=/usr/bin:/bin","HOME=/root"],"Healthcheck":{"Test":["NONE"]},
              "Labels":{"base":"yes"}},
    "rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
    "history":[{"created":"2020-01-01T00:00:00Z","created_by":"base"}]}"#;

fn clock() -> Clock {
    Clock {
        epoch: Some(1_700_000_000),
    }
}

#[test]
fn steps_change_the_base_config_and_keep_what_skiff_does_not_know() {
    let mut c = BuildConfig::from_base(BASE.as_bytes()).unwrap();
    c.set_env("PATH", "/opt/bin:/usr/bin:/bin");
    c.set_env("APP", "1");
    c.set_working_dir("/srv");
    c.set_working_dir("app/../web");
    c.set_user("1000:1000");
    c.expose("80");
    c.expose("53/UDP");
    c.add_volume("/data");
    c.set_label("org.example", "x");
    c.set_stop_signal("SIGQUIT");
    c.set_entrypoint(vec!["/bin/server".into()]);
    c.add_history(clock(), "ENV APP=1", true);
    c.add_layer(&Digest::of(b"layer"));
    c.add_history(clock(), "RUN make", false);
    let blob = c.finish(clock());
    let v: Value = serde_json::from_slice(&blob).unwrap();
    let cfg = &v["config"];
    assert_eq!(
        cfg["Env"],
        json!(["PATH=/opt/bin:/usr/bin:/bin", "HOME=/root", "APP=1"])
    );
    assert_eq!(cfg["WorkingDir"], "/srv/web");
    assert_eq!(cfg["User"], "1000:1000");
    assert_eq!(cfg["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
    assert_eq!(cfg["Volumes"], json!({"/data": {}}));
    assert_eq!(cfg["Labels"], json!({"base": "yes", "org.example": "x"}));
    assert_eq!(cfg["StopSignal"], "SIGQUIT");
    assert_eq!(cfg["Entrypoint"], json!(["/bin/server"]));
    assert!(cfg.get("Cmd").is_none(), "ENTRYPOINT clears the base's Cmd");
    assert_eq!(
        cfg["Healthcheck"],
        json!({"Test": ["NONE"]}),
        "kept as it was"
    );
    assert!(v.get("container").is_none() && v.get("docker_version").is_none());
    assert_eq!(v["created"], "2023-11-14T22:13:20Z");
    assert_eq!(v["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[1]["empty_layer"], true);
    assert!(history[2].get("empty_layer").is_none());
    // Canonical: keys sorted, no whitespace, the same bytes again.
    let text = String::from_utf8(blob.clone()).unwrap();
    assert!(!text.contains(": ") && !text.contains('\n'));
    assert!(text.find("\"architecture\"") < text.find("\"config\""));
}

#[test]
fn a_cmd_of_the_stage_survives_a_later_entrypoint() {
    let mut c = BuildConfig::scratch();
    c.set_cmd(vec!["--help".into()]);
    c.set_entrypoint(vec!["/app".into()]);
    assert_eq!(c.as_json()["config"]["Cmd"], json!(["--help"]));
    assert_eq!(c.shell(), ["/bin/sh", "-c"]);
    c.set_shell(vec!["/bin/bash".into(), "-ec".into()]);
    assert_eq!(c.shell(), ["/bin/bash", "-ec"]);
    assert_eq!(c.working_dir(), "/");
}

#[test]
fn a_base_config_of_the_wrong_shape_is_refused() {
    assert!(matches!(
        BuildConfig::from_base(b"[1]"),
        Err(ImageConfigError::NotAnObject)
    ));
    assert!(matches!(
        BuildConfig::from_base(br#"{"history":{}}"#),
        Err(ImageConfigError::Field("history"))
    ));
    assert!(matches!(
        BuildConfig::from_base(br#"{"rootfs":{"diff_ids":"x"}}"#),
        Err(ImageConfigError::Field("rootfs.diff_ids"))
    ));
    // Missing sections are filled in.
    let c = BuildConfig::from_base(b"{}").unwrap();
    assert!(c.diff_ids().is_empty());
}

#[test]
fn manifests_name_their_blobs_with_the_format_media_types() {
    let config = Descriptor {
        digest: Digest::of(b"config"),
        size: 6,
        gzip: true,
    };
    let layer = Descriptor {
        digest: Digest::of(b"layer"),
        size: 5,
        gzip: true,
    };
    for format in [Format::Oci, Format::Docker] {
        let m: Value =
            serde_json::from_slice(&manifest(format, &config, std::slice::from_ref(&layer)))
                .unwrap();
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], format.manifest_type());
        assert_eq!(m["config"]["digest"], config.digest.to_string());
        assert_eq!(m["config"]["size"], 6);
        assert_eq!(m["layers"][0]["mediaType"], format.layer_type());
        assert_eq!(m["layers"][0]["size"], 5);
    }
}

#[test]
fn a_base_without_history_gets_an_entry_per_layer_in_front() {
    let base = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"a").to_string(), Digest::of(b"b").to_string()]},
        "history": [{"created_by": "one", "empty_layer": true}, {"created_by": "two"}],
    });
    let c = BuildConfig::from_base(&serde_json::to_vec(&base).unwrap()).unwrap();
    let history = c.doc["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0], serde_json::json!({}));
    assert_eq!(history[2]["created_by"], "two");
    let none = serde_json::json!({"rootfs": {"diff_ids": [Digest::of(b"a").to_string()]}});
    let c = BuildConfig::from_base(&serde_json::to_vec(&none).unwrap()).unwrap();
    assert_eq!(c.doc["history"], serde_json::json!([{}]));
}
