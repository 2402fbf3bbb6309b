//! `skiff apply -f FILE`: makes the networks and services a YAML or JSON file describes
//! exist as written. Missing ones are created; a service that exists is patched with the
//! file's fields (the server changes nothing when they are what it has, so a second apply
//! of the same file changes nothing); a network that exists is left as it is, unless the
//! file asks for another subnet, which is an error (a network's subnet does not change).
//!
//! ```yaml
//! networks:
//!   - name: shop
//! services:
//!   - name: web
//!     desiredCount: 2
//!     taskTemplate: {image: local/busybox, networkMode: shop, command: [httpd, -f]}
//!     healthCheck: {httpGet: {port: 80, path: /}}
//!     loadBalancer: {hostPort: 8080, containerPort: 80}
//! ```

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};

use super::remote::Api;

/// The largest file read.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    networks: Vec<NetworkSpec>,
    /// Each as `POST /v1/services` takes it.
    #[serde(default)]
    services: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSpec {
    name: String,
    subnet: Option<String>,
}

/// The file's text (`-`: standard input), at most [`MAX_FILE`] bytes.
fn read(file: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    let what = file.display();
    if file == Path::new("-") {
        std::io::stdin()
            .take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("cannot open {what}"))?
            .take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read {what} (is it UTF-8 text?)"))?;
    }
    if text.len() as u64 > MAX_FILE {
        bail!("{what}: larger than {} KiB", MAX_FILE >> 10);
    }
    Ok(text)
}

/// JSON when it looks like JSON, else YAML (a superset).
fn parse(text: &str, file: &Path) -> anyhow::Result<Manifest> {
    let what = file.display();
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| anyhow!("{what}: not valid JSON: {e}"))?
    } else {
        yaml_serde::from_str(text).map_err(|e| anyhow!("{what}: not valid YAML: {e}"))?
    };
    if value.is_null() {
        bail!("{what}: empty");
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        anyhow!("{what}: {path}: {}", e.into_inner())
    })
}

pub fn apply(api: &Api, file: &Path) -> anyhow::Result<i32> {
    let m = parse(&read(file)?, file)?;
    for n in &m.networks {
        match api.get_opt(&format!("/v1/networks/{}", n.name))? {
            None => {
                let mut body = json!({ "name": n.name });
                if let Some(s) = &n.subnet {
                    body["subnet"] = json!(s);
                }
                api.post("/v1/networks", &body)?;
                crate::outln!("network {}: created", n.name);
            }
            Some(cur) => {
                if let Some(want) = &n.subnet {
                    let have = cur["subnet"].as_str().unwrap_or_default();
                    if have != want {
                        bail!(
                            "network {}: exists with subnet {have}, the file asks for {want}; a network's subnet does not change (remove it first)",
                            n.name
                        );
                    }
                }
                crate::outln!("network {}: unchanged", n.name);
            }
        }
    }
    for (i, s) in m.services.iter().enumerate() {
        let name = s["name"]
            .as_str()
            .ok_or_else(|| anyhow!("services[{i}].name: missing"))?;
        let path = format!("/v1/services/{name}");
        match api.get_opt(&path)? {
            None => {
                api.post("/v1/services", s)?;
                crate::outln!("service {name}: created");
            }
            Some(cur) => {
                let mut body = s.clone();
                if let Some(o) = body.as_object_mut() {
                    o.remove("name");
                }
                let after = api.patch(&path, &body)?;
                let revision = &after["current"]["revision"];
                if after["updatedMs"] == cur["updatedMs"] {
                    crate::outln!("service {name}: unchanged");
                } else if *revision != cur["current"]["revision"] {
                    crate::outln!("service {name}: updated (deployment of revision {revision})");
                } else {
                    crate::outln!("service {name}: updated");
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_read_the_same_and_bad_fields_are_named() {
        let yaml = "networks:\n  - name: shop\nservices:\n  - name: web\n    desiredCount: 2\n    taskTemplate: {image: b}\n";
        let json = r#"{"networks":[{"name":"shop"}],"services":[{"name":"web","desiredCount":2,"taskTemplate":{"image":"b"}}]}"#;
        let (a, b) = (
            parse(yaml, Path::new("f")).unwrap(),
            parse(json, Path::new("f")).unwrap(),
        );
        assert_eq!(a.services, b.services);
        assert_eq!(a.networks[0].name, "shop");
        let e = parse("servics: []\n", Path::new("f.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.yaml: ") && e.contains("unknown field `servics`"),
            "{e}"
        );
        let e = parse("networks: [{name: a, cidr: x}]\n", Path::new("f"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("networks[0]") && e.contains("cidr"), "{e}");
        let e = parse("a: [\n", Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("not valid YAML"), "{e}");
        assert!(parse("", Path::new("f")).is_err());
    }
}
