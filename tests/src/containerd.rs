//! A real containerd (Debian's) for the shim's tests: started by the test with its own
//! root, state, sockets and config, the workspace's `containerd-shim-skiff-v2` first on
//! its PATH (registered as runtime `io.containerd.skiff.v2` and CRI handler `skiff`), and
//! driven with `ctr`. Also an OCI image archive of busybox for `ctr image import`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::registry::wait_until;

/// The name the busybox archive's image is imported under.
pub const BUSYBOX_IMAGE: &str = "docker.io/skiff/busybox:latest";
/// The runtime's name as containerd knows it.
pub const RUNTIME: &str = "io.containerd.skiff.v2";

pub struct Containerd {
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The state directory the shims' Skiff uses (`SKIFF_STATE_DIR`).
    pub skiff_state: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// Starts containerd in `dir` (emptied first). Its sockets live under a short
    /// directory of /run, as a Unix socket's path must stay within 107 bytes.
    pub fn start(name: &str) -> Result<Self> {
        Self::start_in(name, None, None)
    }

    /// Starts containerd inside network namespace `netns` (a test host: CNI's bridge and
    /// the pods' addresses stay there), with `cni` as the one CNI network configuration
    /// list its CRI plugin uses for pods.
    pub fn start_in(
        name: &str,
        netns: Option<&Path>,
        cni: Option<serde_json::Value>,
    ) -> Result<Self> {
        let dir = crate::paths::tmp_dir().join(format!("containerd-{name}"));
        let _ = Command::new("umount").arg("-R").arg(&dir).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let run = PathBuf::from(format!("/run/skiff-test-ctrd-{name}"));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run)?;
        let socket = run.join("containerd.sock");
        let skiff_state = dir.join("skiff-state");
        std::fs::create_dir_all(&skiff_state)?;
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  sandbox_image = "{BUSYBOX_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skiff]
    runtime_type = "{RUNTIME}"
"#,
                root = dir.join("root").display(),
                state = run.join("state").display(),
                sock = socket.display(),
                cni = dir.join("cni").display(),
            ),
        )?;
        if let Some(conf) = cni {
            std::fs::create_dir_all(dir.join("cni"))?;
            std::fs::write(
                dir.join("cni/10-test.conflist"),
                serde_json::to_vec_pretty(&conf)?,
            )?;
        }
        let log = dir.join("containerd.log");
        let path = format!(
            "{}:{}",
            crate::paths::bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // nsenter rather than `ip netns exec`, which remounts /sys (and so the cgroups the
        // jailer uses) in a mount namespace of its own.
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("SKIFF_STATE_DIR", &skiff_state)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting containerd (apt-get install containerd)")?;
        let me = Self {
            child,
            dir,
            socket,
            skiff_state,
            log,
        };
        wait_until("containerd's socket", Duration::from_secs(60), || {
            me.ctr(&["version"]).ok().filter(|o| o.status.success())
        })
        .with_context(|| me.log_text())?;
        Ok(me)
    }

    /// containerd's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr` with this containerd's socket and the given arguments, stdin from /dev/null.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr")
    }

    /// `ctr` with `input` as its stdin (then its end).
    pub fn ctr_with_input(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ctr")?;
        let mut stdin = child.stdin.take().context("ctr's stdin")?;
        stdin.write_all(input).context("writing ctr's stdin")?;
        drop(stdin);
        child.wait_with_output().context("waiting for ctr")
    }

    /// `ctr`, which must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let o = self.ctr(args)?;
        if !o.status.success() {
            bail!(
                "ctr {args:?} failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Imports the busybox archive as [`BUSYBOX_IMAGE`] (in ctr's default namespace).
    pub fn import_busybox(&self) -> Result<()> {
        self.import_busybox_in("default")
    }

    /// Imports the busybox archive into containerd namespace `ns` (CRI's is `k8s.io`).
    pub fn import_busybox_in(&self, ns: &str) -> Result<()> {
        let archive = self.dir.join("busybox-oci.tar");
        write_busybox_archive(&archive)?;
        self.ctr_ok(&["-n", ns, "image", "import", archive.to_str().unwrap()])?;
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first, so that no shim or VM outlives the test.
        for ns in ["default", "k8s.io"] {
            if let Ok(list) = self.ctr(&["-n", ns, "task", "ls", "-q"]) {
                for id in String::from_utf8_lossy(&list.stdout).lines() {
                    let _ = self.ctr(&["-n", ns, "task", "kill", "-s", "SIGKILL", id]);
                    let _ = self.ctr(&["-n", ns, "task", "delete", "-f", id]);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log_text());
        }
    }
}

/// The processes whose command line holds `needle` (for "nothing is left running").
pub fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) && pid != std::process::id() as i32 {
            found.push((pid, text));
        }
    }
    found
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// An OCI image layout archive (`ctr image import` reads it) of one uncompressed layer:
/// the host's static busybox with a few applets, `/etc/passwd` with root and nobody.
pub fn write_busybox_archive(path: &Path) -> Result<()> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (busybox-static)")?;
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, mode: u32, link: Option<&str>, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        layer.append_data(&mut h, name, data).unwrap();
    };
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        add(d, tar::EntryType::Directory, 0o755, None, b"");
    }
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        None,
        &busybox,
    );
    for a in [
        "sh", "echo", "sleep", "cat", "true", "ls", "id", "grep", "head", "ip", "ping",
    ] {
        add(
            &format!("bin/{a}"),
            tar::EntryType::Symlink,
            0o777,
            Some("busybox"),
            b"",
        );
    }
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        None,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    );
    add(
        "etc/group",
        tar::EntryType::Regular,
        0o644,
        None,
        b"root:x:0:\nnogroup:x:65534:\n",
    );
    let layer = layer.into_inner()?;
    let layer_digest = sha256_hex(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
    }))?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer.len()}]
    }))?;
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": BUSYBOX_IMAGE,
                            "org.opencontainers.image.ref.name": "latest"}
        }]
    }))?;
    let mut out = tar::Builder::new(std::fs::File::create(path)?);
    let mut put = |name: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        out.append_data(&mut h, name, data)?;
        Ok(())
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    put("index.json", &index)?;
    put(&format!("blobs/sha256/{layer_digest}"), &layer)?;
    put(&format!("blobs/sha256/{config_digest}"), &config)?;
    put(&format!("blobs/sha256/{manifest_digest}"), &manifest)?;
    out.into_inner()?.flush()?;
    Ok(())
}
