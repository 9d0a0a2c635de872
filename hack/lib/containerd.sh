# shellcheck shell=bash
# A private containerd (own config, root, state and socket) and a tiny busybox image, for the
# demo and for the e2e harness in test-e2e/, which sources this file.
#
# Paths stay short: a Unix socket path must fit in 107 bytes.

MSB_CTRD_DIR="${MSB_CTRD_DIR:-/run/msb-ctrd}"
MSB_CTRD_SOCK="$MSB_CTRD_DIR/containerd.sock"
# The directory holding the `containerd` and `ctr` to run (an unpacked newer version, see
# hack/lib/ctrd-versions.sh); empty: the ones on PATH (Debian 12's containerd 1.6).
MSB_CTRD_BIN="${MSB_CTRD_BIN:-}"
MSB_CONTAINERD="${MSB_CTRD_BIN:+$MSB_CTRD_BIN/}containerd"
MSB_CTR="${MSB_CTRD_BIN:+$MSB_CTRD_BIN/}ctr"

# The major.minor version of $MSB_CONTAINERD ("1.6", "2.1"), from `containerd --version`
# ("containerd github.com/containerd/containerd/v2 2.1.9+unknown").
ctrd_version() {
  "$MSB_CONTAINERD" --version | awk '{ split($3, v, "."); print v[1] "." v[2] }'
}

# Writes the config for containerd $1 (major.minor) to stdout. $2: the opt directory.
# 1.6 and 1.7 read version 2; 2.x reads version 3 (it would migrate a version 2 file at every
# start), where the CRI plugin's runtime settings moved to io.containerd.cri.v1.runtime and
# NRI is on by default, listening on one host-wide socket (/var/run/nri/nri.sock): private
# instances turn it off so that they never meet each other or the host's containerd (1.7 has it
# off unless configured).
# $3 = "cri": also what a CRI client (the conformance suite, test-e2e/tests/cri.rs) needs, see
# _ctrd_cri_config; without it the output is the plain config above.
ctrd_config() {
  local version=$1 optdir=$2 cri=${3:-}
  case $version in
    1.6 | 1.7)
      cat <<TOML
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
      [ "$cri" != cri ] || _ctrd_cri_config "$version"
      ;;
    2.*)
      cat <<TOML
version = 3
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
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
TOML
      [ "$cri" != cri ] || _ctrd_cri_config "$version"
      ;;
    *)
      echo "containerd $version: no config known for it (hack/lib/containerd.sh)" >&2
      return 1
      ;;
  esac
}

# The pause image of CRI pods (`sandbox_image`): ctrd_import_busybox makes it when asked, the
# busybox layer with entrypoint `tail -f /dev/null`, so no registry is ever asked for it. Not
# `sleep`: containers share the sandbox's PID namespace by default, and critest looks for a
# left-over `sleep` of its own there.
MSB_CTRD_PAUSE="${MSB_CTRD_PAUSE:-docker.io/library/msb-pause:latest}"
# CRI runtime handlers: `runc` (the reference) and `microsandbox` (our shim).
MSB_CTRD_RUNTIME_TYPE="${MSB_CTRD_RUNTIME_TYPE:-io.containerd.microsandbox.v1}"

# The CRI part of ctrd_config, appended to its output (the CRI plugin's table is still open for
# version 2, so its keys come first): runtime handlers `runc` and `microsandbox`, the local pause
# image, and pod networks from a private CNI directory ($MSB_CTRD_DIR/cni, written by ctrd_start)
# instead of the host's /etc/cni/net.d, with network namespaces under the private state.
_ctrd_cri_config() {
  local version=$1
  case $version in
    1.6 | 1.7)
      cat <<TOML
  sandbox_image = "$MSB_CTRD_PAUSE"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$MSB_CTRD_DIR/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.microsandbox]
    runtime_type = "$MSB_CTRD_RUNTIME_TYPE"
