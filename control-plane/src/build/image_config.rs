//! The config and manifest of a built image: the base image's config carried forward
//! (fields Skiff does not know included, as Docker keeps them), changed by each step, with
//! one history entry per step and one diff_id per layer; then serialised canonically (keys
//! sorted, no whitespace) so that the same build gives the same digests.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::images::digest::Digest;

/// The media types of one output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    /// Docker's image manifest v2 schema 2.
    Docker,
}

impl Format {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.manifest.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    pub fn config_type(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.config.v1+json",
            Format::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    /// A gzip layer's media type (every layer a build writes).
    pub fn layer_type(self) -> &'static str {
        self.layer_type_of(true)
    }

    /// The media type of a layer, compressed with gzip or not (a base image's may be not).
    pub fn layer_type_of(self, gzip: bool) -> &'static str {
        match (self, gzip) {
            (Format::Oci, true) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Format::Oci, false) => "application/vnd.oci.image.layer.v1.tar",
            (Format::Docker, true) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            (Format::Docker, false) => "application/vnd.docker.image.rootfs.diff.tar",
        }
    }
}

/// A base config that cannot be built on.
#[derive(Debug, thiserror::Error)]
pub enum ImageConfigError {
    #[error("the base image's config is not a JSON object")]
    NotAnObject,
    #[error("the base image's config field {0:?} has the wrong type")]
    Field(&'static str),
}

/// An image config being built.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    doc: Map<String, Value>,
    /// A `CMD` of this build's stage (an `ENTRYPOINT` after it keeps it).
    cmd_set: bool,
}

/// What a config change's timestamps are: the build's clock, or `SOURCE_DATE_EPOCH`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub epoch: Option<u64>,
}

impl Clock {
    /// "Now" for a history entry or `created`: the epoch when one is given.
    pub fn now(self) -> SystemTime {
        match self.epoch {
            Some(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
            None => SystemTime::now(),
        }
    }

    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_seconds(self.now()).to_string()
    }
}

/// A base whose history names fewer layers than it has (none at all, often, in images
/// made by hand) gets empty entries in front, as BuildKit does, so that the result keeps
/// "non-empty history entries = layers", which buildah and others check.
fn pad_history(doc: &mut Map<String, Value>) {
    let layers = doc
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let Some(Value::Array(history)) = doc.get_mut("history") else {
        return;
    };
    let named = history
        .iter()
        .filter(|h| h.get("empty_layer").and_then(Value::as_bool) != Some(true))
        .count();
    if named < layers {
        let missing = layers - named;
        history.splice(0..0, std::iter::repeat_n(json!({}), missing));
    }
}

