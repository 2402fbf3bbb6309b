#!/usr/bin/env bash
# The main job: set everything up, then boot a microVM whose busybox init says hello,
# shows what the guest sees, and powers the VM off.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
# shellcheck disable=SC1091
. "$root/target/skiff.env"

work="$root/target/hello"
mkdir -p "$work"
cat > "$work/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
echo
echo "Hello from a Skiff microVM!"
echo "  kernel:  $(uname -sr)"
echo "  vCPUs:   $(grep -c ^processor /proc/cpuinfo)"
echo "  memory:  $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2) kB"
echo "  uptime:  $(cut -d' ' -f1 /proc/uptime) s (guest clock, from kernel start)"
echo
reboot -f
INIT
chmod +x "$work/init"
links=()
for a in sh mount echo uname grep tr cut reboot; do links+=(--symlink "bin/$a:busybox"); done
"$root/target/release/skiff-initramfs" -o "$work/hello.cpio" --init "$work/init" \
    --file /bin/busybox:bin/busybox "${links[@]}"

echo "booting: skiff-vmm --kernel $SKIFF_KERNEL --initrd $work/hello.cpio (the guest kernel's init is emulated on PVM hosts: expect ~20 s)" >&2
start=$(date +%s.%N)
"$root/target/release/skiff-vmm" --kernel "$SKIFF_KERNEL" --initrd "$work/hello.cpio" \
    --vcpus 2 --memory-mib 256 --cmdline quiet
echo "skiff-vmm exited 0 after $(echo "$(date +%s.%N) - $start" | bc) s" >&2
