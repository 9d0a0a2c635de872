# shellcheck shell=bash
# A private containerd (own config, root, state and socket) and a tiny busybox image, for the
# demo and for the e2e harness in test-e2e/, which sources this file.
#
# Paths stay short: a Unix socket path must fit in 107 bytes.

MSB_CTRD_DIR="${MSB_CTRD_DIR:-/run/msb-ctrd}"
MSB_CTRD_SOCK="$MSB_CTRD_DIR/containerd.sock"

# Writes the config and starts containerd unless one answers on our socket already.
# $1: directory whose bin/ is put on containerd's PATH (where the shim binary is linked).
ctrd_start() {
  local optdir=$1
  mkdir -p "$MSB_CTRD_DIR" "$optdir/bin"
  cat >"$MSB_CTRD_DIR/config.toml" <<TOML
version = 2
root = "$MSB_CTRD_DIR/root"
state = "$MSB_CTRD_DIR/state"
[grpc]
  address = "$MSB_CTRD_SOCK"
[ttrpc]
  address = "$MSB_CTRD_SOCK.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "$optdir"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  restrict_oom_score_adj = true
TOML
  if ctr --address "$MSB_CTRD_SOCK" version >/dev/null 2>&1; then
    return 0
  fi
  containerd --config "$MSB_CTRD_DIR/config.toml" >"$MSB_CTRD_DIR/containerd.log" 2>&1 &
  echo $! >"$MSB_CTRD_DIR/containerd.pid"

  for _ in $(seq 1 100); do
    ctr --address "$MSB_CTRD_SOCK" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "containerd did not start; its log: $MSB_CTRD_DIR/containerd.log" >&2
  tail -20 "$MSB_CTRD_DIR/containerd.log" >&2
  return 1
}

# Stops the containerd started by ctrd_start and waits for it to exit.
ctrd_stop() {
  local pid
  [ -f "$MSB_CTRD_DIR/containerd.pid" ] || return 0
  pid=$(cat "$MSB_CTRD_DIR/containerd.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$MSB_CTRD_DIR/containerd.pid"
}

# Builds a one-layer busybox image as an oci-archive and imports it as $2 (e.g.
# docker.io/library/msb-busybox:latest) into namespace $1. No registry or network needed:
# busybox-static, umoci and skopeo are Debian packages.
ctrd_import_busybox() {
  local ns=$1 ref=$2 work
  if ctr --address "$MSB_CTRD_SOCK" -n "$ns" image ls -q | grep -qx "$ref"; then
    return 0
  fi
  work=$(mktemp -d)
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:img"
  umoci unpack --image "$work/oci:img" "$work/bundle" >/dev/null
  local root="$work/bundle/rootfs"
  mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" \
    "$root/root" "$root/proc" "$root/sys" "$root/dev"
  cp /bin/busybox "$root/bin/busybox"
  local applet
  for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  umoci repack --image "$work/oci:img" "$work/bundle" >/dev/null
  umoci config --image "$work/oci:img" --config.cmd /bin/sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >/dev/null
  skopeo copy --quiet "oci:$work/oci:img" "oci-archive:$work/img.tar:$ref"
  ctr --address "$MSB_CTRD_SOCK" -n "$ns" image import "$work/img.tar" >/dev/null
  rm -rf "$work"
  ctr --address "$MSB_CTRD_SOCK" -n "$ns" image ls -q | grep -qx "$ref" || {
    echo "image $ref was not imported" >&2
    return 1
  }
}
