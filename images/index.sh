# Sourced by images/build and images/push: (re)makes the OCI image index
# localhost/hass-sidecars/<binary>:<tag> from the per-arch images
# <tag>-<arch>. images/push makes it again before pushing, because pulling
# one of those images back from a registry (images/test does) rewrites its
# stored manifest, and an index made before names one that is gone.
make_index() {
    local binary=$1 tag=$2 arch
    shift 2
    local list="localhost/hass-sidecars/$binary:$tag"
    buildah manifest rm "$list" >/dev/null 2>&1 || buildah rmi "$list" >/dev/null 2>&1 || true
    buildah manifest create "$list" >/dev/null
    for arch in "$@"; do
        buildah manifest add "$list" "containers-storage:localhost/hass-sidecars/$binary:$tag-$arch" >/dev/null
    done
}
