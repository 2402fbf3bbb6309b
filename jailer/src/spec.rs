//! What a jail holds and how it is bounded, and its command line. The launcher builds a
//! [`JailSpec`] and turns it into `skiff-jailer` arguments with [`JailSpec::to_args`];
//! the jailer reads them back with [`JailSpec::parse`]. Arguments are parsed by hand: they
//! only ever come from the launcher, and the jailer stays resident beside every VM, so it
//! carries no argument-parsing crate.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::JailError;

/// A host file or directory shown at `jail` inside the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    pub jail: PathBuf,
}

/// Resource bounds: the cgroup's and the process's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The cgroup parent, relative to each hierarchy's root (`skiff` by default).
    pub cgroup_parent: String,
    /// CPU time as a number of whole CPUs (`cpu.max`).
    pub cpus: Option<u32>,
    /// `memory.max` in bytes.
    pub memory_bytes: Option<u64>,
    /// `pids.max` (threads count).
    pub pids_max: Option<u32>,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_FSIZE: the largest file the process may write.
    pub file_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cgroup_parent: "skiff".into(),
            cpus: None,
            memory_bytes: None,
            pids_max: None,
            open_files: 1024,
            file_bytes: None,
        }
    }
}

/// One jailed process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// Names the cgroup (`<parent>/<id>`); letters, digits, `-`, `_`, `.`.
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    /// An empty host directory: the jail's root file system (a private tmpfs) is mounted
    /// on it inside the jail's mount namespace, so the host only ever sees it empty.
    pub root: PathBuf,
    /// The program to run: a static executable, opened on the host and never visible in
    /// the jail.
    pub exec: PathBuf,
    pub read_only: Vec<Bind>,
    /// Writable directories (the process's sockets, console, snapshot output).
    pub writable: Vec<Bind>,
    /// Device nodes made at the same path inside, owned by the jail's uid (`/dev/kvm`).
    pub devices: Vec<PathBuf>,
    /// A network namespace to join (pinned at this path, e.g. `/run/netns/NAME`) instead of
    /// a new, empty one.
    pub netns: Option<PathBuf>,
    pub limits: Limits,
    /// The whole environment the program gets.
    pub env: Vec<(String, String)>,
    pub args: Vec<OsString>,
}

