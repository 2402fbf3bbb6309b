//! The commands that talk to `skiff serve` over HTTP: run, ps, inspect, logs, stop.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

use super::run::RunArgs;
use super::serve::read_token;

/// Where the server is and how to talk to it.
#[derive(Clone)]
pub struct Api {
    /// The URL prefix of requests (`http://localhost` over a Unix socket).
    base: String,
    /// Where the server is, as the user would give it (for messages).
    target: String,
    client: Client,
    token: Option<String>,
}

impl Api {
    /// `--api`, else SKIFF_API, else the server's Unix socket in `state_dir`. Forms:
    /// `unix:///PATH`, `http://HOST:PORT`, `https://HOST:PORT` (a CA of your own in
    /// SKIFF_TLS_CA, PEM).
    pub fn new(
        api: Option<String>,
        token_file: Option<&std::path::Path>,
        state_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let target = api
            .or_else(|| std::env::var("SKIFF_API").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| {
                format!(
                    "unix://{}",
                    state_dir
                        .join(control_plane::api::listen::SOCKET_NAME)
                        .display()
                )
            });
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(None);
        let base = if let Some(path) = target.strip_prefix("unix://") {
            builder = builder.unix_socket(std::path::PathBuf::from(path));
            "http://localhost".to_owned()
        } else if target.starts_with("http://") || target.starts_with("https://") {
            target.trim_end_matches('/').to_owned()
        } else {
            bail!("{target}: the API address must be unix:///PATH, http://HOST:PORT or https://HOST:PORT")
        };
        if let Some(ca) = std::env::var_os("SKIFF_TLS_CA") {
            let pem = std::fs::read(&ca)
                .with_context(|| format!("cannot read SKIFF_TLS_CA {}", ca.to_string_lossy()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .context("SKIFF_TLS_CA is not a PEM certificate")?,
            );
        }
        let client = builder.build().context("cannot build the HTTP client")?;
        Ok(Self {
            base,
            target,
            client,
            token: read_token(token_file)?,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends and checks: an error status becomes the server's message.
    fn send(&self, r: RequestBuilder) -> anyhow::Result<Response> {
        let resp = r.send().map_err(|e| {
            let why = std::error::Error::source(&e)
                .and_then(std::error::Error::source)
                .map_or(e.to_string(), |s| s.to_string());
            anyhow!(
                "cannot reach the server at {}: {why} (is `skiff serve` running? see --api / SKIFF_API)",
                self.target
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        let msg = body["error"]["message"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}"), str::to_owned);
        bail!("{msg}")
    }

    fn json(&self, r: RequestBuilder) -> anyhow::Result<Value> {
        self.send(r)?
            .json()
            .context("the server's answer is not JSON")
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.req(reqwest::Method::GET, path))
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(self.req(reqwest::Method::POST, path).json(body))
    }

    /// POST with one extra header (as `X-Registry-Auth`).
    pub fn post_with(
        &self,
        path: &str,
        body: &Value,
        header: Option<(&str, String)>,
    ) -> anyhow::Result<Value> {
        let mut r = self.req(reqwest::Method::POST, path).json(body);
        if let Some((name, value)) = header {
            r = r.header(name, value);
        }
        self.json(r)
    }

    pub fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(self.req(reqwest::Method::PATCH, path).json(body))
    }

    /// GET that tells a 404 apart: `None` when the server has no such thing.
    pub fn get_opt(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let r = self.req(reqwest::Method::GET, path).send();
        if let Ok(resp) = &r {
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
        }
        self.get(path).map(Some)
    }

    /// DELETE; the answer's body is not read.
    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.req(reqwest::Method::DELETE, path)).map(drop)
    }

    /// PUT of a file's bytes; the answer as JSON.
    pub fn put_file(&self, path: &str, file: std::fs::File, len: u64) -> anyhow::Result<Value> {
        self.json(
            self.req(reqwest::Method::PUT, path)
                .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
                .body(reqwest::blocking::Body::sized(file, len)),
        )
    }

    /// The lines of a streamed answer (NDJSON), as they come.
    pub fn lines(
        &self,
        path: &str,
    ) -> anyhow::Result<impl Iterator<Item = std::io::Result<String>>> {
        Ok(BufReader::new(self.send(self.req(reqwest::Method::GET, path))?).lines())
    }

    /// A text answer (e.g. /metrics).
    pub fn text(&self, path: &str) -> anyhow::Result<String> {
        self.send(self.req(reqwest::Method::GET, path))?
            .text()
            .context("reading the server's answer")
    }

    /// Follows a task's output without keeping it: returns once the task has stopped.
    pub fn wait_logs_end(&self, id: &str) -> anyhow::Result<()> {
        let mut resp = self.send(
            self.req(reqwest::Method::GET, &format!("/v1/tasks/{id}/logs"))
                .query(&[("follow", true)]),
        )?;
        std::io::copy(&mut resp, &mut std::io::sink()).context("the log stream broke")?;
        Ok(())
    }

    /// Copies a task's output to our stdout/stderr until the server ends the stream.
    pub fn stream_logs(&self, id: &str, follow: bool) -> anyhow::Result<()> {
        let resp = self.send(
            self.req(reqwest::Method::GET, &format!("/v1/tasks/{id}/logs"))
                .query(&[("follow", follow)]),
        )?;
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        for line in BufReader::new(resp).lines() {
            let line = line.context("the log stream broke")?;
            let v: Value = serde_json::from_str(&line).context("a log line is not JSON")?;
            let data = match (v["data"].as_str(), v["dataBase64"].as_str()) {
                (Some(t), _) => t.as_bytes().to_vec(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .context("a log line's base64 does not decode")?,
                _ => continue,
            };
            let _ = if v["stream"] == "stderr" {
                err.write_all(&data).and_then(|_| err.flush())
            } else {
                out.write_all(&data).and_then(|_| out.flush())
            };
        }
        Ok(())
    }
}

pub fn env_map(pairs: &[String], what: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut m = serde_json::Map::new();
    for kv in pairs {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("{what} {kv:?} is not KEY=VALUE"))?;
        m.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(m)
}

/// `skiff run IMAGE [-- CMD…]` through the server.
pub fn run(api: &Api, a: RunArgs) -> anyhow::Result<i32> {
    if a.rootfs.is_some() {
        bail!("--rootfs works only with --local");
    }
    if a.interactive {
        bail!("-i works only with --local so far");
    }
    if a.snapshot_dir.is_some() || a.no_snapshots {
        bail!("--snapshot-dir and --no-snapshots go with --local; the server's own snapshot flags apply to its tasks");
    }
    let (image, cmd) = a.image_and_command()?;
    let mut body = json!({
        "image": image.unwrap_or_default(),
        "cpu": a.cpu,
        "memoryMiB": a.memory,
        "stopTimeoutSeconds": a.stop_timeout,
        "env": env_map(&a.env, "-e")?,
        "labels": env_map(&a.labels, "--label")?,
    });
    // Without --network the server's default applies (`skiff serve --default-network`).
    if let Some(n) = &a.network {
        body["networkMode"] = json!(n);
    }
    if !a.publish.is_empty() {
        body["portMappings"] = a
            .publish
            .iter()
            .map(|p| {
                let mut m = json!({"containerPort": p.container_port, "hostPort": p.host_port});
                if let Some(proto) = &p.protocol {
                    m["protocol"] = json!(proto);
                }
                if let Some(ip) = &p.host_ip {
                    m["hostIp"] = json!(ip);
                }
                m
            })
            .collect();
    }
    if !cmd.is_empty() {
        body["command"] = json!(cmd);
    }
    if let Some(e) = a.entrypoint {
        body["entrypoint"] = json!([e]);
    }
    if let Some(w) = a.workdir {
        body["workingDir"] = json!(w);
    }
    if let Some(u) = a.user {
        body["user"] = json!(u);
    }
    if let Some(n) = a.name {
        body["name"] = json!(n);
    }
    if let Some(t) = a.timeout {
        body["timeoutSeconds"] = json!(t);
    }
    let task = api.post("/v1/tasks", &body)?;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    if a.detach {
        crate::outln!("{id}");
        return Ok(0);
    }
    stop_on_signals(api, &id)?;
    api.stream_logs(&id, true)?;
    // The log stream ends when the task has stopped; the record has how.
    let task = api.get(&format!("/v1/tasks/{id}"))?;
    let code = task["stopCode"].as_str().unwrap_or("");
    let reason = task["stoppedReason"].as_str().unwrap_or("");
    if !matches!(code, "EssentialContainerExited" | "") {
        eprintln!("skiff: task {id}: {code}: {reason}");
    }
    if a.timings {
        print_timings(&task);
    }
    Ok(task["exitCode"]
        .as_i64()
        .map_or(if code == "UserInitiated" { 137 } else { 125 }, |c| {
            c as i32
        }))
}

/// Ctrl-C (or SIGTERM) asks the server to stop the task; its output keeps streaming.
fn stop_on_signals(api: &Api, id: &str) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let api = api.clone();
    let id = id.to_owned();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("skiff: stopping task {id}");
            if let Err(e) = api.post(&format!("/v1/tasks/{id}/stop"), &json!({})) {
                eprintln!("skiff: {e:#}");
            }
        }
    });
    Ok(())
}

