//! A real `skiff serve` for tests: started as its own process with its own state dir,
//! listening where it does by default (the Unix socket `<state>/skiff.sock`) unless the
//! test asks for TCP, and driven over real HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

/// A fresh state dir for one test.
pub fn state_dir(name: &str) -> PathBuf {
    let d = crate::paths::deep_state_dir(&format!("serve-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The snapshot dir the test servers of a run share (servers lock each shape's build).
pub fn shared_snapshots() -> PathBuf {
    crate::paths::tmp_dir().join("snapshots")
}

pub struct Serve {
    child: Child,
    /// The prefix of request URLs (`http://localhost` over the Unix socket).
    pub url: String,
    /// What the server printed: `unix:///…/skiff.sock` or `http(s)://HOST:PORT`, the value
    /// of `SKIFF_API` for the CLI.
    pub listening: String,
    pub state_dir: PathBuf,
    /// Where this server keeps its snapshots.
    pub snapshot_dir: PathBuf,
    client: Client,
}

impl Serve {
    /// Starts `skiff serve` on `state_dir` with extra flags (e.g. capacity).
    pub fn start(state_dir: &Path, args: &[&str]) -> Serve {
        Self::start_with(state_dir, args, &[])
    }

    /// Tasks that name no network get none unless `args` give `--default-network`: test
    /// servers run side by side in the host's namespace, where they must not share the
    /// default network's bridge and addresses (the network tests run theirs in namespaces
    /// of their own).
    ///
    /// Unless `args` say otherwise, test servers share one snapshot dir ([`shared_snapshots`]),
    /// so each VM shape is booted for a snapshot once per run instead of once per server.
    pub fn start_with(state_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let default_network: &[&str] = if args.contains(&"--default-network") {
            &[]
        } else {
            &["--default-network", "none"]
        };
        let snapshot_dir = match args.iter().position(|a| *a == "--snapshot-dir") {
            Some(i) => PathBuf::from(args[i + 1]),
            None if args.contains(&"--no-snapshots") => state_dir.join("snapshots"),
            None => shared_snapshots(),
        };
        let snapshot_arg: Vec<&std::ffi::OsStr> =
            if args.contains(&"--snapshot-dir") || args.contains(&"--no-snapshots") {
                vec![]
            } else {
                vec!["--snapshot-dir".as_ref(), snapshot_dir.as_os_str()]
            };
        let mut child = Command::new(crate::paths::skiff())
            .arg("--state-dir")
            .arg(state_dir)
            .arg("serve")
            .args(default_network)
            .args(snapshot_arg)
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start skiff serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(url);
                }
                eprintln!("[serve] {line}");
            }
        });
        let listening = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("skiff serve did not say where it listens");
        let builder = Client::builder().timeout(None);
        let (url, builder) = match listening.strip_prefix("unix://") {
            Some(path) => (
                "http://localhost".to_owned(),
                builder.unix_socket(PathBuf::from(path)),
            ),
            None => (listening.clone(), builder),
        };
        Serve {
            child,
            url,
            listening,
            state_dir: state_dir.to_owned(),
            snapshot_dir,
            client: builder.build().unwrap(),
        }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let (status, _, v) = self.request_full(method, path, body);
        (StatusCode::from_u16(status).expect("an HTTP status"), v)
    }

    /// Sends a request (JSON `body`, extra `headers`) and returns the response.
    /// Sends a request and returns the response unread (to read a stream as it comes,
    /// or to leave it early).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::blocking::Response {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.client.request(m, format!("{}{path}", self.url));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        r.send().expect("HTTP request")
    }

    /// Like [`Serve::request`], with the status as a number and the `Retry-After` header.
    pub fn request_full(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        let resp = self.send(method, path, body, &[]);
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().unwrap_or_default();
        (
            status,
            retry,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A request with extra headers; the status and the body as text (NDJSON streams).
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let resp = self.send(method, path, body, headers);
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    }

    pub fn get(&self, path: &str) -> Value {
        let (s, v) = self.request("GET", path, None);
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        v
    }

    /// Submits a task; returns its id.
    pub fn submit(&self, body: &Value) -> String {
        let (s, v) = self.request("POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!(s, StatusCode::ACCEPTED, "submit {body}: {v}");
        v["id"].as_str().unwrap().to_owned()
    }

    pub fn task(&self, id: &str) -> Value {
        self.get(&format!("/v1/tasks/{id}"))
    }

    /// Waits until `cond` holds for the task (checked twice a second).
    pub fn wait_task(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.task(id);
            if cond(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not {what} after {timeout:?}: {t:#}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn wait_stopped(&self, id: &str, timeout: Duration) -> Value {
        self.wait_task(id, "STOPPED", timeout, |t| t["state"] == "STOPPED")
    }

    /// A GET whose answer is text (e.g. /metrics).
    pub fn get_text(&self, path: &str) -> String {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .expect("HTTP request");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.text().unwrap()
    }

    /// The task's output so far: (stdout, stderr).
    pub fn logs(&self, id: &str) -> (Vec<u8>, Vec<u8>) {
        let text = self
            .client
            .get(format!("{}/v1/tasks/{id}/logs", self.url))
            .send()
            .unwrap()
            .text()
            .unwrap();
        split_logs(&text)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SIGTERM first: the server stops its running tasks before it exits.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

/// NDJSON log lines → (stdout, stderr) bytes.
/// The address leases host-local holds for CNI network `cni_network` (the default network
/// is `skiff`, a named one `skiff-NAME`) in a server's state dir.
pub fn leases(state_dir: &Path, cni_network: &str) -> Vec<String> {
    std::fs::read_dir(state_dir.join("cni/ipam").join(cni_network))
        .unwrap_or_else(|e| panic!("lease folder of {cni_network}: {e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect()
}

pub fn split_logs(text: &str) -> (Vec<u8>, Vec<u8>) {
    use base64::Engine;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).expect("log line is JSON");
        let data = match (v["data"].as_str(), v["dataBase64"].as_str()) {
            (Some(t), _) => t.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
            _ => panic!("log line without data: {line}"),
        };
        if v["stream"] == "stderr" {
            err.extend(data);
        } else {
            out.extend(data);
        }
    }
    (out, err)
}

/// VMM processes working under `dir` (a task's VM under a state dir): jailed VMMs are
/// found by their jailer, whose command line names the directory (a VMM dies with its
/// jailer).
pub fn vmms_under(dir: &Path) -> Vec<String> {
    let out = Command::new("pgrep")
        .arg("-af")
        .arg(format!("skiff-(vmm|jailer).*{}", dir.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
