//! containerd's task API (v2) over the containers of this shim: each container is one
//! Skiff microVM started by the same launcher as `skiff run` (jailed VMM, agent, EROFS
//! root). Create prepares (bundle, root filesystem image); Start boots the VM and runs the
//! process; the process's end is the task's exit. A CRI pod's sandbox ("pause") container
//! needs no VM: it is a placeholder that lives until it is killed.
//!
//! Exec runs a second command in the container's VM through the agent (the same path as
//! services' command health checks): its output reaches the exec's stdout FIFO when it
//! ends, at most the agent's 4 KiB; it takes no stdin and no signals.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use control_plane::launcher::{self, LaunchConfig, Output, TaskControl, TaskEnd, TaskEvent};
use control_plane::network::TaskNetwork;
use control_plane::server::networking::guest_spec;
use guest_agent::RunSpec;

use crate::events::{timestamp, Events};
use crate::host::Host;
use crate::stdio::{stdin_link, Outputs, StdinCloser, StdinForward};
use crate::{bundle, rootfs};

/// How long a process has between a stop's SIGTERM and its VM's end (containerd sends
/// SIGKILL itself after its own grace period, so this only bounds a lost one).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a booting VM's agent (a full boot on an emulating host is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest an exec may run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(3600);

fn error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    fn api(self) -> api::Status {
        match self {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Exit {
    code: u32,
    at: SystemTime,
}

#[derive(Debug, Clone, Default)]
struct Io {
    stdin: String,
    stdout: String,
    stderr: String,
}

/// A second command run in a container's VM.
struct ExecProcess {
    argv: Vec<String>,
    io: Io,
    status: Status,
    exit: Option<Exit>,
}

struct Container {
    bundle: String,
    io: Io,
    /// The VM's launch, until Start takes it (None for a pod's sandbox placeholder).
    launch: Option<(LaunchConfig, RunSpec)>,
    sandbox: bool,
    control: TaskControl,
    /// The stdin FIFO's forwarder, until Start takes it.
    stdin: Option<StdinForward>,
    /// Dropped by CloseIO.
    stdin_closer: Option<StdinCloser>,
    /// This shim's scratch directory for the container (`<bundle>/skiff`).
    work: PathBuf,
    /// The pod network namespace its VM joins.
    netns: Option<String>,
    status: Status,
    pid: u32,
    exit: Option<Exit>,
    execs: HashMap<String, ExecProcess>,
}

#[derive(Default)]
struct Containers {
    map: Mutex<HashMap<String, Container>>,
    /// Notified whenever a process ends.
    ended: Condvar,
}

#[derive(Clone)]
pub struct TaskService {
    containers: Arc<Containers>,
    events: Events,
    exit: Arc<ExitSignal>,
    host: SharedHost,
}

/// The installation, found at the first container that needs a VM (shared with the
/// service, which closes it at exit).
pub type SharedHost = Arc<OnceLock<Result<Host, String>>>;

impl TaskService {
    pub fn new(events: Events, exit: Arc<ExitSignal>, host: SharedHost) -> Self {
        Self {
            containers: Arc::default(),
            events,
            exit,
            host,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn host(&self) -> Result<&Host, ttrpc::Error> {
        self.host
            .get_or_init(Host::find)
            .as_ref()
            .map_err(|e| error(Code::FAILED_PRECONDITION, format!("skiff: {e}")))
    }

    /// Reads the bundle and builds the root filesystem image: everything but the VM.
    fn prepare(
        &self,
        req: &api::CreateTaskRequest,
        work: &std::path::Path,
    ) -> Result<Container, ttrpc::Error> {
        let invalid = |e: &dyn std::fmt::Display| error(Code::INVALID_ARGUMENT, e.to_string());
        if req.terminal {
            return Err(error(
                Code::INVALID_ARGUMENT,
                "io.containerd.skiff.v2 does not support terminals (ctr -t, tty: true)",
            ));
        }
        let bundle_dir = PathBuf::from(&req.bundle);
        let spec = bundle::load(&bundle_dir).map_err(|e| invalid(&e))?;
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let plan = bundle::plan(&bundle_dir, &spec, host_cpus).map_err(|e| invalid(&e))?;
        if plan.terminal {
            return Err(error(
                Code::INVALID_ARGUMENT,
                "io.containerd.skiff.v2 does not support terminals (process.terminal)",
            ));
        }
        let io = Io {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        if plan.is_sandbox {
            return Ok(Container {
                bundle: req.bundle.clone(),
                io,
                launch: None,
                sandbox: true,
                control: TaskControl::new(),
                stdin: None,
                stdin_closer: None,
                work: work.to_owned(),
                // The pod's namespace: its containers name it through the sandbox.
                netns: plan.netns.clone(),
                status: Status::Created,
                pid: std::process::id(),
                exit: None,
                execs: HashMap::new(),
            });
        }
        let host = self.host()?;
        std::fs::create_dir_all(work)
            .map_err(|e| error(Code::INTERNAL, format!("{}: {e}", work.display())))?;
        let image = rootfs::image(&req.rootfs, &plan.root_dir, &host.rootfs, work)
            .map_err(|e| invalid(&e))?;
        let cfg = LaunchConfig {
            vmm: host.vmm.clone(),
            jail: host.jail.clone(),
            kernel: host.kernel.clone(),
            initrd: host.initrd.clone(),
            vcpus: plan.vcpus,
            memory_mib: plan.memory_mib,
            rootfs: image,
            scratch: None,
            work_dir: work.join("vm"),
            timeout: None,
            stop_timeout: STOP_TIMEOUT,
            boot_timeout: BOOT_TIMEOUT,
            snapshot: None,
            net: None,
        };
        let netns = match (&plan.netns, &plan.netns_other) {
            (Some(ns), _) => Some(ns.clone()),
            (None, None) => None,
            (None, Some(path)) => {
                // CRI joins a pod's containers to their sandbox's namespace by its
                // process; here the sandbox is a placeholder in this shim that knows the
                // pod's namespace by name.
                let sandbox = plan.sandbox_id.as_ref().and_then(|id| {
                    self.lock()
                        .get(id)
                        .filter(|c| c.sandbox)
                        .and_then(|c| c.netns.clone())
                });
                Some(sandbox.ok_or_else(|| {
                    error(
                        Code::INVALID_ARGUMENT,
                        format!(
                            "bundle config.json: linux.namespaces: network namespace {}: only namespaces under /run/netns (or a pod sandbox's in this shim) can be joined",
                            path.display()
                        ),
                    )
                })?)
            }
        };
        let net = match &netns {
            Some(ns) => Some(
                TaskNetwork::from_netns(ns, plan.nameservers.clone())
                    .map_err(|e| error(Code::FAILED_PRECONDITION, format!("pod network: {e}")))?,
            ),
            None => None,
        };
        let cfg = LaunchConfig {
            net: net.clone(),
            ..cfg
        };
        let cfg = LaunchConfig {
            snapshot: host.snapshots.for_shape(&cfg),
            ..cfg
        };
        let spec = RunSpec {
            image_disk: "/dev/vda".into(),
            upper_size_mib: (plan.memory_mib / 4).max(16),
            stdin: !req.stdin.is_empty(),
            network: net.as_ref().map(|n| Box::new(guest_spec(n))),
            ..plan.spec
        };
        let (stdin, stdin_closer) = match req.stdin.as_str() {
            "" => (None, None),
            path => {
                let (f, c) = stdin_link(path)
                    .map_err(|e| error(Code::INTERNAL, format!("stdin {path}: {e}")))?;
                (Some(f), Some(c))
            }
        };
        tracing::info!(id = %req.id, vcpus = cfg.vcpus, memory_mib = cfg.memory_mib, rootfs = %cfg.rootfs.display(), restore = cfg.snapshot.is_some(), "container prepared");
        Ok(Container {
            bundle: req.bundle.clone(),
            io,
            launch: Some((cfg, spec)),
            sandbox: false,
            control: TaskControl::new(),
            stdin,
            stdin_closer,
            work: work.to_owned(),
            netns,
            status: Status::Created,
            pid: std::process::id(),
            exit: None,
            execs: HashMap::new(),
        })
    }

    /// Records a process's end, wakes its waiters and tells containerd.
    fn exited(&self, id: &str, exec_id: &str, code: u32) {
        let at = SystemTime::now();
        let pid = {
            let mut map = self.lock();
            let Some(c) = map.get_mut(id) else { return };
            let pid = c.pid;
            if exec_id.is_empty() {
                if c.exit.is_some() {
                    return;
                }
                c.status = Status::Stopped;
                c.exit = Some(Exit { code, at });
            } else if let Some(e) = c.execs.get_mut(exec_id) {
                e.status = Status::Stopped;
                e.exit = Some(Exit { code, at });
            }
            pid
        };
        self.containers.ended.notify_all();
        self.events.send(
            topics::TASK_EXIT_EVENT_TOPIC,
            TaskExit {
                container_id: id.to_owned(),
                id: if exec_id.is_empty() { id } else { exec_id }.to_owned(),
                pid,
                exit_status: code,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            },
        );
    }

    /// Runs the container's VM to its end (on its own thread).
    fn run(
        &self,
        id: String,
        (cfg, spec): (LaunchConfig, RunSpec),
        control: TaskControl,
        io: Io,
        stdin: Option<StdinForward>,
    ) {
        let mut out = Outputs::open(&io.stdout, &io.stderr);
        if let Some(s) = stdin {
            s.spawn(control.clone());
        }
        let result = launcher::run_task(&cfg, &spec, &control, &mut |e| match e {
            TaskEvent::Output(Output::Stdout, b) => out.stdout(b),
            TaskEvent::Output(Output::Stderr, b) => out.stderr(b),
            _ => {}
        });
        let code = match result {
            Ok(r) => {
                let why = match &r.end {
                    TaskEnd::Failed { message, .. } => Some(message.clone()),
                    TaskEnd::Lost(why) => Some(format!("task lost: {why}")),
                    TaskEnd::TimedOut(t) => Some(format!("timed out after {} s", t.as_secs())),
                    TaskEnd::Killed | TaskEnd::Exited { .. } => None,
                };
                if let Some(why) = why {
                    out.stderr(format!("skiff: {why}\n").as_bytes());
                    tracing::warn!(%id, "{why}");
                }
                r.end.exit_code()
            }
            Err(e) => {
                out.stderr(format!("skiff: {e}\n").as_bytes());
                tracing::error!(%id, "launch failed: {e}");
                125
            }
        };
        if let Some(net) = &cfg.net {
            // The pod's namespace stays (CRI tears it down); only the VM's TAP goes.
            net.unplug_vm();
        }
        tracing::info!(%id, code, "container exited");
        self.exited(&id, "", code as u32);
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StartResponse> {
        let (argv, io, control, pid) = {
            let mut map = self.lock();
            let c = map
                .get_mut(id)
                .ok_or_else(|| error(Code::NOT_FOUND, format!("container {id} not found")))?;
            if c.status != Status::Running || c.sandbox {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("container {id} is not running"),
                ));
            }
            let (control, pid) = (c.control.clone(), c.pid);
            let e = c
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| error(Code::NOT_FOUND, format!("exec {exec_id} not found")))?;
            if e.status != Status::Created {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} was already started"),
                ));
            }
            e.status = Status::Running;
            (e.argv.clone(), e.io.clone(), control, pid)
        };
        let me = self.clone();
        let (id2, exec2) = (id.to_owned(), exec_id.to_owned());
        std::thread::spawn(move || {
            let mut out = Outputs::open(&io.stdout, &io.stderr);
            // An exec right after the start waits for the container's process, as one
            // into a runc container that is starting would.
            let ran = if control.wait_started() {
                control.exec(argv, EXEC_TIMEOUT)
            } else {
                Err(control_plane::launcher::ControlError::Ended)
            };
            let code = match ran {
                Ok(o) => {
                    out.stdout(o.output.as_bytes());
                    o.exit_code
                }
                Err(e) => {
                    out.stderr(format!("skiff: {e}\n").as_bytes());
                    125
                }
            };
            drop(out);
            me.exited(&id2, &exec2, code as u32);
        });
        self.events.send(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid,
                ..Default::default()
            },
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }
}

