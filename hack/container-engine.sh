# Sourced by the image scripts: the container engine and the flags it needs here.
#
#   CONTAINER_ENGINE   podman (default) or docker
#
# Defines ENGINE (the command, as an array) and ENGINE_RUN_FLAGS / ENGINE_BUILD_FLAGS.
# Podman runs rootful with runc (crun refuses hybrid cgroup hierarchies) and with open-file and
# process limits of 1024: podman's defaults for root ask for more than many machines allow.
# Builds use the host's network, so that RUN steps reach the package indexes the host reaches.
# shellcheck shell=bash
CONTAINER_ENGINE="${CONTAINER_ENGINE:-podman}"
case "$CONTAINER_ENGINE" in
  podman)
    ENGINE=(podman --runtime runc)
    ENGINE_RUN_FLAGS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
    ENGINE_BUILD_FLAGS=(--network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
    ;;
  docker)
    ENGINE=(docker)
    ENGINE_RUN_FLAGS=()
    ENGINE_BUILD_FLAGS=(--network host)
    ;;
  *)
    echo "CONTAINER_ENGINE must be podman or docker, not $CONTAINER_ENGINE" >&2
    exit 2
    ;;
esac

# Installs podman and runc (and the commands named as arguments, e.g. debootstrap) from
# Debian's packages when one is missing; elsewhere install them with the system's tools.
ensure_engine() {
  local tool missing=0
  for tool in "${ENGINE[0]}" $([ "$CONTAINER_ENGINE" = podman ] && echo runc) "$@"; do
    command -v "$tool" >/dev/null || missing=1
  done
  if [ "$missing" = 1 ] && [ "$CONTAINER_ENGINE" = podman ]; then
    "$(dirname "${BASH_SOURCE[0]}")/ensure-debs.sh" podman runc "$@"
  fi
  command -v "${ENGINE[0]}" >/dev/null || {
    echo "$CONTAINER_ENGINE is not installed" >&2
    exit 1
  }
}