fn print_timings(task: &Value) {
    let p = &task["phases"];
    let at = |k: &str| p[k].as_u64();
    let Some(t0) = at("acceptedMs") else { return };
    let rel = |k: &str| at(k).map_or("-".to_owned(), |t| format!("{} ms", t.saturating_sub(t0)));
    eprintln!(
        "skiff: timings from submit: image ready {}, VM started {}, agent ready {}, process started {}, exited {}, stopped {}",
        rel("imageReadyMs"),
        rel("vmStartedMs"),
        rel("agentReadyMs"),
        rel("processStartedMs"),
        rel("processExitedMs"),
        rel("stoppedMs"),
    );
}

pub fn ps(api: &Api, all: bool, state: Option<String>, labels: Vec<String>) -> anyhow::Result<i32> {
    let mut q: Vec<(String, String)> = Vec::new();
    if let Some(s) = state {
        q.push(("state".into(), s));
    }
    if let Some(l) = labels.first() {
        q.push(("label".into(), l.clone()));
    }
    crate::outln!(
        "{:<18} {:<24} {:<28} {:<13} {:>5}  {}",
        "TASK ID",
        "IMAGE",
        "COMMAND",
        "STATE",
        "EXIT",
        "CREATED"
    );
    let mut token: Option<String> = None;
    loop {
        let mut req = api.req(reqwest::Method::GET, "/v1/tasks").query(&q);
        if let Some(t) = &token {
            req = req.query(&[("nextToken", t)]);
        }
        let page = api.json(req)?;
        for t in page["tasks"].as_array().into_iter().flatten() {
            let state = t["state"].as_str().unwrap_or("");
            if !all && state == "STOPPED" {
                continue;
            }
            let cmd = t["command"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let created = t["phases"]["acceptedMs"]
                .as_u64()
                .map_or(String::new(), |ms| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(ms),
                    )
                    .to_string()
                });
            crate::outln!(
                "{:<18} {:<24} {:<28} {:<13} {:>5}  {}",
                t["id"].as_str().unwrap_or(""),
                clip(t["image"].as_str().unwrap_or(""), 24),
                clip(&cmd, 28),
                state,
                t["exitCode"]
                    .as_i64()
                    .map_or(String::new(), |c| c.to_string()),
                created
            );
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    Ok(0)
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

pub fn inspect(api: &Api, ids: &[String]) -> anyhow::Result<i32> {
    let mut out = Vec::new();
    for id in ids {
        out.push(api.get(&format!("/v1/tasks/{id}"))?);
    }
    crate::outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

pub fn stop(api: &Api, ids: &[String]) -> anyhow::Result<i32> {
    for id in ids {
        api.post(&format!("/v1/tasks/{id}/stop"), &json!({}))?;
        crate::outln!("{id}");
    }
    Ok(0)
}
