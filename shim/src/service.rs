//! The shim's process life (containerd's `start`, `delete` and serve actions): one shim
//! daemon per container, or per pod under CRI (grouped by the pod's sandbox id, as Kata's
//! shim does), serving the task API on its socket until its last container is gone.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::events::{timestamp, Events};
use crate::task::{SharedHost, TaskService};

pub struct Service {
    namespace: String,
    exit: Arc<ExitSignal>,
    host: SharedHost,
}

impl containerd_shim::Shim for Service {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
            host: SharedHost::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // The working directory is the bundle: a CRI container joins its pod's shim.
        let grouping = crate::bundle::load(Path::new("."))
            .ok()
            .and_then(|spec| crate::bundle::sandbox_id(&spec))
            .unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    /// containerd's clean-up after a shim that is gone (crashed or killed): ends any VM
    /// it left (by its jail's cgroup) and removes the container's scratch files.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let work = std::env::current_dir()
            .map_err(|e| containerd_shim::Error::Other(e.to_string()))?
            .join("skiff");
        let vm = work.join("vm");
        if let Some(cg) = control_plane::launcher::jail::cgroup_of(&vm, "skiff") {
            cg.kill();
            let _ = cg.remove();
        }
        let _ = std::fs::remove_dir_all(&work);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(timestamp(std::time::SystemTime::now())),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        if let Some(Ok(host)) = self.host.get() {
            host.close();
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(
            Events::start(publisher, self.namespace.clone()),
            self.exit.clone(),
            self.host.clone(),
        )
    }
}
