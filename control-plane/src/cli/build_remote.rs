//! `skiff build` through `skiff serve`: the context's manifest goes first, then a tar of
//! only the files the server lacks (so a rebuild after editing one file sends one file),
//! then the build, whose events are followed to its result. Ctrl-C cancels it.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use control_plane::build::context::select_ignore_file;
use control_plane::build::{BuildContext, BuildEvent, StepStatus, Stream};
use serde_json::{json, Value};

use super::build::{show, BuildArgs};
use super::remote::Api;

/// Largest `.dockerignore` sent.
const MAX_IGNORE_BYTES: u64 = 1 << 20;

/// A build event from its JSON line.
fn event_of(v: &Value) -> Option<BuildEvent> {
    let index = v["index"].as_u64().unwrap_or(0) as usize;
    match v["type"].as_str()? {
        "step" => Some(BuildEvent::Step {
            index,
            label: v["label"].as_str().unwrap_or_default().to_owned(),
            status: match v["status"].as_str()? {
                "started" => StepStatus::Started,
                "cached" => StepStatus::Cached,
                "done" => StepStatus::Done,
                _ => StepStatus::Failed,
            },
            miss_reason: v["missReason"].as_str().map(str::to_owned),
        }),
        "log" => Some(BuildEvent::Log {
            index,
            stream: if v["stream"] == "stderr" {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            data: v["data"].as_str().unwrap_or_default().as_bytes().to_vec(),
        }),
        "warning" => Some(BuildEvent::Warning(
            v["message"].as_str().unwrap_or_default().to_owned(),
        )),
        _ => None,
    }
}

/// A tar of the context's files at `paths`, spooled to an unnamed file; with its length.
fn tar_of(
    context: &Path,
    ctx: &BuildContext,
    paths: &[String],
) -> anyhow::Result<(std::fs::File, u64)> {
    let file = tempfile::tempfile().context("a temporary file for the upload")?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    for p in paths {
        let e = ctx
            .manifest
            .get(p)
            .ok_or_else(|| anyhow!("the server asked for {p:?}, which the context lacks"))?;
        // Never through a link: the manifest's walk saw a regular file here.
        let f = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(context.join(p))
            .with_context(|| format!("cannot read {p} from the context"))?;
        let size = e.size.unwrap_or(0);
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(e.mode);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, p, f.take(size))
            .with_context(|| format!("cannot add {p} to the upload"))?;
    }
    let mut out = tar
        .into_inner()
        .context("finishing the upload")?
        .into_inner()
        .map_err(|e| anyhow!("finishing the upload: {}", e.error()))?;
    use std::io::Seek;
    let len = out.stream_position()?;
    out.rewind()?;
    Ok((out, len))
}