TOML
      # 1.7 only: the same handlers on the pod network of $MSB_CTRD_DIR/cni-net (per-handler
      # CNI directories are a 1.7 feature), for the pod networking tests.
      if [ "$version" = 1.7 ]; then
        cat <<TOML
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc-net]
    runtime_type = "io.containerd.runc.v2"
    cni_conf_dir = "$MSB_CTRD_DIR/cni-net"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.microsandbox-net]
    runtime_type = "$MSB_CTRD_RUNTIME_TYPE"
    cni_conf_dir = "$MSB_CTRD_DIR/cni-net"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc-hostdev]
    runtime_type = "io.containerd.runc.v2"
    cni_conf_dir = "$MSB_CTRD_DIR/cni-hostdev-runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.microsandbox-hostdev]
    runtime_type = "$MSB_CTRD_RUNTIME_TYPE"
    cni_conf_dir = "$MSB_CTRD_DIR/cni-hostdev-microsandbox"
TOML
      fi
      ;;
    2.*)
      cat <<TOML
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$MSB_CTRD_DIR/cni"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.microsandbox]
    runtime_type = "$MSB_CTRD_RUNTIME_TYPE"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "$MSB_CTRD_PAUSE"
TOML
      ;;
  esac
}

# The CNI network of CRI pods, in $1: no interface beyond the pod's `lo` (which the CRI plugin
# brings up itself with the `loopback` plugin) and nothing on the host. The CRI plugin insists on
# an address for the pod's eth0; `static` hands it 127.0.0.1 without creating anything, so the
# pod reports 127.0.0.1, which is all it has. Debian's plugins (containernetworking-plugins).
_ctrd_cni_config() {
  mkdir -p "$1" || return 1
  cat >"$1/10-msb-lo.conflist" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "msb-lo",
  "plugins": [
    { "type": "static", "ipam": { "type": "static", "addresses": [{ "address": "127.0.0.1/8" }] } }
  ]
}
JSON
}

