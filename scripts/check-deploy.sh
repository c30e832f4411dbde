#!/usr/bin/env bash
# Checks the deployment files in deploy/ as far as this machine allows (CI runs it as root):
#
# 1. Kubernetes: deploy/kubernetes/*.yaml against the Kubernetes schemas (PyPI
#    kubernetes-validate, --strict: unknown fields are errors).
# 2. Compose: deploy/compose/compose.yaml against the Compose Specification's JSON schema
#    (tests/deploy/check-compose.mjs).
# 3. systemd: deploy/systemd/chorus.service through `systemd-analyze verify` (any warning
#    fails) and `systemd-analyze security` (exposure must stay "OK", ≤ 2.0), in a root
#    directory holding the unit, the binary and the system's units.
# 4. The image: deploy/Dockerfile built with podman. No container registry is reachable here,
#    so the two bases come from this machine: the binary stage from an image holding the given
#    binary (BINARY_FROM; the Dockerfile's own Rust build stage is not run), the runtime from
#    an image holding the binary's shared libraries and a `nonroot` user (65532), as
#    distroless/cc does (RUNTIME_IMAGE). Containers cannot run here (crun needs cgroups this
#    sandbox lacks), so the image's root filesystem is exported and the node run in it by
#    chroot as the image's user, with the image's environment: it creates a timeline, serves
#    /health, and the image's HEALTHCHECK command succeeds against it.
#
#   scripts/check-deploy.sh PATH/TO/chorus
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:?usage: scripts/check-deploy.sh PATH/TO/chorus}")
work=$(mktemp -d)
node_pid=
cleanup() {
  if [[ -n $node_pid ]]; then
    kill "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  podman rm -f chorus-deploy-check >/dev/null 2>&1 || true
  podman rmi -f localhost/chorus:deploy-check localhost/chorus-check-binary \
    localhost/chorus-check-runtime >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== kubernetes-validate"
kubernetes-validate --strict deploy/kubernetes/*.yaml

echo "== compose file against the Compose Specification"
node tests/deploy/check-compose.mjs deploy/compose/compose.yaml

echo "== systemd-analyze verify + security"
root=$work/sdroot
mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp deploy/systemd/chorus.service "$root/etc/systemd/system/"
cp "$bin" "$root/usr/local/bin/chorus"
out=$(systemd-analyze verify --root="$root" chorus.service 2>&1) || { echo "$out"; exit 1; }
if [[ -n $out ]]; then
  echo "systemd-analyze verify warned:"; echo "$out"; exit 1
fi
exposure=$(systemd-analyze security --offline=yes --root="$root" chorus.service | tail -1)
echo "$exposure"
score=$(grep -o 'level for chorus.service: [0-9.]*' <<<"$exposure" | grep -o '[0-9.]*$')
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || { echo "exposure $score is over 2.0"; exit 1; }

echo "== podman build deploy/Dockerfile"
mkdir -p "$work/binary/data" "$work/runtime/etc" "$work/runtime/tmp"
cp "$bin" "$work/binary/chorus"
printf 'FROM scratch\nCOPY chorus /chorus\nCOPY data /data\n' >"$work/binary/Containerfile"
podman build -q -t localhost/chorus-check-binary "$work/binary" >/dev/null
# The runtime base: the binary's shared libraries at their paths, and the distroless users.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$work/runtime$(dirname "$lib")"
  cp -L "$lib" "$work/runtime$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  >"$work/runtime/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/runtime/etc/group"
chmod 1777 "$work/runtime/tmp"
printf 'FROM scratch\nCOPY . /\n' >"$work/runtime/Containerfile"
podman build -q -t localhost/chorus-check-runtime "$work/runtime" >/dev/null
podman build -q --format docker -f deploy/Dockerfile \
  --build-arg BINARY_FROM=localhost/chorus-check-binary \
  --build-arg RUNTIME_IMAGE=localhost/chorus-check-runtime \
  -t localhost/chorus:deploy-check . >/dev/null
user=$(podman image inspect localhost/chorus:deploy-check --format '{{.Config.User}}')
health=$(podman image inspect localhost/chorus:deploy-check --format '{{json .Config.Healthcheck.Test}}')
entry=$(podman image inspect localhost/chorus:deploy-check --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}')
echo "image: user $user, entrypoint $entry, healthcheck $health"
[[ $user == 65532:65532 ]] || { echo "the image does not run as 65532:65532"; exit 1; }
[[ $health == *chorus*status* ]] || { echo "the image has no healthcheck"; exit 1; }

echo "== the image's filesystem runs a node (chroot as its user, with its environment)"
podman create --name chorus-deploy-check localhost/chorus:deploy-check >/dev/null
mkdir "$work/rootfs"
podman export chorus-deploy-check | tar -x -C "$work/rootfs"
cp /etc/resolv.conf "$work/rootfs/etc/resolv.conf" # what a container runtime mounts
mapfile -t image_env < <(podman image inspect localhost/chorus:deploy-check \
  --format '{{range .Config.Env}}{{println .}}{{end}}' | grep .)
as_image() {
  # exec: the node is this subshell itself, so killing its pid stops it.
  exec env -i "${image_env[@]}" CHORUS_API_TOKEN=deploy-check-token \
    CHORUS_LISTEN=/ip4/127.0.0.1/tcp/0 CHORUS_API_LISTEN=127.0.0.1:47311 \
    chroot --userspec=65532:65532 "$work/rootfs" /usr/local/bin/chorus "$@"
}
(as_image init --name deploy-check >/dev/null)
as_image node >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:47311/health >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS http://127.0.0.1:47311/health || { cat "$work/node.log"; exit 1; }
# The answer came from this node, not from one another run left behind.
kill -0 "$node_pid" 2>/dev/null || { echo "the image's node exited:"; cat "$work/node.log"; exit 1; }
# The HEALTHCHECK's command, as the image runs it.
(as_image status >/dev/null) || { echo "the image's healthcheck command failed"; exit 1; }
echo "deploy check: OK"