pub fn build(
    api: &Api,
    a: &BuildArgs,
    context: &Path,
    dockerfile_path: &Path,
    dockerfile: Vec<u8>,
    ctx: &BuildContext,
) -> anyhow::Result<i32> {
    let dockerfile =
        String::from_utf8(dockerfile).map_err(|_| anyhow!("the Dockerfile is not UTF-8"))?;
    let rel = dockerfile_path
        .strip_prefix(context)
        .unwrap_or(dockerfile_path);
    let dockerignore = match select_ignore_file(context, rel)? {
        Some(f) => {
            let mut text = String::new();
            std::fs::File::open(&f.path)?
                .take(MAX_IGNORE_BYTES)
                .read_to_string(&mut text)
                .with_context(|| format!("cannot read {}", f.path.display()))?;
            Some(text)
        }
        None => None,
    };
    let created = api.post(
        "/v1/build-contexts",
        &json!({"files": ctx.manifest.entries}),
    )?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let missing: Vec<String> =
        serde_json::from_value(created["missing"].clone()).unwrap_or_default();
    if !missing.is_empty() {
        let (file, len) = tar_of(context, ctx, &missing)?;
        eprintln!(
            "sending {} files ({len} bytes) of the context",
            missing.len()
        );
        let left = api.put_file(&format!("/v1/build-contexts/{id}/files"), file, len)?;
        if left["missing"].as_array().is_some_and(|m| !m.is_empty()) {
            bail!(
                "the server still lacks files of the context: {}",
                left["missing"]
            );
        }
    }
    let body = json!({
        "contextId": id,
        "dockerfile": dockerfile,
        "dockerignore": dockerignore,
        "tags": a.tags,
        "buildArgs": super::build::key_values(&a.build_args, "--build-arg", true)?,
        "target": a.target,
        "labels": super::build::key_values(&a.labels, "--label", false)?,
        "noCache": a.no_cache,
        "sourceDateEpoch": a.source_date_epoch,
        "format": match a.format { super::build::FormatArg::Oci => "oci", super::build::FormatArg::Docker => "docker" },
        "network": a.network,
        "cpu": a.cpu,
        "memoryMiB": a.memory,
        "timeoutSeconds": a.timeout,
    });
    let mut body = body;
    let mut auth = None;
    if a.push {
        body["push"] = true.into();
        auth = registry_config(&a.tags)?;
    }
    let started = api.post_with("/v1/builds", &body, auth)?;
    let build_id = started["id"].as_str().unwrap_or_default().to_owned();
    cancel_on_signals(api, &build_id)?;
    let json_mode = matches!(a.progress, super::build::ProgressMode::Json);
    let mut result = Value::Null;
    for line in api.lines(&format!("/v1/builds/{build_id}/events?follow=true"))? {
        let line = line.context("the build's event stream broke")?;
        let v: Value = serde_json::from_str(&line).context("a build event is not JSON")?;
        if v["type"] == "result" {
            result = v;
            break;
        }
        if json_mode {
            println!("{line}");
            let _ = std::io::stdout().flush();
        } else if v["type"] == "push" {
            show_push(&v);
        } else if let Some(e) = event_of(&v) {
            show(&e, false);
        }
    }
    if result.is_null() {
        bail!("the build's event stream ended without a result");
    }
    if json_mode {
        println!("{result}");
    }
    match result["state"].as_str() {
        Some("SUCCEEDED") => {
            let digest = result["imageDigest"].as_str().unwrap_or_default();
            if !json_mode {
                eprintln!(
                    "built {digest} (image id {})",
                    result["imageId"].as_str().unwrap_or_default()
                );
                for t in &a.tags {
                    eprintln!("tagged {t}");
                }
                println!("{digest}");
            }
            Ok(0)
        }
        _ => {
            let err = &result["error"];
            for l in err["outputTail"].as_array().into_iter().flatten() {
                eprintln!("  | {}", l.as_str().unwrap_or_default());
            }
            eprintln!(
                "skiff: error: {}",
                err["message"].as_str().unwrap_or("the build failed")
            );
            Ok(match err["code"].as_str() {
                Some("StepFailed" | "DockerfileInvalid") => 1,
                _ => 125,
            })
        }
    }
}

/// A push event of the build, as `skiff image push` prints it.
fn show_push(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or_default();
    let digest = s("digest");
    let short = digest
        .trim_start_matches("sha256:")
        .get(..12)
        .unwrap_or(digest);
    match s("status") {
        "done" => eprintln!("pushed {}", s("tag")),
        "exists" => eprintln!("{short}: already exists"),
        "mounted" => eprintln!("{short}: mounted from {}", s("from")),
        "uploading" if v["size"].is_u64() => eprintln!("{short}: uploading {} bytes", v["size"]),
        "retry" => eprintln!(
            "{short}: retry {} from byte {} ({})",
            v["attempt"],
            v["bytes"],
            s("error")
        ),
        "pushed" => eprintln!("{short}: pushed"),
        _ => {}
    }
}

/// The `X-Registry-Config` header: for each registry the tags name, its credentials from
/// the same auth file a pull reads (REGISTRY_AUTH_FILE, DOCKER_CONFIG or
/// ~/.docker/config.json), so each registry gets only its own. None without any entry.
fn registry_config(tags: &[String]) -> anyhow::Result<Option<(&'static str, String)>> {
    use base64::Engine;
    let Some(path) = control_plane::images::registry::auth_file::default_path() else {
        return Ok(None);
    };
    let creds = control_plane::images::registry::auth_file::load(&path)?;
    let mut config = serde_json::Map::new();
    for tag in tags {
        let r: control_plane::images::Reference =
            tag.parse().map_err(|e| anyhow!("-t {tag}: {e}"))?;
        if let Some(c) = creds.get(&r.registry) {
            config.insert(
                r.registry.clone(),
                json!({"username": c.username, "password": c.password,
                    "serveraddress": r.registry}),
            );
        }
    }
    if config.is_empty() {
        return Ok(None);
    }
    Ok(Some((
        "X-Registry-Config",
        base64::engine::general_purpose::URL_SAFE.encode(Value::Object(config).to_string()),
    )))
}

/// SIGINT or SIGTERM asks the server to cancel the build; its result then ends the stream.
fn cancel_on_signals(api: &Api, id: &str) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let (api, path) = (api.clone(), format!("/v1/builds/{id}/cancel"));
    std::thread::spawn(move || {
        for _ in signals.forever() {
            let _ = api.post(&path, &json!({}));
        }
    });
    Ok(())
}
