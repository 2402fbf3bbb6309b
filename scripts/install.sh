#!/usr/bin/env bash
# Installs what scripts/setup.sh built: skiff, skiff-jailer, skiff-initramfs,
# containerd-shim-skiff-v2 (containerd's runtime io.containerd.skiff.v2) and the static
# skiff-vmm on PATH ($PREFIX/bin), the guest kernel and the static guest agent in Skiff's
# data directory ($PREFIX/lib/skiff), where `skiff` finds them without any environment
# variable. PREFIX defaults to /usr/local; SKIFF_BUILD_DIR (default target/release) is
# where the dynamic binaries were built; the static ones are target/skiff-vmm and
# target/skiff-agent. Usage: install.sh KERNEL
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${PREFIX:-/usr/local}"
kernel="${1:?usage: install.sh KERNEL}"
build="${SKIFF_BUILD_DIR:-$root/target/release}"
bin="$prefix/bin"
data="$prefix/lib/skiff"
install -d -m 0755 "$bin" "$data"
for b in skiff skiff-jailer skiff-initramfs containerd-shim-skiff-v2; do
    install -m 0755 "$build/$b" "$bin/$b"
done
install -m 0755 "$root/target/skiff-vmm" "$bin/skiff-vmm"
install -m 0644 "$kernel" "$data/vmlinux"
# The kernel's symbols, for guest profiles (`--profile-out`); absent from older caches.
map="$(dirname "$kernel")/System.map"
[ ! -f "$map" ] || install -m 0644 "$map" "$data/System.map"
install -m 0755 "$root/target/skiff-agent" "$data/skiff-agent"
echo "install: $bin/{skiff,skiff-vmm,skiff-jailer,skiff-initramfs,containerd-shim-skiff-v2}, $data/{vmlinux,skiff-agent}" >&2
