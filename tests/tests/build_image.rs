//! `skiff build --local` end to end with the installed binary: a two-stage Dockerfile on
//! the bundled busybox, every `RUN` in a real microVM, the result stored like a pulled
//! image and run with `skiff run`; the cache on a rebuild (same digest, mtime-only edits
//! hit, an ARG change misses at its first use); `SOURCE_DATE_EPOCH`; `RUN` steps restoring
//! the snapshot an earlier build left; and the errors a user sees for a bad Dockerfile, a
//! missing or ignored file, a link out of the context and a failing `RUN`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use skiff_tests::kvm_available;

fn skiff_in(state: &Path, args: &[&str]) -> Output {
    skiff_tests::install::skiff()
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("run skiff")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn state(name: &str) -> PathBuf {
    let d = skiff_tests::paths::deep_state_dir(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
    }
}

/// The stored blob `digest` as JSON.
fn blob(state: &Path, digest: &str) -> Value {
    let hex = digest.trim().trim_start_matches("sha256:");
    serde_json::from_slice(&fs::read(state.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// (status, missReason) of each step of a `--progress json` build, by step number.
fn step_states(out: &Output) -> Vec<(u64, String)> {
    let mut last: std::collections::BTreeMap<u64, String> = Default::default();
    for line in text(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        if v["type"] == "step" {
            let status = v["status"].as_str().unwrap_or_default();
            let e = last.entry(v["index"].as_u64().unwrap()).or_default();
            // "started" then "done" is a miss; "cached" alone a hit.
            if status != "done" {
                *e = status.to_owned();
            }
        }
    }
    last.into_iter().collect()
}

const APP_DOCKERFILE: &str = r#"ARG BASE=local/busybox:latest
FROM ${BASE} AS build
ARG GREETING=hello
WORKDIR /src
COPY src/ ./
RUN echo "$GREETING from $(cat msg.txt)" > /out.txt

FROM local/busybox:latest
ENV APP=/app
COPY --from=build /out.txt /app/out.txt
COPY --chmod=755 run.sh /app/
COPY old/ /data/
RUN rm /etc/group && rm -rf /data && mkdir /data && echo new > /data/new.txt
ARG VERSION=1
USER 1000:1000
EXPOSE 8080
LABEL org.example.version=$VERSION
ENTRYPOINT ["/bin/sh", "/app/run.sh"]
CMD ["arg1"]
"#;

const RUN_SH: &str = r#"#!/bin/sh
cat /app/out.txt
ls /data
test -e /etc/group || echo "no group file"
echo "args: $* user: $(id -u) app: $APP"
"#;

#[test]
fn a_multi_stage_build_runs_and_rebuilds_from_the_cache() {
    if !kvm_available("a_multi_stage_build_runs_and_rebuilds_from_the_cache") {
        return;
    }
    let st = state("build-image");
    let ctx = st.join("context");
    write(
        &ctx,
        &[
            ("Dockerfile", APP_DOCKERFILE),
            ("src/msg.txt", "the context\n"),
            ("run.sh", RUN_SH),
            ("old/old.txt", "old\n"),
            (".dockerignore", "*.log\n"),
            ("debug.log", "not sent\n"),
        ],
    );
    let ctx_arg = ctx.to_str().unwrap();
    // Shared with the test servers: the first build of the step shape leaves a snapshot
    // (if no earlier test did), and later RUN steps restore it.
    let shared = skiff_tests::serve::shared_snapshots();
    let snapshots = shared.to_str().unwrap();
    let build = |extra: &[&str]| {
        let mut args = vec![
            "build",
            "--local",
            "--snapshot-dir",
            snapshots,
            "-t",
            "myapp:1",
            "--progress",
            "json",
        ];
        args.extend_from_slice(extra);
        args.push(ctx_arg);
        let out = skiff_in(&st, &args);
        assert!(out.status.success(), "{}", show(&out));
        out
    };
    let first = build(&[]);
    let result = |o: &Output| -> Value {
        text(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "result")
            .expect("a result line")
    };
    let digest = result(&first)["imageDigest"].as_str().unwrap().to_owned();
    let states = step_states(&first);
    assert_eq!(states.len(), 17, "{states:?}");
    assert!(states[1..].iter().all(|(_, s)| s != "cached"), "{states:?}");

    // The image as a registry would see it.
    let manifest = blob(&st, &digest);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = blob(&st, manifest["config"]["digest"].as_str().unwrap());
    let c = &config["config"];
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/bin/sh", "/app/run.sh"])
    );
    assert_eq!(c["Cmd"], serde_json::json!(["arg1"]));
    assert_eq!(c["Labels"]["org.example.version"], "1");
    assert!(c["Env"]
        .as_array()
        .unwrap()
        .contains(&Value::from("APP=/app")));
    let layers = manifest["layers"].as_array().unwrap();
    // busybox's own layer, three COPYs and one RUN.
    assert_eq!(layers.len(), 5, "{manifest}");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 5);
    let history = config["history"].as_array().unwrap();
    let made = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(
        made,
        layers.len(),
        "one history entry per layer (busybox's and the build's four): {history:?}"
    );
    for l in layers {
        let d = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let size = fs::metadata(st.join("blobs/sha256").join(d)).unwrap().len();
        assert_eq!(l["size"].as_u64(), Some(size), "exact sizes");
    }

    // It runs like a pulled image: the RUN's whiteout and opaque folder hide the lower
    // files, the COPY --from brought the first stage's output.
    let run = skiff_in(
        &st,
        &[
            "run",
            "--local",
            "--snapshot-dir",
            snapshots,
            "myapp:1",
            "x",
            "y",
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", show(&run));
    assert_eq!(
        text(&run.stdout),
        "hello from the context\nnew.txt\nno group file\nargs: x y user: 1000 app: /app\n"
    );

    // A rebuild: every step from the cache, the same image.
    let again = build(&[]);
    assert_eq!(result(&again)["imageDigest"], digest.as_str());
    assert!(step_states(&again)
        .iter()
        .all(|(i, s)| *i == 1 || *i == 6 || s == "cached"));
    // A touched file (same content) still hits.
    let f = fs::File::options()
        .write(true)
        .open(ctx.join("src/msg.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    drop(f);
    fs::write(ctx.join("debug.log"), "ignored, changed\n").unwrap();
    let touched = build(&[]);
    assert_eq!(result(&touched)["imageDigest"], digest.as_str());
    // A changed ARG misses where it is used (the LABEL), not where it is declared.
    let arg = build(&["--build-arg", "VERSION=2"]);
    let states = step_states(&arg);
    let missed: Vec<u64> = states
        .iter()
        .filter(|(i, s)| s != "cached" && *i != 1 && *i != 6)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(missed, vec![15, 16, 17], "{states:?}");
    let reasons: Vec<String> = text(&arg.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some(format!("{}: {}", v["index"], v["missReason"].as_str()?)))
        .collect();
    assert_eq!(
        reasons,
        [
            "15: LABEL org.example.version=$VERSION: build argument VERSION changed",
            "16: an earlier step was rebuilt",
            "17: an earlier step was rebuilt"
        ],
        "why each step missed"
    );
    let m = blob(&st, result(&arg)["imageDigest"].as_str().unwrap());
    let cfg = blob(&st, m["config"]["digest"].as_str().unwrap());
    assert_eq!(cfg["config"]["Labels"]["org.example.version"], "2");
    assert_eq!(m["layers"], manifest["layers"], "the same layers");

    // SOURCE_DATE_EPOCH: every time in the config is the epoch. (It is part of the
    // cache key, so the steps run again and their layers' times are clamped too.)
    let target_only = build(&["--target", "build", "--source-date-epoch", "1700000000"]);
    let m = blob(&st, result(&target_only)["imageDigest"].as_str().unwrap());
    let cfg = blob(&st, m["config"]["digest"].as_str().unwrap());
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
    // Past the base's own entry (busybox's, which has no time), each step's is N.
    for h in cfg["history"].as_array().unwrap().iter().skip(1) {
        assert_eq!(h["created"], "2023-11-14T22:13:20Z");
    }
    let states = step_states(&target_only);
    assert_eq!(states.len(), 5, "--target builds only the stage it names");
    // Its RUN ran again, in a VM restored from the snapshot the first build left.
    let steps = result(&target_only)["steps"].clone();
    let runs: Vec<&Value> = steps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.get("run"))
        .collect();
    assert_eq!(runs.len(), 1, "{steps}");
    assert_eq!(runs[0]["fromSnapshot"], true, "{steps}");
}

#[test]
fn build_errors_name_the_step_and_keep_the_cache() {
    if !kvm_available("build_errors_name_the_step_and_keep_the_cache") {
        return;
    }
    let st = state("build-errors");
    let ctx = st.join("context");
    write(
        &ctx,
        &[
            ("app.txt", "app\n"),
            ("app.jar", "jar\n"),
            (".dockerignore", "# build output\n*.jar\n"),
        ],
    );
    std::os::unix::fs::symlink("/etc", ctx.join("hostetc")).unwrap();
    let build = |dockerfile: &str, extra: &[&str]| {
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let mut args = vec!["build", "--local"];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        skiff_in(&st, &args)
    };

    let o = build("FROM local/busybox:latest\nFROMM x\n", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        text(&o.stderr).contains(r#"Dockerfile:2: unknown instruction "FROMM""#),
        "{}",
        show(&o)
    );

    let o = build(
        "FROM local/busybox:latest\nCOPY app.txt /\nCOPY app.jar /app/\n",
        &["--build-arg", "UNUSED=1"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("build argument UNUSED was given but no ARG"),
        "{err}"
    );
    assert!(
        err.contains(r#"[3/3] COPY app.jar /app/ (Dockerfile:3): "app.jar" not found in the build context (excluded by .dockerignore line 2)"#),
        "{err}"
    );

    let o = build("FROM local/busybox:latest\nCOPY hostetc/passwd /x\n", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains(r#""hostetc/passwd": path goes through symbolic link "hostetc" -> "/etc""#),
        "{err}"
    );

    // The step's root is its scratch disk, `--step-disk` in size. (This one shape boots:
    // `--no-snapshots` keeps it from making a snapshot no other build would use.)
    let failing = "FROM local/busybox:latest\nCOPY app.txt /\n\
                   RUN echo building; df -k / | awk 'NR==2 {print \"disk\", $2}'; echo broken >&2; exit 2\n";
    let o = build(failing, &["--step-disk", "64M", "--no-snapshots"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("error: [3/3] RUN echo building; df -k / | awk 'NR==2 {print \"disk\", $2}'; echo broken >&2; exit 2 (Dockerfile:3) exited with code 2"),
        "{err}"
    );
    let tail: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("  | ")).collect();
    assert_eq!(tail.len(), 3, "the output's last lines: {err}");
    assert_eq!((tail[0], tail[2]), ("building", "broken"), "{err}");
    let disk_kib: u64 = tail[1]
        .strip_prefix("disk ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no disk size: {err}"));
    assert!(
        (40_000..=65_536).contains(&disk_kib),
        "a 64 MiB scratch disk holds {disk_kib} KiB"
    );
    // The COPY before it was kept: the next build takes it from the cache.
    let o = build("FROM local/busybox:latest\nCOPY app.txt /\n", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("[2/2] COPY app.txt / (Dockerfile:2)  CACHED"),
        "{}",
        show(&o)
    );
    // Nothing of the failed build is left in the work folder.
    let left: Vec<_> = fs::read_dir(st.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    // The cache's records pin their layers until `builder prune` lets them go.
    let du = skiff_in(&st, &["builder", "du"]);
    assert!(du.status.success(), "{}", show(&du));
    assert!(text(&du.stdout).starts_with("1 record,"), "{}", show(&du));
    let none = skiff_in(&st, &["builder", "prune"]);
    assert_eq!(none.status.code(), Some(125), "{}", show(&none));
    let pruned = skiff_in(&st, &["builder", "prune", "--all"]);
    assert!(pruned.status.success(), "{}", show(&pruned));
    assert!(
        text(&pruned.stdout).starts_with("removed 1 record "),
        "{}",
        show(&pruned)
    );
    let du = skiff_in(&st, &["builder", "du"]);
    assert!(
        text(&du.stdout).starts_with("0 records, layers 0.0 MB; 0 step root filesystems"),
        "{}",
        show(&du)
    );
    // ADD unpacks a local tar (here gzip) into its destination; a bzip2 one is refused.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_ustar();
    h.set_size(4);
    h.set_mode(0o600);
    h.set_uid(42);
    h.set_cksum();
    tar.append_data(&mut h, "lib/data.txt", &b"tar\n"[..])
        .unwrap();
    fs::write(
        ctx.join("bundle.tar.gz"),
        tar.into_inner().unwrap().finish().unwrap(),
    )
    .unwrap();
    fs::write(ctx.join("old.tar.bz2"), b"BZh91AY&SY").unwrap();
    let o = build(
        "FROM local/busybox:latest\nADD bundle.tar.gz app.txt /opt/\n",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let manifest = blob(&st, &text(&o.stdout));
    let top = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let layer = fs::File::open(st.join("blobs/sha256").join(top)).unwrap();
    let mut entries: Vec<(String, u32, u64)> =
        tar::Archive::new(flate2::read::GzDecoder::new(layer))
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("opt/".to_owned(), 0o755, 0),
            ("opt/app.txt".to_owned(), 0o644, 0),
            ("opt/lib/".to_owned(), 0o755, 0),
            ("opt/lib/data.txt".to_owned(), 0o600, 42),
        ],
        "the archive's entries keep their owner and mode; the folder it leaves out is made \
         root's 0755; the file is copied"
    );
    let o = build("FROM local/busybox:latest\nADD old.tar.bz2 /opt/\n", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("\"old.tar.bz2\" is a bzip2 archive, which ADD cannot unpack yet"),
        "{}",
        show(&o)
    );

    let o = build("FROM local/busybox:latest\nCOPY app.txt /\n", &[]);
    assert!(
        text(&o.stderr).contains(
            "[2/2] COPY app.txt / (Dockerfile:2)  (COPY app.txt /: not in the build cache)"
        ),
        "{}",
        show(&o)
    );
}