impl JailSpec {
    /// The `skiff-jailer` arguments that describe this jail.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: &OsStr| {
            a.push(name.into());
            a.push(value.to_owned());
        };
        flag("--id", self.id.as_ref());
        flag("--uid", self.uid.to_string().as_ref());
        flag("--gid", self.gid.to_string().as_ref());
        flag("--root", self.root.as_os_str());
        flag("--exec", self.exec.as_os_str());
        for b in &self.read_only {
            flag("--ro", b.host.as_os_str());
            flag("--at", b.jail.as_os_str());
        }
        for b in &self.writable {
            flag("--rw", b.host.as_os_str());
            flag("--at", b.jail.as_os_str());
        }
        for d in &self.devices {
            flag("--dev", d.as_os_str());
        }
        if let Some(n) = &self.netns {
            flag("--netns", n.as_os_str());
        }
        let l = &self.limits;
        flag("--cgroup-parent", l.cgroup_parent.as_ref());
        if let Some(c) = l.cpus {
            flag("--cpus", c.to_string().as_ref());
        }
        if let Some(m) = l.memory_bytes {
            flag("--memory-bytes", m.to_string().as_ref());
        }
        if let Some(p) = l.pids_max {
            flag("--pids-max", p.to_string().as_ref());
        }
        flag("--open-files", l.open_files.to_string().as_ref());
        if let Some(f) = l.file_bytes {
            flag("--file-bytes", f.to_string().as_ref());
        }
        for (k, v) in &self.env {
            flag("--env", format!("{k}={v}").as_ref());
        }
        a.push("--".into());
        a.extend(self.args.iter().cloned());
        a
    }

    /// Reads the arguments [`JailSpec::to_args`] wrote, and validates them.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, JailError> {
        let mut it = args.into_iter();
        let mut spec = JailSpec {
            id: String::new(),
            uid: 0,
            gid: 0,
            root: PathBuf::new(),
            exec: PathBuf::new(),
            read_only: Vec::new(),
            writable: Vec::new(),
            devices: Vec::new(),
            netns: None,
            limits: Limits::default(),
            env: Vec::new(),
            args: Vec::new(),
        };
        while let Some(name) = it.next() {
            if name == "--" {
                spec.args = it.collect();
                break;
            }
            let name = name.to_string_lossy().into_owned();
            let mut value = || {
                it.next()
                    .ok_or_else(|| bad(format!("{name} needs a value")))
            };
            match name.as_str() {
                "--id" => spec.id = utf8(&name, value()?)?,
                "--uid" => spec.uid = number(&name, value()?)?,
                "--gid" => spec.gid = number(&name, value()?)?,
                "--root" => spec.root = value()?.into(),
                "--exec" => spec.exec = value()?.into(),
                "--ro" | "--rw" => {
                    let host = PathBuf::from(value()?);
                    if it.next().as_deref() != Some(OsStr::new("--at")) {
                        return Err(bad(format!("{name} HOST must be followed by --at PATH")));
                    }
                    let jail = it
                        .next()
                        .ok_or_else(|| bad("--at needs a value".into()))?
                        .into();
                    let list = if name == "--ro" {
                        &mut spec.read_only
                    } else {
                        &mut spec.writable
                    };
                    list.push(Bind { host, jail });
                }
                "--dev" => spec.devices.push(value()?.into()),
                "--netns" => spec.netns = Some(value()?.into()),
                "--cgroup-parent" => spec.limits.cgroup_parent = utf8(&name, value()?)?,
                "--cpus" => spec.limits.cpus = Some(number(&name, value()?)?),
                "--memory-bytes" => spec.limits.memory_bytes = Some(number(&name, value()?)?),
                "--pids-max" => spec.limits.pids_max = Some(number(&name, value()?)?),
                "--open-files" => spec.limits.open_files = number(&name, value()?)?,
                "--file-bytes" => spec.limits.file_bytes = Some(number(&name, value()?)?),
                "--env" => {
                    let kv = utf8(&name, value()?)?;
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| bad(format!("--env {kv}: expected NAME=VALUE")))?;
                    spec.env.push((k.to_owned(), v.to_owned()));
                }
                other => return Err(bad(format!("unknown argument {other}"))),
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Refuses a spec that would not make a jail: root ids, relative or escaping paths,
    /// a name that could leave the cgroup parent.
    pub fn validate(&self) -> Result<(), JailError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !name_ok(&self.id) {
            return Err(bad(format!(
                "--id {:?}: use 1-64 of [A-Za-z0-9._-]",
                self.id
            )));
        }
        if !self.limits.cgroup_parent.split('/').all(name_ok) {
            return Err(bad(format!(
                "--cgroup-parent {:?}: a relative path of names [A-Za-z0-9._-]",
                self.limits.cgroup_parent
            )));
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(bad("--uid and --gid must not be 0".into()));
        }
        for p in [&self.root, &self.exec].into_iter().chain(&self.netns) {
            if !p.is_absolute() {
                return Err(bad(format!("{} is not an absolute path", p.display())));
            }
        }
        let mut inside: Vec<&Path> = Vec::new();
        for b in self.read_only.iter().chain(&self.writable) {
            check_jail_path(&b.jail)?;
            if !b.host.is_absolute() {
                return Err(bad(format!("{} is not an absolute path", b.host.display())));
            }
            inside.push(&b.jail);
        }
        for d in &self.devices {
            check_jail_path(d)?;
            if !d.starts_with("/dev") {
                return Err(bad(format!("device {} is not under /dev", d.display())));
            }
            inside.push(d);
        }
        for (i, p) in inside.iter().enumerate() {
            if inside[..i].contains(p) {
                return Err(bad(format!("{} is given twice", p.display())));
            }
        }
        for (k, _) in &self.env {
            if k.is_empty() || k.contains('=') {
                return Err(bad(format!("bad environment variable name {k:?}")));
            }
        }
        if self.args.is_empty() {
            return Err(bad("no program arguments after --".into()));
        }
        Ok(())
    }
}