fn not_found(id: &str) -> ttrpc::Error {
    error(Code::NOT_FOUND, format!("container {id} not found"))
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.lock().contains_key(&req.id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let work = PathBuf::from(&req.bundle).join("skiff");
        let c = match self.prepare(&req, &work) {
            Ok(c) => c,
            Err(e) => {
                // Nothing is left behind: the container's scratch files go with it.
                let _ = std::fs::remove_dir_all(&work);
                tracing::warn!(id = %req.id, "create refused: {e:?}");
                return Err(e);
            }
        };
        {
            let mut map = self.lock();
            // One VM per container, on the pod's one interface: a second container in a
            // pod with a network would need the pod's VM (as Kata has), which is not built.
            let shared = c.netns.as_ref().is_some_and(|ns| {
                !c.sandbox
                    && map.values().any(|o| {
                        !o.sandbox && o.netns.as_ref() == Some(ns) && o.status != Status::Stopped
                    })
            });
            if shared || map.contains_key(&req.id) {
                drop(map);
                let _ = std::fs::remove_dir_all(&work);
                return Err(if shared {
                    error(
                        Code::FAILED_PRECONDITION,
                        "io.containerd.skiff.v2 runs one container per pod: this pod already has one running",
                    )
                } else {
                    error(
                        Code::ALREADY_EXISTS,
                        format!("container {} already exists", req.id),
                    )
                });
            }
            map.insert(req.id.clone(), c);
        }
        let pid = std::process::id();
        self.events.send(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            },
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            return self.start_exec(&req.id, &req.exec_id);
        }
        let (launch, control, io, stdin) = {
            let mut map = self.lock();
            let c = map.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
            if c.status != Status::Created {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("container {} was already started", req.id),
                ));
            }
            c.status = Status::Running;
            (
                c.launch.take(),
                c.control.clone(),
                c.io.clone(),
                c.stdin.take(),
            )
        };
        let mut pid = std::process::id();
        if let Some(launch) = launch {
            let me = self.clone();
            let id = req.id.clone();
            let ctl = control.clone();
            std::thread::Builder::new()
                .name(format!("vm-{}", id.chars().take(8).collect::<String>()))
                .spawn(move || me.run(id, launch, ctl, io, stdin))
                .map_err(|e| error(Code::INTERNAL, format!("starting the VM thread: {e}")))?;
            // The VMM is the container's process on this host; it is running within
            // milliseconds (the boot itself is the guest's business).
            for _ in 0..500 {
                if let Some(p) = control.vmm_pid() {
                    pid = p;
                    break;
                }
                if self.lock().get(&req.id).is_none_or(|c| c.exit.is_some()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(c) = self.lock().get_mut(&req.id) {
                c.pid = pid;
            }
        }
        self.events.send(
            topics::TASK_START_EVENT_TOPIC,
            TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            },
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut map = self.lock();
        loop {
            let c = map.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let exit = if req.exec_id.is_empty() {
                c.exit
            } else {
                c.execs
                    .get(&req.exec_id)
                    .ok_or_else(|| {
                        error(Code::NOT_FOUND, format!("exec {} not found", req.exec_id))
                    })?
                    .exit
            };
            if let Some(e) = exit {
                return Ok(api::WaitResponse {
                    exit_status: e.code,
                    exited_at: MessageField::some(timestamp(e.at)),
                    ..Default::default()
                });
            }
            map = self
                .containers
                .ended
                .wait(map)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let signal = req.signal as i32;
        if !(1..=64).contains(&signal) {
            return Err(error(
                Code::INVALID_ARGUMENT,
                format!("signal {} is not a signal", req.signal),
            ));
        }
        let (status, control, sandbox) = {
            let map = self.lock();
            let c = map.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if !req.exec_id.is_empty() {
                let e = c.execs.get(&req.exec_id).ok_or_else(|| {
                    error(Code::NOT_FOUND, format!("exec {} not found", req.exec_id))
                })?;
                if e.status == Status::Stopped {
                    return Err(error(Code::NOT_FOUND, "process already finished"));
                }
                return Err(error(
                    Code::UNIMPLEMENTED,
                    "io.containerd.skiff.v2 cannot signal an exec (it ends at its timeout)",
                ));
            }
            (c.status, c.control.clone(), c.sandbox)
        };
        match status {
            Status::Stopped => Err(error(Code::NOT_FOUND, "process already finished")),
            // Never started, or a sandbox placeholder: it ends as a killed process would.
            Status::Created => {
                self.exited(&req.id, "", 128 + req.signal);
                Ok(api::Empty::new())
            }
            Status::Running if sandbox => {
                self.exited(&req.id, "", 128 + req.signal);
                Ok(api::Empty::new())
            }
            Status::Running => {
                if signal == libc::SIGKILL {
                    // The VM is the container: ending it is SIGKILL's meaning, and works
                    // whatever the guest is doing.
                    control.kill_vm();
                } else if control.signal(signal).is_err() {
                    return Err(error(Code::NOT_FOUND, "process already finished"));
                }
                Ok(api::Empty::new())
            }
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut map = self.lock();
        let c = map.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            let e = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| error(Code::NOT_FOUND, format!("exec {} not found", req.exec_id)))?;
            if e.status == Status::Running {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    "the exec is still running",
                ));
            }
            let exit = e.exit;
            c.execs.remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid: c.pid,
                exit_status: exit.map_or(0, |e| e.code),
                exited_at: MessageField::from_option(exit.map(|e| timestamp(e.at))),
                ..Default::default()
            });
        }
        if c.status == Status::Running {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("container {} is running: kill it first", req.id),
            ));
        }
        let Some(c) = map.remove(&req.id) else {
            return Err(not_found(&req.id));
        };
        drop(map);
        c.control.kill_vm();
        if let Err(e) = std::fs::remove_dir_all(&c.work) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", c.work.display());
            }
        }
        let exit = c.exit.unwrap_or(Exit {
            code: 0,
            at: SystemTime::now(),
        });
        self.events.send(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: c.pid,
                exit_status: exit.code,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            },
        );
        Ok(api::DeleteResponse {
            pid: c.pid,
            exit_status: exit.code,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let map = self.lock();
        let c = map.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let (status, exit, io) = if req.exec_id.is_empty() {
            (c.status, c.exit, &c.io)
        } else {
            let e = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| error(Code::NOT_FOUND, format!("exec {} not found", req.exec_id)))?;
            (e.status, e.exit, &e.io)
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: c.pid,
            status: status.api().into(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: false,
            exit_status: exit.map_or(0, |e| e.code),
            exited_at: MessageField::from_option(exit.map(|e| timestamp(e.at))),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let map = self.lock();
        let c = map.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let processes = (c.status == Status::Running)
            .then(|| containerd_shim::protos::types::task::ProcessInfo {
                pid: c.pid,
                ..Default::default()
            })
            .into_iter()
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        if req.terminal {
            return Err(error(
                Code::INVALID_ARGUMENT,
                "io.containerd.skiff.v2 does not support terminals (ctr task exec -t)",
            ));
        }
        let process: oci_spec::runtime::Process = req
            .spec
            .as_ref()
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, "exec: no process spec"))
            .and_then(|any| {
                serde_json::from_slice(&any.value)
                    .map_err(|e| error(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))
            })?;
        let argv = process.args().clone().unwrap_or_default();
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err(error(Code::INVALID_ARGUMENT, "exec: no command given"));
        }
        {
            let mut map = self.lock();
            let c = map.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
            if c.execs.contains_key(&req.exec_id) || req.exec_id.is_empty() {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("exec {:?} already exists", req.exec_id),
                ));
            }
            c.execs.insert(
                req.exec_id.clone(),
                ExecProcess {
                    argv,
                    io: Io {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                    },
                    status: Status::Created,
                    exit: None,
                },
            );
        }
        self.events.send(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let mut map = self.lock();
        let c = map.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if req.stdin && req.exec_id.is_empty() {
            // The forwarder sends what the FIFO already holds, then closes the process's
            // stdin (execs take no stdin).
            drop(c.stdin_closer.take());
        }
        Ok(api::Empty::new())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.lock().get(&req.id).map_or(0, |c| c.pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // One shim serves a pod's containers: it stays while any is left.
        if self.lock().is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
