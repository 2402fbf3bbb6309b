#!/usr/bin/env bash
# Sets up a Debian machine for Skiff: installs the packages it needs, builds (or finds in
# the cache) the guest kernel, builds the workspace in release mode, and installs skiff
# (scripts/install.sh: binaries in /usr/local/bin, kernel and agent in /usr/local/lib/skiff,
# where skiff finds them without any environment variable). Also writes target/skiff.env
# (SKIFF_KERNEL, SKIFF_AGENT) for tests that use the build tree's files directly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { echo "setup: $*" >&2; }

# docker-registry, skopeo, openssl, apache2-utils (htpasswd): the image tests' registry;
# erofs-utils, e2fsprogs: root filesystem images; containernetworking-plugins, iproute2,
# iptables, nftables: task networks (CNI plugins, namespaces, TAPs, tc redirects, NAT, and
# Skiff's own isolation table); debootstrap: the CPython image of `skiff bench cold-start
# --python`; buildah: what `cargo bench --bench build` compares skiff build with.
pkgs=(build-essential busybox-static cpio docker-registry skopeo erofs-utils e2fsprogs openssl apache2-utils
      buildah containernetworking-plugins iproute2 iptables nftables debootstrap containerd runc protobuf-compiler)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { log "cargo is missing: install a Rust toolchain (1.85 or newer)"; exit 1; }

kernel="$(bash kernel-config/build.sh | tail -n1)"
[ -s "$kernel" ] || { log "kernel build did not produce a vmlinux"; exit 1; }
log "guest kernel: $kernel"

cargo build --release --workspace --bins >&2
# Static binaries, built for the target explicitly so that the static flag does not reach
# build scripts and proc macros: the guest agent runs as /init in every VM, and skiff-vmm
# runs in a jail that holds no shared libraries (skiff-jailer refuses a dynamic one). Both
# abort on a panic (their seccomp filter allows the SIGABRT), as PID 1 and as a VMM must.
RUSTFLAGS="-C target-feature=+crt-static -C panic=abort" cargo build --release -p guest-agent -p vmm \
    --bin skiff-agent --bin skiff-vmm --target x86_64-unknown-linux-gnu >&2
static="target/x86_64-unknown-linux-gnu/release"
strip -o target/skiff-agent "$static/skiff-agent"
cp "$static/skiff-vmm" target/skiff-vmm.new && mv target/skiff-vmm.new target/skiff-vmm
mkdir -p target
{
    echo "SKIFF_KERNEL=$kernel"
    echo "SKIFF_AGENT=$root/target/skiff-agent"
    echo "SKIFF_VMM=$root/target/skiff-vmm"
} > target/skiff.env
bash scripts/install.sh "$kernel"
log "ready: skiff, skiff-vmm, skiff-jailer on PATH; run 'skiff info' to see what is installed"
