#!/usr/bin/env bash
# The main job: set everything up, then run a real task in a real microVM from the bundled
# image local/busybox:latest (made from Debian's busybox-static; no registry needed), with
# its output streamed back and the phase timings printed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
# shellcheck disable=SC1091
. "$root/target/skiff.env"
export SKIFF_KERNEL SKIFF_AGENT
echo "running: skiff run --local local/busybox -- sh -c '…' (a full guest boot; on PVM hosts expect ~25 s)" >&2
"$root/target/release/skiff" run --local --timings --cpu 1 --memory 256 local/busybox -- \
    sh -c 'echo "Hello from a Skiff microVM!"; echo "  kernel: $(uname -sr)"; echo "  user:   $(id)"; echo "  cpus:   $(grep -c ^processor /proc/cpuinfo)"; echo "  memory: $(grep MemTotal /proc/meminfo)"'
