#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit tests and tests that boot real
# microVMs). This is what CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
# shellcheck disable=SC1091
. "$root/target/skiff.env"
export SKIFF_KERNEL SKIFF_AGENT SKIFF_VMM
cd "$root"
cargo test --release --workspace --no-fail-fast
