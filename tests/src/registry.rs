//! Test harness: a real `docker-registry` (Debian's distribution 2.8) on 127.0.0.1 with its
//! own config and storage, a small push client, layer tar builders and a throwaway CA.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use control_plane::images::Digest;

use crate::token;
use serde_json::{json, Value};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Polls `check` until it returns Some or the deadline passes.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// TLS material made with `openssl`: a CA and a server certificate for 127.0.0.1 it signed.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn make_tls(dir: &Path) -> Result<Tls> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=skiff test CA",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    )?;
    Ok(Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    })
}

/// A running registry; killed on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub base: String,
    child: Child,
    log: PathBuf,
    pub tls: Option<Tls>,
    pub user: Option<(String, String)>,
    issuer: Option<std::sync::Arc<token::Issuer>>,
}

fn http_client(tls: Option<&Tls>) -> Result<reqwest::blocking::Client> {
    let mut b = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(30));
    if let Some(t) = tls {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&fs::read(&t.ca)?)?);
    }
    Ok(b.build()?)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Registry {
    pub fn start() -> Result<Registry> {
        Self::start_with(false, None)
    }

    /// Starts a registry; `tls` serves HTTPS with a fresh CA, `user` turns on htpasswd auth.
    pub fn start_with(tls: bool, user: Option<(&str, &str)>) -> Result<Registry> {
        Self::start_full(tls, user, None, None)
    }

    /// Starts a registry whose auth is bearer tokens from `token` (realm and issuer).
    pub fn start_token(realm: &str, issuer: std::sync::Arc<token::Issuer>) -> Result<Registry> {
        Self::start_full(false, None, Some((realm.to_string(), issuer)), None)
    }

    /// Starts a registry (htpasswd auth with `user`) that names `host` (a URL) as its own
    /// address in the URLs it makes, such as an upload session's `Location`: a hostile
    /// registry that sends the rest of a push to another server.
    pub fn start_advertising(user: (&str, &str), host: &str) -> Result<Registry> {
        Self::start_full(false, Some(user), None, Some(host))
    }

    fn start_full(
        tls: bool,
        user: Option<(&str, &str)>,
        tokens: Option<(String, std::sync::Arc<token::Issuer>)>,
        advertised: Option<&str>,
    ) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let storage = dir.path().join("storage");
        fs::create_dir(&storage)?;
        let mut extra = String::new();
        if let Some(host) = advertised {
            extra += &format!("  host: {host}\n");
        }
        let tls = if tls {
            Some(make_tls(dir.path())?)
        } else {
            None
        };
        if let Some(t) = &tls {
            extra += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            );
        }
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-nbB", u, p])
                .output()
                .context("running htpasswd")?;
            if !out.status.success() {
                bail!("htpasswd failed");
            }
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, &out.stdout)?;
            extra += &format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        if let Some((realm, issuer)) = &tokens {
            extra += &format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token::SERVICE,
                token::ISSUER,
                issuer.cert.display()
            );
        }
        // The free port may be taken by someone else before the registry binds it: then the
        // registry exits, and we try another port.
        for attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra}",
                storage.display()
            );
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config)?;
            let log = dir.path().join(format!("registry-{attempt}.log"));
            let logf = fs::File::create(&log)?;
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(logf.try_clone()?)
                .stderr(logf)
                .spawn()
                .context("starting docker-registry (install the docker-registry package)")?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let base = format!("{scheme}://{addr}");
            let http = http_client(tls.as_ref())?;
            let listening = format!("listening on {addr}");
            let mut child = child;
            let up = wait_until(
                "the registry to listen and answer /v2/",
                Duration::from_secs(20),
                || {
                    if child.try_wait().ok().flatten().is_some() {
                        return Some(false);
                    }
                    let answers = fs::read_to_string(&log)
                        .unwrap_or_default()
                        .contains(&listening)
                        && http
                            .get(format!("{base}/v2/"))
                            .send()
                            .is_ok_and(|r| r.status() == 200 || r.status() == 401);
                    answers.then_some(true)
                },
            );
            match up {
                Ok(true) => {
                    return Ok(Registry {
                        dir,
                        addr,
                        base,
                        child,
                        log,
                        tls,
                        user: user.map(|(u, p)| (u.to_string(), p.to_string())),
                        issuer: tokens.map(|(_, i)| i),
                    })
                }
                Ok(false) => {} // exited: most likely the port was taken; try another
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e.context(format!(
                        "registry log:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    )));
                }
            }
        }
        bail!("docker-registry did not start on any of 5 ports")
    }

    pub fn http(&self) -> Result<reqwest::blocking::Client> {
        http_client(self.tls.as_ref())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Successful blob GETs in the access log (for `digest`, or all when None).
    pub fn blob_gets(&self, digest: Option<&Digest>) -> usize {
        self.log_text()
            .lines()
            .filter(|l| {
                l.contains("\"GET /v2/") && l.contains("/blobs/sha256:") && l.contains("\" 200 ")
            })
            .filter(|l| digest.is_none_or(|d| l.contains(&d.to_string())))
            .count()
    }

    /// Waits until the access log shows `n` successful blob GETs (it is written asynchronously).
    pub fn wait_blob_gets(&self, n: usize) -> Result<usize> {
        wait_until(
            &format!("{n} blob GETs in the registry log"),
            Duration::from_secs(5),
            || {
                let c = self.blob_gets(None);
                (c >= n).then_some(c)
            },
        )
    }

    /// The file the registry serves for blob `d` (for corrupting it).
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{}/data",
            &d.hex()[..2],
            d.hex()
        ))
    }

    fn req(
        &self,
        repo: &str,
        r: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::RequestBuilder> {
        Ok(match (&self.user, &self.issuer) {
            (Some((u, p)), _) => r.basic_auth(u, Some(p)),
            (None, Some(issuer)) => {
                r.bearer_auth(issuer.token("pusher", repo, &["pull", "push"])?)
            }
            (None, None) => r,
        })
    }

    /// Uploads a blob (POST then PUT, the monolithic upload of the distribution spec).
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        let http = self.http()?;
        let resp = self
            .req(
                repo,
                http.post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )?
            .send()?;
        if resp.status() != 202 {
            bail!("upload start: HTTP {}: {}", resp.status(), resp.text()?);
        }
        let loc = resp
            .headers()
            .get("location")
            .context("no Location")?
            .to_str()?
            .to_string();
        let loc = if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let resp = self
            .req(repo, http.put(format!("{loc}{sep}digest={d}")))?
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()?;
        if resp.status() != 201 {
            bail!("upload of {d}: HTTP {}: {}", resp.status(), resp.text()?);
        }
        Ok(d)
    }

    /// Uploads a manifest under `reference` (a tag or its digest); returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &Value,
    ) -> Result<Digest> {
        let bytes = serde_json::to_vec(body)?;
        let http = self.http()?;
        let resp = self
            .req(
                repo,
                http.put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )?
            .header("content-type", media_type)
            .body(bytes.clone())
            .send()?;
        if resp.status() != 201 {
            bail!(
                "manifest {repo}:{reference}: HTTP {}: {}",
                resp.status(),
                resp.text()?
            );
        }
        Ok(Digest::of(&bytes))
    }

    /// Pushes an image: its layers (bytes + media type), a config with `run` as its
    /// `config` section, and a manifest of `manifest_type` tagged `tag`.
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        manifest_type: &str,
        layers: &[Layer],
        run: Value,
    ) -> Result<Pushed> {
        let docker = manifest_type == DOCKER_MANIFEST;
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            let d = self.push_blob(repo, &l.bytes)?;
            diff_ids.push(Digest::of(&l.tar).to_string());
            let mt = if docker {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                l.media_type
            };
            descs.push(json!({"mediaType": mt, "digest": d.to_string(), "size": l.bytes.len()}));
        }
        let config = json!({"architecture": "amd64", "os": "linux", "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = self.push_blob(repo, &config_bytes)?;
        let config_type = if docker {
            "application/vnd.docker.container.image.v1+json"
        } else {
            "application/vnd.oci.image.config.v1+json"
        };
        let manifest = json!({"schemaVersion": 2, "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": descs});
        let digest = self.push_manifest(repo, tag, manifest_type, &manifest)?;
        let size = serde_json::to_vec(&manifest)?.len();
        Ok(Pushed {
            manifest: digest,
            size,
            config: config_digest,
            layers: layers.iter().map(|l| Digest::of(&l.bytes)).collect(),
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `push_image` pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub manifest: Digest,
    pub size: usize,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

/// A layer: its tar, and its bytes as pushed (compressed or not).
#[derive(Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
}

impl Layer {
    pub fn plain(tar: Vec<u8>) -> Layer {
        Layer {
            bytes: tar.clone(),
            tar,
            media_type: "application/vnd.oci.image.layer.v1.tar",
        }
    }
    pub fn gzip(tar: Vec<u8>) -> Layer {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip in memory");
        let bytes = gz.finish().expect("gzip in memory");
        Layer {
            tar,
            bytes,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }
    pub fn zstd(tar: Vec<u8>) -> Layer {
        let bytes = zstd::encode_all(tar.as_slice(), 3).expect("zstd in memory");
        Layer {
            tar,
            bytes,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// Builds a layer tar; names are written raw, so tests can write hostile ones.
pub struct Tar(tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }
    /// Appends one entry of any kind and mode (owner root, a fixed mtime); `name` and
    /// `link` up to 100 bytes.
    pub fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.append(&h, data).expect("tar in memory");
        self
    }
    pub fn file(self, name: &str, data: &str) -> Self {
        self.entry(name, tar::EntryType::Regular, 0o644, None, data.as_bytes())
    }
    pub fn exe(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, 0o755, None, data)
    }
    pub fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, 0o755, None, b"")
    }
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, 0o777, Some(target), b"")
    }
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, 0o644, Some(target), b"")
    }
    pub fn fifo(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Fifo, 0o600, None, b"")
    }
    /// A character device node.
    pub fn chardev(mut self, name: &str, major: u32, minor: u32) -> Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::Char);
        h.set_mode(0o666);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_device_major(major).expect("gnu header");
        h.set_device_minor(minor).expect("gnu header");
        h.set_cksum();
        self.0.append(&h, &b""[..]).expect("tar in memory");
        self
    }
    /// A file with an extended attribute (a PAX `SCHILY.xattr.` record).
    pub fn file_with_xattr(mut self, name: &str, data: &str, key: &str, value: &[u8]) -> Self {
        let record = format!("SCHILY.xattr.{key}");
        self.0
            .append_pax_extensions([(record.as_str(), value)])
            .expect("tar in memory");
        self.file(name, data)
    }
    pub fn build(self) -> Vec<u8> {
        self.0.into_inner().expect("tar in memory")
    }
}

