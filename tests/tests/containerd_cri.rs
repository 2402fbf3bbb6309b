//! The Kubernetes path of `io.containerd.skiff.v2`, at the CRI level (Kubernetes itself is
//! not packaged here): a real containerd in a test host namespace, its CRI plugin with a
//! CNI bridge network, driven over its gRPC socket with Kubernetes' CRI API as the kubelet
//! drives it. A pod with runtime handler `skiff` gets its sandbox and a container in a
//! microVM that has the pod's address and reaches the pod network's gateway; the
//! container's log and exit code are read, then the pod is stopped and removed and no shim
//! is left. A container with a user the image lacks is refused.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use skiff_tests::containerd::{processes_with, Containerd, BUSYBOX_IMAGE};
use skiff_tests::netns::TestNetns;
use skiff_tests::{kvm_available, wait_until};
use tonic::transport::{Channel, Endpoint, Uri};

/// The pods' subnet, inside the test host namespace only.
const SUBNET: &str = "10.89.30.0/24";
const GATEWAY: &str = "10.89.30.1";

fn connect(
    rt: &tokio::runtime::Runtime,
    socket: std::path::PathBuf,
) -> Result<RuntimeServiceClient<Channel>> {
    let channel = rt.block_on(async move {
        Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .context("connecting to containerd's CRI socket")
    })?;
    Ok(RuntimeServiceClient::new(channel))
}

/// A container of the busybox image named `name` that runs `command`.
fn busybox(name: &str, command: Vec<String>) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command,
        ..Default::default()
    }
}

#[test]
fn a_pod_runs_in_a_skiff_microvm_through_cri() -> Result<()> {
    if !kvm_available("a_pod_runs_in_a_skiff_microvm_through_cri") {
        return Ok(());
    }
    let host = TestNetns::new("cri");
    let ipam = skiff_tests::paths::tmp_dir().join("containerd-cri-ipam");
    let _ = std::fs::remove_dir_all(&ipam);
    let cni = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "skiff-cri-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "cri0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": SUBNET,
                "gateway": GATEWAY,
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam,
            }
        }]
    });
    let ctrd = Containerd::start_in("cri", Some(&host.path()), Some(cni))?;
    ctrd.import_busybox_in("k8s.io")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut cri = connect(&rt, ctrd.socket.clone())?;

    let logs = ctrd.dir.join("pod-logs");
    std::fs::create_dir_all(&logs)?;
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-web-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    let pod = rt
        .block_on(cri.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: "skiff".into(),
        }))
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let status = rt
        .block_on(cri.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        }))?
        .into_inner()
        .status
        .context("no pod status")?;
    let pod_ip = status.network.context("no pod network")?.ip;
    assert!(pod_ip.starts_with("10.89.30."), "pod address {pod_ip}");

    // Bad input: a user the image does not have is refused by containerd, before any VM.
    let bad_user = ContainerConfig {
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_username: "nosuch".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..busybox("bad-user", vec!["true".into()])
    };
    let refused = rt.block_on(cri.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(bad_user),
        sandbox_config: Some(pod_config.clone()),
    }));
    let why = refused
        .expect_err("an unknown user is refused")
        .message()
        .to_owned();
    // containerd resolves the name in the image (its message does not repeat it).
    assert!(why.contains("no users found"), "{why}");

    // The container prints its interface's address (the pod's) and reaches the gateway
    // on the test host through the VM's TAP and the pod's eth0.
    let container_config = ContainerConfig {
        log_path: "main.log".into(),
        ..busybox(
            "main",
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo hello-cri; ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ping -c 1 -W 10 {GATEWAY} >/dev/null && echo gateway-ok; exit 7"),
            ],
        )
    };
    let container = rt
        .block_on(cri.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config),
            sandbox_config: Some(pod_config.clone()),
        }))
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    // A second container in the pod is refused while the first runs: each container is
    // its own VM, and the pod has one interface for one VM.
    let second = rt
        .block_on(cri.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(busybox("second", vec!["true".into()])),
            sandbox_config: Some(pod_config.clone()),
        }))
        .context("CreateContainer (second)")?
        .into_inner()
        .container_id;
    rt.block_on(cri.start_container(StartContainerRequest {
        container_id: container.clone(),
    }))
    .context("StartContainer")?;
    let refused = rt.block_on(cri.start_container(StartContainerRequest {
        container_id: second.clone(),
    }));
    let why = refused
        .expect_err("a second container in the pod is refused")
        .message()
        .to_owned();
    assert!(
        why.contains("io.containerd.skiff.v2 runs one container per pod"),
        "{why}"
    );
    let done = wait_until("the container to exit", Duration::from_secs(600), || {
        let s = rt
            .block_on(cri.container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            }))
            .ok()?
            .into_inner()
            .status?;
        (s.state == ContainerState::ContainerExited as i32).then_some(s)
    })?;
    assert_eq!(done.exit_code, 7, "{done:?}");
    // CRI's log format: `TIME STREAM TAG TEXT` per line.
    let log = std::fs::read_to_string(logs.join("main.log"))?;
    let lines: Vec<&str> = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    assert_eq!(lines.first(), Some(&"hello-cri"), "{log}");
    assert!(
        lines.contains(&format!("inet {pod_ip}/24").as_str()),
        "the VM has the pod's address {pod_ip}: {log}"
    );
    assert!(lines.contains(&"gateway-ok"), "{log}");

    rt.block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .context("StopPodSandbox")?;
    rt.block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .context("RemovePodSandbox")?;
    let pods = rt
        .block_on(cri.list_pod_sandbox(ListPodSandboxRequest { filter: None }))?
        .into_inner()
        .items;
    if !pods.is_empty() {
        bail!("pods left: {pods:?}");
    }
    let socket = ctrd.socket.display().to_string();
    wait_until("the pod's shim to end", Duration::from_secs(600), || {
        (!processes_with("containerd-shim-skiff-v2")
            .iter()
            .any(|(_, c)| c.contains(&socket)))
        .then_some(())
    })?;
    Ok(())
}
