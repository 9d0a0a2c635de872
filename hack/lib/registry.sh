# shellcheck shell=bash
# A local image registry for the demo: Debian's docker-registry (distribution 2.8) on
# 127.0.0.1:$MSB_REGISTRY_PORT (default 5000), storage and pid file in $MSB_REGISTRY_DIR.
# Plain HTTP on loopback, which `msbox pull` and containerd accept without being told.

MSB_REGISTRY_PORT=${MSB_REGISTRY_PORT:-5000}
MSB_REGISTRY_DIR=${MSB_REGISTRY_DIR:-/var/lib/microsandbox/registry}

_registry_answers() {
  curl -fsS -o /dev/null "http://127.0.0.1:$MSB_REGISTRY_PORT/v2/" 2>/dev/null
}

# Starts the registry unless one already answers on the port.
registry_start() {
  _registry_answers && return 0
  mkdir -p "$MSB_REGISTRY_DIR/data"
  chmod 700 "$MSB_REGISTRY_DIR"
  cat >"$MSB_REGISTRY_DIR/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $MSB_REGISTRY_DIR/data
http:
  addr: 127.0.0.1:$MSB_REGISTRY_PORT
YAML
  docker-registry serve "$MSB_REGISTRY_DIR/config.yml" >"$MSB_REGISTRY_DIR/log" 2>&1 &
  echo $! >"$MSB_REGISTRY_DIR/pid"
  local _
  for _ in $(seq 50); do
    _registry_answers && return 0
    sleep 0.2
  done
  echo "the registry did not answer on 127.0.0.1:$MSB_REGISTRY_PORT; its log:" >&2
  cat "$MSB_REGISTRY_DIR/log" >&2
  return 1
}

# Stops the registry this script started (its storage stays).
registry_stop() {
  [ -f "$MSB_REGISTRY_DIR/pid" ] || return 0
  kill "$(cat "$MSB_REGISTRY_DIR/pid")" 2>/dev/null || true
  rm -f "$MSB_REGISTRY_DIR/pid"
}

# Pushes the busybox image of busybox_oci_layout (hack/lib/containerd.sh) as $1, a reference in
# this registry such as 127.0.0.1:5000/msb-busybox:latest.
registry_push_busybox() {
  local ref=$1 work
  work=$(mktemp -d)
  busybox_oci_layout "$work"
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:img" "docker://$ref"
  rm -rf "$work"
}