impl BuildConfig {
    /// The config of `FROM scratch`.
    pub fn scratch() -> Self {
        let doc = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        });
        match doc {
            Value::Object(doc) => BuildConfig {
                doc,
                cmd_set: false,
            },
            _ => unreachable!("a JSON object literal"),
        }
    }

    /// The base image's config blob, carried forward whole.
    pub fn from_base(blob: &[u8]) -> Result<Self, ImageConfigError> {
        let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(blob) else {
            return Err(ImageConfigError::NotAnObject);
        };
        for (key, want_object) in [("config", true), ("rootfs", true), ("history", false)] {
            match doc.get(key) {
                None | Some(Value::Null) => {
                    let empty = if want_object { json!({}) } else { json!([]) };
                    doc.insert(key.into(), empty);
                }
                Some(Value::Object(_)) if want_object => {}
                Some(Value::Array(_)) if !want_object => {}
                Some(_) => return Err(ImageConfigError::Field(key)),
            }
        }
        let rootfs = doc
            .get_mut("rootfs")
            .and_then(Value::as_object_mut)
            .ok_or(ImageConfigError::Field("rootfs"))?;
        rootfs.insert("type".into(), json!("layers"));
        match rootfs.get("diff_ids") {
            None | Some(Value::Null) => {
                rootfs.insert("diff_ids".into(), json!([]));
            }
            Some(Value::Array(_)) => {}
            Some(_) => return Err(ImageConfigError::Field("rootfs.diff_ids")),
        }
        pad_history(&mut doc);
        let mut c = BuildConfig {
            doc,
            cmd_set: false,
        };
        // Container-specific leftovers of `docker commit` are not the built image's.
        for key in [
            "container",
            "container_config",
            "docker_version",
            "parent",
            "id",
        ] {
            c.doc.remove(key);
        }
        c.doc.insert("architecture".into(), json!("amd64"));
        c.doc.insert("os".into(), json!("linux"));
        Ok(c)
    }

    fn run_config(&mut self) -> &mut Map<String, Value> {
        let c = self.doc.entry("config").or_insert_with(|| json!({}));
        if !c.is_object() {
            *c = json!({});
        }
        match c {
            Value::Object(m) => m,
            _ => unreachable!("made an object just above"),
        }
    }

    /// The strings of the array at `section.key` (non-strings skipped; none when absent).
    fn strings_at(&self, section: &str, key: &str) -> Vec<String> {
        self.doc
            .get(section)
            .and_then(|c| c.get(key))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Env` as (name, value) pairs, in order.
    pub fn env(&self) -> Vec<(String, String)> {
        self.strings_at("config", "Env")
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect()
    }

    /// Sets one variable: replaced in place if it is there, else appended.
    pub fn set_env(&mut self, name: &str, value: &str) {
        let mut env = self.env();
        match env.iter_mut().find(|(k, _)| k == name) {
            Some(kv) => kv.1 = value.to_owned(),
            None => env.push((name.to_owned(), value.to_owned())),
        }
        let list: Vec<Value> = env.iter().map(|(k, v)| json!(format!("{k}={v}"))).collect();
        self.run_config().insert("Env".into(), Value::Array(list));
    }

    pub fn working_dir(&self) -> String {
        self.doc
            .get("config")
            .and_then(|c| c.get("WorkingDir"))
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_owned()
    }

    /// `WORKDIR`: a relative path goes on from the current one.
    pub fn set_working_dir(&mut self, dir: &str) {
        let dir = if dir.starts_with('/') {
            clean_abs(dir)
        } else {
            clean_abs(&format!("{}/{dir}", self.working_dir()))
        };
        self.run_config().insert("WorkingDir".into(), json!(dir));
    }

    pub fn user(&self) -> String {
        self.doc
            .get("config")
            .and_then(|c| c.get("User"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    pub fn set_user(&mut self, user: &str) {
        self.run_config().insert("User".into(), json!(user));
    }

    /// `ENTRYPOINT`: as Docker, it clears a `Cmd` the base image had, but not one this
    /// stage set before it.
    pub fn set_entrypoint(&mut self, argv: Vec<String>) {
        let cmd_set = self.cmd_set;
        let c = self.run_config();
        c.insert("Entrypoint".into(), json!(argv));
        if !cmd_set {
            c.remove("Cmd");
        }
    }

    pub fn set_cmd(&mut self, argv: Vec<String>) {
        self.cmd_set = true;
        self.run_config().insert("Cmd".into(), json!(argv));
    }

    /// The shell of shell-form commands (`SHELL`, else `/bin/sh -c`).
    pub fn shell(&self) -> Vec<String> {
        let s = self.strings_at("config", "Shell");
        if s.is_empty() {
            vec!["/bin/sh".into(), "-c".into()]
        } else {
            s
        }
    }

    pub fn set_shell(&mut self, argv: Vec<String>) {
        self.run_config().insert("Shell".into(), json!(argv));
    }

    /// Adds keys to one of the config's `{"key": {}}` sets (`ExposedPorts`, `Volumes`).
    fn add_to_set(&mut self, field: &str, key: String) {
        let c = self.run_config();
        let set = c.entry(field).or_insert_with(|| json!({}));
        if !set.is_object() {
            *set = json!({});
        }
        if let Value::Object(m) = set {
            m.insert(key, json!({}));
        }
    }

    /// `EXPOSE 80` / `80/udp`: stored as `"80/tcp": {}`.
    pub fn expose(&mut self, port: &str) {
        let key = if port.contains('/') {
            port.to_ascii_lowercase()
        } else {
            format!("{port}/tcp")
        };
        self.add_to_set("ExposedPorts", key);
    }

    pub fn add_volume(&mut self, path: &str) {
        self.add_to_set("Volumes", path.to_owned());
    }

    pub fn set_label(&mut self, key: &str, value: &str) {
        let c = self.run_config();
        let labels = c.entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        if let Value::Object(m) = labels {
            m.insert(key.to_owned(), json!(value));
        }
    }

    pub fn set_stop_signal(&mut self, signal: &str) {
        self.run_config().insert("StopSignal".into(), json!(signal));
    }

    /// One history entry for a step; `empty_layer` when it made no layer.
    pub fn add_history(&mut self, clock: Clock, created_by: &str, empty_layer: bool) {
        let mut h = json!({"created": clock.rfc3339(), "created_by": created_by});
        if empty_layer {
            h["empty_layer"] = json!(true);
        }
        if let Some(Value::Array(history)) = self.doc.get_mut("history") {
            history.push(h);
        }
    }

    /// A layer the step made (its uncompressed digest).
    pub fn add_layer(&mut self, diff_id: &Digest) {
        if let Some(Value::Array(ids)) = self
            .doc
            .get_mut("rootfs")
            .and_then(|r| r.get_mut("diff_ids"))
        {
            ids.push(json!(diff_id.to_string()));
        }
    }

    /// The layers' diff_ids, bottom first.
    pub fn diff_ids(&self) -> Vec<String> {
        self.strings_at("rootfs", "diff_ids")
    }

    /// The finished config blob: `created` set, keys sorted, no whitespace.
    pub fn finish(mut self, clock: Clock) -> Vec<u8> {
        self.doc.insert("created".into(), json!(clock.rfc3339()));
        // A Map without serde_json's `preserve_order` is a BTreeMap: keys come out sorted.
        serde_json::to_vec(&Value::Object(self.doc)).unwrap_or_default()
    }

    /// The config as JSON, for tests and inspection.
    pub fn as_json(&self) -> &Map<String, Value> {
        &self.doc
    }
}

/// One blob a manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    pub size: u64,
    /// For a layer: gzip-compressed (else a plain tar). Ignored for the config.
    pub gzip: bool,
}

/// The image manifest of `config` and `layers` (bottom first), canonical JSON.
pub fn manifest(format: Format, config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|l| {
            json!({"mediaType": format.layer_type_of(l.gzip), "digest": l.digest.to_string(), "size": l.size})
        })
        .collect();
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest_type(),
        "config": {
            "mediaType": format.config_type(),
            "digest": config.digest.to_string(),
            "size": config.size,
        },
        "layers": layers,
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// An absolute path with `.`, `..` and repeated separators resolved (never above `/`).
fn clean_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
#[path = "image_config_tests.rs"]
mod tests;
