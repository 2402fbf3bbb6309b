//! An OCI bundle's `config.json`, read as a hostile input: what the container runs (argv,
//! env, user, cwd, rlimits) and how big its microVM is (memory and CPU limits). What Skiff
//! cannot honour is refused with a message naming the field, never silently dropped,
//! except the parts a VM makes moot (namespaces, seccomp, capabilities: the VM is the
//! boundary) and the standard mounts the agent sets up itself.

use std::path::{Path, PathBuf};

use guest_agent::{Rlimit, RunSpec};
use oci_spec::runtime::Spec;

/// Largest `config.json` read (runc's own are a few KiB; CRI's with many mounts ~20 KiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// VM size when the bundle sets no limit, as `skiff run`'s defaults.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
pub const DEFAULT_VCPUS: u32 = 1;
/// The smallest VM the guest kernel and agent run in with room for a process.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Largest VM a bundle may ask for.
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;
/// Mounts the agent makes itself (or that mean nothing in a VM); others are refused.
const STANDARD_MOUNTS: [&str; 9] = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
    "/run",
    "/tmp",
];
/// Files CRI binds from the host into every container; the guest has its own.
const CRI_FILES: [&str; 4] = [
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/hostname",
    "/dev/termination-log",
];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {0}: config.json is missing")]
    NoConfig(PathBuf),
    #[error("bundle config.json: {0}")]
    Invalid(String),
    #[error("bundle config.json: {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> BundleError {
    BundleError::Field {
        field,
        message: message.into(),
    }
}

/// What the bundle asks to run, in the launcher's terms.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The process part of the agent's run spec (argv, env, cwd, user, rlimits).
    pub spec: RunSpec,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// `root.path`, resolved against the bundle (used when containerd gives no mounts).
    pub root_dir: PathBuf,
    /// The process wants a terminal (`ctr run -t`).
    pub terminal: bool,
    /// CRI's annotation: this is a pod's sandbox ("pause") container.
    pub is_sandbox: bool,
    /// The network namespace to join: a pod's, made by containerd's CNI set-up, by its
    /// name under `/run/netns` (a pod's sandbox names it so); None: the VM has loopback
    /// only.
    pub netns: Option<String>,
    /// A namespace path that is not under `/run/netns` (CRI gives a pod's containers
    /// their sandbox's as `/proc/PID/ns/net`): the shim resolves it through the pod's
    /// sandbox, or refuses it.
    pub netns_other: Option<PathBuf>,
    /// The pod's sandbox id (CRI's annotation), for a pod's containers.
    pub sandbox_id: Option<String>,
    /// The nameservers of the `/etc/resolv.conf` the bundle mounts (CRI writes one per pod).
    pub nameservers: Vec<String>,
}

/// Reads `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, BundleError> {
    use std::io::Read;
    let path = bundle.join("config.json");
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BundleError::NoConfig(bundle.to_owned()),
        _ => BundleError::Invalid(format!("{}: {e}", path.display())),
    })?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| BundleError::Invalid(e.to_string()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(BundleError::Invalid(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    serde_json::from_str(&text).map_err(|e| BundleError::Invalid(e.to_string()))
}

/// The sandbox a bundle belongs to under CRI (its pod), from its annotations.
pub fn sandbox_id(spec: &Spec) -> Option<String> {
    let a = spec.annotations().as_ref()?;
    a.get("io.kubernetes.cri.sandbox-id").cloned()
}

/// Turns `spec` (of the bundle at `bundle`) into a plan, checking every field we use.
pub fn plan(bundle: &Path, spec: &Spec, host_cpus: u32) -> Result<Plan, BundleError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| field("process", "missing"))?;
    let argv = process.args().clone().unwrap_or_default();
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err(field("process.args", "no command given"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(field("process.args", "an argument holds a NUL byte"));
    }
    let env = process.env().clone().unwrap_or_default();
    if let Some(bad) = env.iter().find(|kv| !kv.contains('=') || kv.contains('\0')) {
        return Err(field("process.env", format!("{bad:?} is not NAME=VALUE")));
    }
    let cwd = process.cwd().to_string_lossy().into_owned();
    if !cwd.starts_with('/') {
        return Err(field("process.cwd", format!("{cwd:?} is not absolute")));
    }
    let user = process.user();
    let mut rlimits = Vec::new();
    for l in process.rlimits().iter().flatten() {
        let name = serde_json::to_value(l.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let r = Rlimit {
            name,
            soft: l.soft(),
            hard: l.hard(),
        };
        if r.resource().is_none() {
            return Err(field(
                "process.rlimits",
                format!("unknown limit {:?}", r.name),
            ));
        }
        if r.soft > r.hard {
            return Err(field(
                "process.rlimits",
                format!("{}: soft limit {} above hard {}", r.name, r.soft, r.hard),
            ));
        }
        rlimits.push(r);
    }
    let (memory_mib, vcpus) = resources(spec, host_cpus)?;
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy();
        let standard = STANDARD_MOUNTS.contains(&dest.as_ref())
            || CRI_FILES.contains(&dest.as_ref())
            || dest.starts_with("/sys/")
            || dest.starts_with("/proc/")
            || dest.starts_with("/dev/");
        if !standard {
            return Err(field(
                "mounts",
                format!("{dest}: volumes are not supported by io.containerd.skiff.v2 (no host path is ever shared with a VM)"),
            ));
        }
    }
    let root = spec.root().as_ref().map(|r| r.path().clone());
    let root_dir = match root {
        Some(p) if p.is_absolute() => p,
        Some(p) => bundle.join(p),
        None => bundle.join("rootfs"),
    };
    let hostname = spec
        .hostname()
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff".into());
    let annotations = spec.annotations().clone().unwrap_or_default();
    let (netns, netns_other) = match network_namespace(spec) {
        None => (None, None),
        Some(path) => match named_netns(&path) {
            Some(name) => (Some(name), None),
            None => (None, Some(path)),
        },
    };
    let nameservers = spec
        .mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == Path::new("/etc/resolv.conf"))
        .and_then(|m| m.source().as_ref())
        .map(|src| nameservers(src))
        .unwrap_or_default();
    Ok(Plan {
        spec: RunSpec {
            argv,
            env,
            working_dir: cwd,
            user: format!("{}:{}", user.uid(), user.gid()),
            hostname,
            rlimits,
            ..Default::default()
        },
        vcpus,
        memory_mib,
        root_dir,
        terminal: process.terminal().unwrap_or(false),
        is_sandbox: annotations
            .get("io.kubernetes.cri.container-type")
            .is_some_and(|t| t == "sandbox"),
        netns,
        netns_other,
        sandbox_id: sandbox_id(spec),
        nameservers,
    })
}