/// The `Xattr size` `dump.erofs` reports for `path` (0 when it has none).
pub fn erofs_xattr_size(image: &Path, path: &str) -> Result<u64> {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let size = text
        .split("Xattr size:")
        .nth(1)
        .context("no Xattr size in dump.erofs output")?;
    Ok(size.split_whitespace().next().unwrap_or("0").parse()?)
}

/// Extracts an EROFS image with `fsck.erofs --extract` to check its content.
pub fn extract_erofs(image: &Path, to: &Path) -> Result<()> {
    let out = Command::new("fsck.erofs")
        .arg(format!("--extract={}", to.display()))
        .arg(image)
        .output()?;
    if !out.status.success() {
        bail!("fsck.erofs: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The EROFS inode number of `path` in `image` (hardlinks share it; extraction does not
/// keep hardlinks, so tests ask `dump.erofs`).
pub fn erofs_nid(image: &Path, path: &str) -> Result<String> {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let nid = text
        .split_whitespace()
        .skip_while(|w| *w != "NID:")
        .nth(1)
        .context("no NID in dump.erofs output")?;
    Ok(nid.to_string())
}

/// Writes an OCI image layout at `dir` holding one image tagged `tag` (ref.name annotation).
pub fn write_oci_layout(dir: &Path, tag: &str, layers: &[Layer], run: Value) -> Result<Digest> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |data: &[u8]| -> Result<Digest> {
        let d = Digest::of(data);
        fs::write(blobs.join(d.hex()), data)?;
        Ok(d)
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        descs.push(json!({"mediaType": l.media_type, "digest": put(&l.bytes)?.to_string(), "size": l.bytes.len()}));
        diff_ids.push(Digest::of(&l.tar).to_string());
    }
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "config": run,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}),
    )?;
    let cd = put(&config)?;
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": descs}))?;
    let md = put(&manifest)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": manifest.len(),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))?,
    )?;
    Ok(md)
}
