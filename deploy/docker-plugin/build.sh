#!/usr/bin/env bash
# Builds the lcfs Docker managed plugin from this checkout and creates it in the local dockerd:
#   sudo ./deploy/docker-plugin/build.sh [VERSION]
# VERSION defaults to package.json's. The plugin is then lcfs/lcfs:VERSION:
#   docker plugin enable lcfs/lcfs:VERSION
#   lcfs setup docker --driver lcfs/lcfs:VERSION   # then restart dockerd
# Needs network access for the node:20-bookworm base image and the npm packages.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$HERE/../.." && pwd)
VERSION=${1:-$(node -p "require('$REPO_DIR/package.json').version")}
PLUGIN=lcfs/lcfs:$VERSION
IMAGE=lcfs-plugin-rootfs:$VERSION

say() { printf '==> %s\n' "$*"; }

# The plugin folder: config.json and rootfs/, outside the checkout.
WORK=$(mktemp -d)
CONTAINER=
cleanup() {
  if [[ -n $CONTAINER ]]; then docker rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The build context is the checkout's own files (tracked, or new and not ignored): no
# node_modules/, dist/ or native build output from this machine.
say "building $IMAGE"
(cd "$REPO_DIR" && git ls-files -z --cached --others --exclude-standard |
  tar --null -T - -c) |
  docker build -f deploy/docker-plugin/Dockerfile -t "$IMAGE" -

say "exporting its filesystem to $WORK/rootfs"
CONTAINER=$(docker create "$IMAGE" true)
mkdir -p "$WORK/rootfs"
docker export "$CONTAINER" | tar -x -C "$WORK/rootfs"
cp "$HERE/config.json" "$WORK/config.json"

if docker plugin inspect "$PLUGIN" >/dev/null 2>&1; then
  say "removing the previous $PLUGIN"
  docker plugin disable "$PLUGIN" >/dev/null 2>&1 || true
  docker plugin rm "$PLUGIN"
fi
say "creating $PLUGIN"
docker plugin create "$PLUGIN" "$WORK"

cat <<DONE
==> created $PLUGIN. To use it as dockerd's storage driver (Docker 17 to 27):
  docker plugin enable $PLUGIN
  lcfs setup docker --driver $PLUGIN
  systemctl restart docker
DONE