/// The path of the network namespace the bundle joins, if it names one (none: a new
/// namespace of its own, or the host's network; a VM can share neither).
fn network_namespace(spec: &Spec) -> Option<PathBuf> {
    use oci_spec::runtime::LinuxNamespaceType;
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// The name of a namespace pinned under `/run/netns` (`/var/run/netns`), where CRI and
/// `ip netns` put them.
pub fn named_netns(path: &Path) -> Option<String> {
    ["/run/netns/", "/var/run/netns/"]
        .iter()
        .find_map(|dir| path.to_str()?.strip_prefix(dir))
        .filter(|n| !n.is_empty() && !n.contains('/') && *n != "." && *n != "..")
        .map(str::to_owned)
}

/// The `nameserver` lines of a resolv.conf on the host (read at most 64 KiB of it; a file
/// that cannot be read gives none).
fn nameservers(path: &Path) -> Vec<String> {
    use std::io::Read;
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(64 * 1024).read_to_string(&mut text));
    if read.is_err() {
        return Vec::new();
    }
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string())
        .take(3)
        .collect()
}

/// The VM's memory (MiB) and vCPUs from `linux.resources`: the memory limit rounded up to
/// a MiB, the CPU quota over its period rounded up to whole vCPUs (at most the host's).
fn resources(spec: &Spec, host_cpus: u32) -> Result<(u64, u32), BundleError> {
    let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return Ok((DEFAULT_MEMORY_MIB, DEFAULT_VCPUS));
    };
    let memory_mib = match res.memory().as_ref().and_then(|m| m.limit()) {
        // -1 (or 0) is "no limit".
        Some(l) if l > 0 => {
            let mib = (l as u64).div_ceil(1 << 20);
            if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
                return Err(field(
                    "linux.resources.memory.limit",
                    format!(
                        "{l} bytes: a Skiff VM has {MIN_MEMORY_MIB} MiB to {MAX_MEMORY_MIB} MiB"
                    ),
                ));
            }
            mib
        }
        _ => DEFAULT_MEMORY_MIB,
    };
    let cpu = res.cpu().as_ref();
    let vcpus = match (cpu.and_then(|c| c.quota()), cpu.and_then(|c| c.period())) {
        (Some(q), Some(p)) if q > 0 && p > 0 => {
            let n = (q as u64).div_ceil(p).max(1);
            n.min(u64::from(host_cpus.max(1))) as u32
        }
        _ => DEFAULT_VCPUS,
    };
    Ok((memory_mib, vcpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["sh", "-c", "echo hi"],
                "env": ["PATH=/bin", "A=1"],
                "cwd": "/srv",
                "user": {"uid": 1000, "gid": 100},
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]
            },
            "root": {"path": "rootfs"},
            "hostname": "box",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts"}
            ],
            "linux": {"resources": {"memory": {"limit": 300_000_000i64}, "cpu": {"quota": 150_000, "period": 100_000}}}
        })
    }

    #[test]
    fn a_bundle_becomes_a_run_spec_and_a_vm_size() {
        let p = plan(Path::new("/b"), &spec(base()), 2).unwrap();
        assert_eq!(p.spec.argv, ["sh", "-c", "echo hi"]);
        assert_eq!(p.spec.env, ["PATH=/bin", "A=1"]);
        assert_eq!(p.spec.working_dir, "/srv");
        assert_eq!(p.spec.user, "1000:100");
        assert_eq!(p.spec.hostname, "box");
        assert_eq!(
            p.spec.rlimits,
            [Rlimit {
                name: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 4096
            }]
        );
        // 300 000 000 bytes is 286.1 MiB: rounded up; 1.5 CPUs: 2 vCPUs.
        assert_eq!((p.memory_mib, p.vcpus), (287, 2));
        assert_eq!(p.root_dir, Path::new("/b/rootfs"));
        assert!(!p.terminal && !p.is_sandbox);
    }

    #[test]
    fn no_limits_give_the_default_vm_and_cpus_are_capped_by_the_host() {
        let mut j = base();
        j["linux"] = serde_json::json!({});
        let p = plan(Path::new("/b"), &spec(j), 2).unwrap();
        assert_eq!((p.memory_mib, p.vcpus), (DEFAULT_MEMORY_MIB, DEFAULT_VCPUS));
        let mut j = base();
        j["linux"]["resources"]["cpu"]["quota"] = serde_json::json!(800_000);
        let p = plan(Path::new("/b"), &spec(j), 2).unwrap();
        assert_eq!(p.vcpus, 2);
    }

    #[test]
    fn what_a_vm_cannot_honour_is_refused_by_field() {
        let err =
            |j: serde_json::Value| plan(Path::new("/b"), &spec(j), 2).unwrap_err().to_string();
        let mut j = base();
        j["process"]["args"] = serde_json::json!([]);
        assert!(err(j).contains("process.args: no command given"));
        let mut j = base();
        j["process"]["cwd"] = serde_json::json!("srv");
        assert!(err(j).contains("process.cwd"));
        let mut j = base();
        j["process"]["env"] = serde_json::json!(["NOEQUALS"]);
        assert!(err(j).contains("process.env"));
        let mut j = base();
        j["linux"]["resources"]["memory"]["limit"] = serde_json::json!(1 << 20);
        assert!(err(j).contains("linux.resources.memory.limit"));
        let mut j = base();
        j["process"]["rlimits"][0]["soft"] = serde_json::json!(9999);
        assert!(err(j).contains("soft limit 9999 above hard 4096"));
        let mut j = base();
        j["mounts"] =
            serde_json::json!([{"destination": "/data", "type": "bind", "source": "/etc"}]);
        assert!(err(j).contains("/data: volumes are not supported"));
    }

    #[test]
    fn a_pod_network_namespace_is_joined_and_its_nameservers_used() {
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "search x\nnameserver 10.0.0.2\nnameserver bogus\n").unwrap();
        let mut j = base();
        j["linux"]["namespaces"] =
            serde_json::json!([{"type": "network", "path": "/var/run/netns/cni-1234"}]);
        j["mounts"] = serde_json::json!([{"destination": "/etc/resolv.conf", "type": "bind", "source": resolv}]);
        let p = plan(Path::new("/b"), &spec(j), 2).unwrap();
        assert_eq!(p.netns.as_deref(), Some("cni-1234"));
        assert_eq!(p.nameservers, ["10.0.0.2"]);
        let mut j = base();
        j["linux"]["namespaces"] =
            serde_json::json!([{"type": "network", "path": "/proc/1/ns/net"}]);
        let p = plan(Path::new("/b"), &spec(j), 2).unwrap();
        assert_eq!(
            (p.netns, p.netns_other),
            (None, Some("/proc/1/ns/net".into()))
        );
        assert_eq!(named_netns(Path::new("/run/netns/../x")), None);
        let mut j = base();
        j["linux"]["namespaces"] = serde_json::json!([{"type": "network"}]);
        assert_eq!(plan(Path::new("/b"), &spec(j), 2).unwrap().netns, None);
    }

    #[test]
    fn cri_annotations_name_the_pod() {
        let mut j = base();
        j["annotations"] = serde_json::json!({
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": "abc"
        });
        let p = plan(Path::new("/b"), &spec(j), 2).unwrap();
        assert!(p.is_sandbox);
        assert_eq!(sandbox_id(&spec(base())), None);
        let mut j = base();
        j["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": "abc"});
        assert_eq!(sandbox_id(&spec(j)).as_deref(), Some("abc"));
    }

    #[test]
    fn a_huge_or_missing_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(BundleError::NoConfig(_))));
        std::fs::write(
            dir.path().join("config.json"),
            vec![b' '; MAX_CONFIG_BYTES as usize + 2],
        )
        .unwrap();
        assert!(load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("larger than"));
    }
}
