//! A small CNI runner: executes a network configuration list's plugins in order for ADD
//! (each one given the previous one's result as `prevResult`), in reverse for DEL (given
//! the ADD's final result), as the CNI spec 1.0 says. A failed ADD deletes what the earlier
//! plugins made before it returns. Plugins run with a clean environment, a deadline, and
//! bounded output.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::result::CniResult;

/// The most a plugin may print on stdout or stderr.
const MAX_OUTPUT: u64 = 1 << 20;
/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A network configuration list (`.conflist`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetConfList {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Value>,
}

/// Where a task's interface goes.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// Values for plugins' `capabilities` (e.g. `portMappings`), passed as `runtimeConfig`.
    pub runtime_config: serde_json::Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("network {network}: plugin {index} has no valid \"type\"")]
    BadType { network: String, index: usize },
    #[error("CNI plugin {plugin} {command}: cannot run {path}: {source}")]
    Spawn {
        plugin: String,
        command: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}")]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u64,
        msg: String,
    },
    #[error("CNI plugin {plugin} {command} failed: {why}")]
    Failed {
        plugin: String,
        command: &'static str,
        why: String,
    },
    #[error("CNI plugin {plugin} {command} printed a result that is not CNI's: {source}")]
    BadResult {
        plugin: String,
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

pub struct CniRunner {
    plugin_dir: PathBuf,
    conf: NetConfList,
}

impl CniRunner {
    pub fn new(plugin_dir: &Path, conf: NetConfList) -> Result<Self, CniError> {
        for (index, p) in conf.plugins.iter().enumerate() {
            plugin_type(p).ok_or_else(|| CniError::BadType {
                network: conf.name.clone(),
                index,
            })?;
        }
        Ok(Self {
            plugin_dir: plugin_dir.to_owned(),
            conf,
        })
    }

    pub fn network(&self) -> &str {
        &self.conf.name
    }

    /// Runs ADD through the list; on a failure, DEL for the plugins that had run.
    pub fn add(&self, a: &Attachment) -> Result<CniResult, CniError> {
        let mut prev: Option<CniResult> = None;
        for (i, plugin) in self.conf.plugins.iter().enumerate() {
            match self.exec(plugin, "ADD", a, prev.as_ref()) {
                Ok(out) => {
                    let result =
                        serde_json::from_slice(&out).map_err(|source| CniError::BadResult {
                            plugin: plugin_type(plugin).unwrap_or_default().to_owned(),
                            command: "ADD",
                            source,
                        })?;
                    prev = Some(result);
                }
                Err(e) => {
                    for done in self.conf.plugins[..=i].iter().rev() {
                        if let Err(d) = self.exec(done, "DEL", a, prev.as_ref()) {
                            tracing::warn!("undoing a failed CNI ADD: {d}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(prev.unwrap_or_else(|| CniResult {
            cni_version: self.conf.cni_version.clone(),
            ..Default::default()
        }))
    }

    /// Runs DEL through the list in reverse, each plugin given the ADD's result; carries on
    /// past failures (so every plugin frees what it can) and returns the first.
    pub fn del(&self, a: &Attachment, prev: Option<&CniResult>) -> Result<(), CniError> {
        let mut first = None;
        for plugin in self.conf.plugins.iter().rev() {
            if let Err(e) = self.exec(plugin, "DEL", a, prev) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The configuration one plugin reads on stdin.
    fn plugin_conf(&self, plugin: &Value, a: &Attachment, prev: Option<&CniResult>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = json!(self.conf.cni_version);
        conf["name"] = json!(self.conf.name);
        if let Some(p) = prev {
            conf["prevResult"] = serde_json::to_value(p).unwrap_or(Value::Null);
        }
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            let rc: serde_json::Map<String, Value> = a
                .runtime_config
                .iter()
                .filter(|(k, _)| caps.get(*k).and_then(Value::as_bool) == Some(true))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        conf
    }

    fn exec(
        &self,
        plugin: &Value,
        command: &'static str,
        a: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<Vec<u8>, CniError> {
        let name = plugin_type(plugin).unwrap_or_default().to_owned();
        let path = self.plugin_dir.join(&name);
        let conf = serde_json::to_vec(&self.plugin_conf(plugin, a, prev)).unwrap_or_default();
        let spawn_err = |source| CniError::Spawn {
            plugin: name.clone(),
            command,
            path: path.clone(),
            source,
        };
        let mut child = Command::new(&path)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_PATH", &self.plugin_dir)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let (stdout, stderr) = (
            bounded_reader(&mut child, true),
            bounded_reader(&mut child, false),
        );
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading makes this fail: its exit says why.
            let _ = stdin.write_all(&conf);
        }
        let status = wait_until(&mut child, Instant::now() + PLUGIN_TIMEOUT);
        let (out, err) = (
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        );
        let failed = |why: String| CniError::Failed {
            plugin: name.clone(),
            command,
            why,
        };
        match status {
            None => Err(failed(format!("no answer after {PLUGIN_TIMEOUT:?}"))),
            Some(s) if s.success() => Ok(out),
            Some(s) => {
                #[derive(Deserialize)]
                struct PluginError {
                    code: u64,
                    msg: String,
                    #[serde(default)]
                    details: String,
                }
                match serde_json::from_slice::<PluginError>(&out) {
                    Ok(e) => Err(CniError::Plugin {
                        plugin: name.clone(),
                        command,
                        code: e.code,
                        msg: short(&if e.details.is_empty() {
                            e.msg
                        } else {
                            format!("{}: {}", e.msg, e.details)
                        }),
                    }),
                    Err(_) => Err(failed(format!(
                        "{s}: {}",
                        short(&String::from_utf8_lossy(&err))
                    ))),
                }
            }
        }
    }
}

/// A plugin's `type`: a plain file name in the plugin folder.
fn plugin_type(plugin: &Value) -> Option<&str> {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('/') && *t != "." && *t != "..")
}

/// At most 300 characters of a message, on one line.
fn short(s: &str) -> String {
    let one_line: String = s.trim().replace(['\n', '\r'], " ");
    one_line.chars().take(300).collect()
}

fn bounded_reader(child: &mut Child, stdout: bool) -> std::thread::JoinHandle<Vec<u8>> {
    let pipe: Option<Box<dyn Read + Send>> = if stdout {
        child.stdout.take().map(|p| Box::new(p) as _)
    } else {
        child.stderr.take().map(|p| Box::new(p) as _)
    };
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = pipe {
            let mut p = p.take(MAX_OUTPUT);
            let _ = p.read_to_end(&mut buf);
            // Drain the rest so the plugin never blocks on a full pipe.
            let _ = std::io::copy(&mut p.into_inner(), &mut std::io::sink());
        }
        buf
    })
}

/// Waits for `child` until `deadline`; kills it then (None).
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(plugins: Vec<Value>) -> Result<CniRunner, CniError> {
        CniRunner::new(
            Path::new("/nonexistent"),
            NetConfList {
                cni_version: "1.0.0".into(),
                name: "t".into(),
                plugins,
            },
        )
    }

    #[test]
    fn plugin_types_must_be_plain_names() {
        for bad in [
            json!({}),
            json!({"type": "../sh"}),
            json!({"type": ""}),
            json!({"type": 3}),
        ] {
            assert!(runner(vec![bad.clone()]).is_err(), "{bad}");
        }
        assert!(runner(vec![json!({"type": "bridge"})]).is_ok());
    }

    #[test]
    fn each_plugin_gets_the_list_name_version_prev_result_and_only_its_capabilities() {
        let r = runner(vec![
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ])
        .unwrap();
        let mut rc = serde_json::Map::new();
        rc.insert("portMappings".into(), json!([{"hostPort": 8080}]));
        rc.insert("bandwidth".into(), json!({}));
        let a = Attachment {
            container_id: "c".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            runtime_config: rc,
        };
        let prev = CniResult {
            cni_version: "1.0.0".into(),
            ..Default::default()
        };
        let conf = r.plugin_conf(&r.conf.plugins[0], &a, Some(&prev));
        assert_eq!(conf["name"], "t");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["prevResult"]["cniVersion"], "1.0.0");
        assert_eq!(
            conf["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
    }

    #[test]
    fn a_missing_plugin_is_named() {
        let r = runner(vec![json!({"type": "nosuch"})]).unwrap();
        let a = Attachment {
            container_id: "c".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            runtime_config: Default::default(),
        };
        let e = r.add(&a).unwrap_err().to_string();
        assert!(e.contains("nosuch") && e.contains("cannot run"), "{e}");
    }
}
