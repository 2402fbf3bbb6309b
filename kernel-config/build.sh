#!/usr/bin/env bash
# Builds Skiff's guest kernel (an uncompressed vmlinux) from Debian's linux-source, with
# our config fragment and patches, and caches it outside the repository.
#
#   kernel-config/build.sh            -> last line of output: path of the cached vmlinux
#
# Cache key: sha256 of the fragment, the patches, this script, the linux-source package
# version and the compiler version. Cache dir: $SKIFF_KERNEL_CACHE, default
# /var/cache/skiff/kernel. Set SKIFF_KERNEL_KEEP_BUILD=1 to keep the build tree.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SKIFF_KERNEL_CACHE:-/var/cache/skiff/kernel}"
src_pkg=linux-source-6.1
src_tar=/usr/src/linux-source-6.1.tar.xz
fragment="$here/microvm.config"

log() { echo "kernel-config: $*" >&2; }

need_pkgs=()
for p in "$src_pkg" build-essential flex bison bc libelf-dev libssl-dev xz-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2
fi

src_version="$(dpkg-query -W -f='${Version}' "$src_pkg")"
key="$( {
    echo "source $src_pkg $src_version"
    gcc --version | head -n1
    cat "$fragment" "$0"
    for p in "$here"/patches/*.patch; do [ -e "$p" ] && { echo "patch $(basename "$p")"; cat "$p"; }; done
} | sha256sum | cut -c1-16)"
out="$cache/$key"

if [ -s "$out/vmlinux" ]; then
    log "cached: $out/vmlinux"
    echo "$out/vmlinux"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -s "$out/vmlinux" ]; then # built by someone else while we waited
    echo "$out/vmlinux"
    exit 0
fi

build="$cache/build-$key"
rm -rf "$build"
mkdir -p "$build"
log "building kernel $key from $src_pkg $src_version in $build"
start=$(date +%s)
tar -C "$build" -xf "$src_tar"
tree="$build/linux-source-6.1"
for p in "$here"/patches/*.patch; do
    [ -e "$p" ] || continue
    log "applying $(basename "$p")"
    patch -d "$tree" -p1 --forward --quiet < "$p"
done

make -C "$tree" -s tinyconfig >&2
if ! "$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$fragment" \
    >"$build/merge.log" 2>&1; then
    cat "$build/merge.log" >&2
    exit 1
fi
make -C "$tree" -s olddefconfig >&2

# Every option of the fragment must have survived olddefconfig: a dependency that is
# missing drops an option without a word (EROFS without MISC_FILESYSTEMS, say).
bad=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    opt="${line%%=*}"; val="${line#*=}"
    if [ "$val" = n ]; then
        if grep -q "^$opt=" "$tree/.config"; then log "option not off: $line"; bad=1; fi
    elif ! grep -qxF "$line" "$tree/.config"; then
        log "option lost: $line (got: $(grep "^$opt=" "$tree/.config" || echo unset))"; bad=1
    fi
done < "$fragment"
if [ "$bad" = 1 ]; then
    log "the config fragment does not apply cleanly; fix kernel-config/microvm.config"
    exit 1
fi

make -C "$tree" -s -j"$(nproc)" vmlinux >&2
mkdir -p "$out.tmp"
cp "$tree/vmlinux" "$tree/System.map" "$tree/.config" "$out.tmp/"
mv "$out.tmp" "$out"
[ "${SKIFF_KERNEL_KEEP_BUILD:-0}" = 1 ] || rm -rf "$build"
log "built in $(( $(date +%s) - start )) s: $out/vmlinux"
echo "$out/vmlinux"
