# Sourced by scripts/ha-rootfs and scripts/cross-rootfs: a Debian unstable
# root filesystem built once into the cache, then reused by later runs (CI
# included). $HASS_SIDECARS_CACHE, default /var/cache/hass-sidecars.
#
#   sid_rootfs_begin NAME FAMILY
#                           sets $root; exits 0 printing it when already built;
#                           otherwise debootstraps into $work (flock-held)
#   inside CMD...           runs CMD in $work with a clean environment
#   sid_rootfs_finish       marks $work complete, moves it to $root, prints it
#
# Either way the other trees of FAMILY (older recipes or versions, 2-3 GB
# each) are deleted: CI machines keep the cache and can be short of disk.

sid_cache="${HASS_SIDECARS_CACHE:-/var/cache/hass-sidecars}"

sid_rootfs_begin() {
    root="$sid_cache/$1"
    family="$2"
    if [ -f "$root/.complete" ]; then
        sid_rootfs_prune
        echo "$root"
        exit 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: needs root (debootstrap, chroot), as the tests that use it do" >&2
        exit 1
    fi
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
    fi
    mkdir -p "$sid_cache"
    # One build at a time (test processes, scripts/test): the rest wait for it.
    exec 9>"$sid_cache/.$1.lock"
    flock 9
    if [ -f "$root/.complete" ]; then
        echo "$root"
        exit 0
    fi
    work="$root.partial"
    rm -rf "$work"
    echo "==> debootstrap sid into $work (a few minutes, once)" >&2
    debootstrap --variant=minbase sid "$work" >&2
    # The suite's Release file can be weeks old; apt would refuse it.
    echo 'Acquire::Check-Valid-Until "false";' >"$work/etc/apt/apt.conf.d/99no-check-valid-until"
    # Registries (PyPI, crates.io) are verified inside with the host's CA bundle.
    mkdir -p "$work/etc/ssl"
    cp /etc/ssl/certs/ca-certificates.crt "$work/etc/ssl/host-ca.crt"
}

# A clean environment inside: the host's settings are not the root filesystem's.
inside() { chroot "$work" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

sid_rootfs_finish() {
    touch "$work/.complete"
    rm -rf "$root"
    mv "$work" "$root"
    sid_rootfs_prune
    echo "$root"
}

sid_rootfs_prune() {
    local stale
    for stale in "$sid_cache"/$family; do
        [ "$stale" != "$root" ] && [ -d "$stale" ] || continue
        # Another run may be building that one right now.
        case "$stale" in *.partial) continue ;; esac
        # Never recurse into a tree something is still mounted in.
        if grep -q " $stale/" /proc/self/mounts; then continue; fi
        [ -w "$stale" ] || continue
        echo "==> removing $stale (superseded by $root)" >&2
        rm -rf "$stale"
        rm -f "$sid_cache/.$(basename "$stale").lock"
    done
}