/// An absolute path of plain components (no `.`, `..`), not the root itself.
fn check_jail_path(p: &Path) -> Result<(), JailError> {
    let mut parts = p.components();
    let absolute = parts.next() == Some(Component::RootDir);
    let plain = parts.clone().all(|c| matches!(c, Component::Normal(_)));
    if !absolute || !plain || parts.next().is_none() || p.as_os_str().as_bytes().contains(&0) {
        return Err(bad(format!(
            "jail path {} must be absolute, below /, without . or ..",
            p.display()
        )));
    }
    Ok(())
}

fn bad(message: String) -> JailError {
    JailError::Spec(message)
}

fn utf8(name: &str, v: OsString) -> Result<String, JailError> {
    v.into_string()
        .map_err(|v| bad(format!("{name} {}: not UTF-8", v.to_string_lossy())))
}

fn number<T: std::str::FromStr>(name: &str, v: OsString) -> Result<T, JailError> {
    let s = utf8(name, v)?;
    s.parse()
        .map_err(|_| bad(format!("{name} {s}: not a number in range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JailSpec {
        JailSpec {
            id: "task-abc".into(),
            uid: 900_001,
            gid: 900_001,
            root: "/var/lib/skiff/tasks/abc/jail".into(),
            exec: "/usr/local/bin/skiff-vmm".into(),
            read_only: vec![Bind {
                host: "/data/vmlinux".into(),
                jail: "/vmlinux".into(),
            }],
            writable: vec![Bind {
                host: "/data/t/vm".into(),
                jail: "/run".into(),
            }],
            devices: vec!["/dev/kvm".into()],
            netns: None,
            limits: Limits {
                cpus: Some(2),
                memory_bytes: Some(256 << 20),
                pids_max: Some(12),
                file_bytes: Some(1 << 30),
                ..Limits::default()
            },
            env: vec![("SKIFF_LOG".into(), "info".into())],
            args: vec!["skiff-vmm".into(), "--kernel".into(), "/vmlinux".into()],
        }
    }

    #[test]
    fn arguments_round_trip() {
        let mut s = spec();
        assert_eq!(JailSpec::parse(s.to_args()).unwrap(), s);
        s.netns = Some("/run/netns/skiff-abc".into());
        s.devices.push("/dev/net/tun".into());
        assert_eq!(JailSpec::parse(s.to_args()).unwrap(), s);
    }

    #[test]
    fn refuses_what_would_not_be_a_jail() {
        type Change = Box<dyn Fn(&mut JailSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("root uid", Box::new(|s| s.uid = 0)),
            ("root gid", Box::new(|s| s.gid = 0)),
            ("escaping id", Box::new(|s| s.id = "../x".into())),
            (
                "escaping parent",
                Box::new(|s| s.limits.cgroup_parent = "a/../..".into()),
            ),
            (
                "dotdot inside",
                Box::new(|s| s.read_only[0].jail = "/a/../etc".into()),
            ),
            (
                "relative inside",
                Box::new(|s| s.read_only[0].jail = "vmlinux".into()),
            ),
            (
                "the root itself",
                Box::new(|s| s.writable[0].jail = "/".into()),
            ),
            (
                "device elsewhere",
                Box::new(|s| s.devices[0] = "/kvm".into()),
            ),
            ("relative exec", Box::new(|s| s.exec = "skiff-vmm".into())),
            (
                "relative netns",
                Box::new(|s| s.netns = Some("netns/x".into())),
            ),
            ("no program", Box::new(|s| s.args.clear())),
            (
                "twice",
                Box::new(|s| s.writable[0].jail = "/vmlinux".into()),
            ),
        ];
        for (what, change) in cases {
            let mut s = spec();
            change(&mut s);
            assert!(
                matches!(JailSpec::parse(s.to_args()), Err(JailError::Spec(_))),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn unknown_and_incomplete_arguments_are_named() {
        let e = JailSpec::parse(["--bogus".into()]).unwrap_err().to_string();
        assert!(e.contains("--bogus"), "{e}");
        let e = JailSpec::parse(["--uid".into()]).unwrap_err().to_string();
        assert!(e.contains("--uid needs a value"), "{e}");
    }
}
