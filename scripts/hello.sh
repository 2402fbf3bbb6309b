#!/usr/bin/env bash
# The main job: set everything up, start the control plane (`skiff serve`), and run a real
# task in a real microVM through its HTTP API from the bundled image local/busybox:latest
# (made from Debian's busybox-static; no registry needed). The task's output streams back
# and its phase timings are printed; then the server stops.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
# The installed skiff: it finds skiff-vmm, the kernel and the agent by itself.
skiff="$(command -v skiff)"
"$skiff" info >&2
state="${SKIFF_STATE_DIR:-$root/target/hello-state}"
log="$state/serve.log"
mkdir -p "$state"
# The server listens on its Unix socket in the state dir; the CLI finds it there.
"$skiff" --state-dir "$state" serve 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    api="$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log")"
    [ -n "$api" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$api" ] || { echo "skiff serve did not start:" >&2; cat "$log" >&2; exit 1; }
echo "skiff serve is up at $api; running a task (a full guest boot: on PVM hosts expect ~30 s)" >&2
"$skiff" --state-dir "$state" run --timings --cpu 1 --memory 256 local/busybox -- \
    sh -c 'echo "Hello from a Skiff microVM!"; echo "  kernel: $(uname -sr)"; echo "  user:   $(id)"; echo "  cpus:   $(grep -c ^processor /proc/cpuinfo)"; echo "  memory: $(grep MemTotal /proc/meminfo)"; echo "  network: $(ip -4 -o addr show dev eth0 | awk "{print \$4}") via $(ip route | awk "/^default/ {print \$3}")"'