# The pod network of the `*-net` handlers, in $1: Debian's `bridge` plugin on the host bridge
# $MSB_CTRD_NET_BRIDGE (default msb-cni0, 169.254.200.1/24, made on first use and kept), MTU
# 1400 (not the default, so that tests see it carried), `host-local` addresses from
# 169.254.200.0/24 recorded under $MSB_CTRD_DIR, a default route through the bridge, and
# `portmap` for the pods' host ports (iptables DNAT rules of its own, removed with each pod). No
# masquerading of pod traffic: nothing leaves the link-local range.
_ctrd_cni_net_config() {
  mkdir -p "$1" || return 1
  cat >"$1/10-msb-net.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "msb-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${MSB_CTRD_NET_BRIDGE:-msb-cni0}",
      "isGateway": true,
      "ipMasq": false,
      "mtu": 1400,
      "ipam": {
        "type": "host-local",
        "dataDir": "$MSB_CTRD_DIR/cni-ipam",
        "ranges": [[{ "subnet": "169.254.200.0/24", "gateway": "169.254.200.1" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
}

# The pod network of the `*-hostdev` handlers, in $1: Debian's `host-device` plugin moves the
# host interface $2 (one end of a veth pair the test makes, the other end $2-h holding
# 169.254.$3.1/24 on the host) into the pod's namespace as its eth0, with `static` addresses:
# 169.254.$3.2/24 and a default route through the host end. One pod at a time per handler (one
# device each); CNI DEL moves the device back to the host.
_ctrd_cni_hostdev_config() {
  mkdir -p "$1" || return 1
  cat >"$1/10-msb-hostdev.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "msb-hostdev-$2",
  "plugins": [
    {
      "type": "host-device",
      "device": "$2",
      "ipam": {
        "type": "static",
        "addresses": [{ "address": "169.254.$3.2/24", "gateway": "169.254.$3.1" }],
        "routes": [{ "dst": "0.0.0.0/0", "gw": "169.254.$3.1" }]
      }
    }
  ]
}
JSON
}

# Whether a containerd answers on $MSB_CTRD_SOCK. Only asked once the socket exists: ctr 1.6 and
# 1.7 keep retrying a missing socket for 10 s before they fail.
_ctrd_answers() {
  [ -S "$MSB_CTRD_SOCK" ] && "$MSB_CTR" --address "$MSB_CTRD_SOCK" version >/dev/null 2>&1
}

# Writes the config and starts containerd unless one answers on our socket already.
# $1: directory whose bin/ is put on containerd's PATH (where the shim binary is linked).
# $2 = "cri": with the CRI settings of ctrd_config and the CNI network they name.
ctrd_start() {
  local optdir=$1 cri=${2:-} version
  mkdir -p "$MSB_CTRD_DIR" "$optdir/bin"
  version=$(ctrd_version) || return 1
  ctrd_config "$version" "$optdir" "$cri" >"$MSB_CTRD_DIR/config.toml" || return 1
  if [ "$cri" = cri ]; then
    _ctrd_cni_config "$MSB_CTRD_DIR/cni" || return 1
    _ctrd_cni_net_config "$MSB_CTRD_DIR/cni-net" || return 1
    _ctrd_cni_hostdev_config "$MSB_CTRD_DIR/cni-hostdev-runc" msbhd-runc 201 || return 1
    _ctrd_cni_hostdev_config "$MSB_CTRD_DIR/cni-hostdev-microsandbox" msbhd-msb 202 || return 1
  fi
  if _ctrd_answers; then
    return 0
  fi
  "$MSB_CONTAINERD" --config "$MSB_CTRD_DIR/config.toml" >"$MSB_CTRD_DIR/containerd.log" 2>&1 &
  echo $! >"$MSB_CTRD_DIR/containerd.pid"

  for _ in $(seq 1 100); do
    _ctrd_answers && return 0
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

# Whether image $2 is in namespace $1. grep reads the whole list: `grep -q` would stop at the
# first match and, under `set -o pipefail`, ctr's SIGPIPE would turn a match into a failure.
_ctrd_has_image() {
  "$MSB_CTR" --address "$MSB_CTRD_SOCK" -n "$1" image ls -q | grep -x -- "$2" >/dev/null
}

# Builds a one-layer busybox image in the OCI layout $1/oci, tagged `img`: Debian's
# busybox-static with its applets, a passwd and a group file, Cmd /bin/sh. No registry or network
# needed: busybox-static, umoci and skopeo are Debian packages.
busybox_oci_layout() {
  local work=$1
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
}

# Imports the busybox image of busybox_oci_layout as $2 (e.g.
# docker.io/library/msb-busybox:latest) into namespace $1. $3, optional: also import, as that
# reference, a pause image for CRI pods: the same layer with entrypoint `tail -f /dev/null`.
ctrd_import_busybox() {
  local ns=$1 ref=$2 pause=${3:-} work
  if _ctrd_has_image "$ns" "$ref" && { [ -z "$pause" ] || _ctrd_has_image "$ns" "$pause"; }; then
    return 0
  fi
  work=$(mktemp -d)
  busybox_oci_layout "$work"
  skopeo copy --quiet "oci:$work/oci:img" "oci-archive:$work/img.tar:$ref"
  "$MSB_CTR" --address "$MSB_CTRD_SOCK" -n "$ns" image import "$work/img.tar" >/dev/null
  if [ -n "$pause" ]; then
    umoci config --image "$work/oci:img" --tag pause --config.entrypoint /bin/tail \
      --config.cmd=-f --config.cmd=/dev/null >/dev/null
    skopeo copy --quiet "oci:$work/oci:pause" "oci-archive:$work/pause.tar:$pause"
    "$MSB_CTR" --address "$MSB_CTRD_SOCK" -n "$ns" image import "$work/pause.tar" >/dev/null
  fi
  rm -rf "$work"
  local r
  for r in "$ref" ${pause:+"$pause"}; do
    _ctrd_has_image "$ns" "$r" || {
      echo "image $r was not imported" >&2
      return 1
    }
  done
}
