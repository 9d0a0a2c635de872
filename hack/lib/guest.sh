# shellcheck shell=bash
# Helpers for hack/guest-assets: unpacking Debian's kernel, choosing modules, building ours.

# Writes the uncompressed ELF kernel inside bzImage $1 to $2, as the kernel's own
# scripts/extract-vmlinux does: find each compression magic, decompress from there, keep the
# first result that is an ELF file. docs/HOSTS.md: PVH boot of the vmlinux on -M microvm is fastest.
extract_vmlinux() {
  local bz=$1 out=$2 magic tool off
  local -a pairs=(
    '\x28\xb5\x2f\xfd' 'zstd -dcq'
    '\xfd\x37\x7a\x58\x5a\x00' 'xz -dcq'
    '\x1f\x8b\x08' 'gzip -dcq'
    '\x02\x21\x4c\x18' 'lz4 -dcq'
  )
  local i
  for ((i = 0; i < ${#pairs[@]}; i += 2)); do
    magic=${pairs[i]}
    tool=${pairs[i + 1]}
    command -v "${tool%% *}" >/dev/null || continue
    # shellcheck disable=SC2013 # offsets are plain numbers
    for off in $(LC_ALL=C grep -aobP "$magic" "$bz" | cut -d: -f1); do
      tail -c "+$((off + 1))" "$bz" | $tool >"$out.tmp" 2>/dev/null || true
      if [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
        mv "$out.tmp" "$out"
        return 0
      fi
    done
  done
  rm -f "$out.tmp"
  echo "extract_vmlinux: no compressed ELF kernel found in $bz" >&2
  return 1
}

# Prints, in a valid load order (dependencies first, no duplicates), the module files needed
# for the modules named after $1 (the unpacked package root) and $2 (the kernel release);
# modules built into the kernel print nothing. Paths are relative to lib/modules/RELEASE.
module_closure() {
  local root release=$2
  root=$(realpath "$1")
  shift 2
  local m line
  for m in "$@"; do
    if grep -q "/${m//_/[_-]}\.ko" "$root/lib/modules/$release/modules.builtin"; then
      continue
    fi
    modprobe -d "$root" -S "$release" --show-depends "$m" | while read -r line; do
      case "$line" in
        "insmod "*) line=${line#insmod }; line=${line%% *}; echo "${line#"$root/lib/modules/$release/"}" ;;
        builtin*) ;;
        *) echo "module_closure: unexpected modprobe output: $line" >&2; return 1 ;;
      esac
    done
  done | awk '!seen[$0]++'
}

# The host's TSC frequency in kHz: the kernel's own figure where exported, else its refined
# calibration from the kernel log, else "cpu MHz" (which is the TSC frequency on these hosts).
host_tsc_khz() {
  local v
  if [ -r /sys/devices/system/cpu/cpu0/tsc_freq_khz ]; then
    cat /sys/devices/system/cpu/cpu0/tsc_freq_khz
    return
  fi
  v=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -1)
  [ -n "$v" ] || v=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' | tail -1)
  [ -n "$v" ] || v=$(awk -F': ' '/^cpu MHz/ {print $2; exit}' /proc/cpuinfo)
  awk -v mhz="$v" 'BEGIN { printf "%d\n", mhz * 1000 }'
}

# The toolchain that builds the guest kernel, one line per tool: part of its cache key.
kernel_toolchain() {
  gcc --version | head -1
  ld --version | head -1
  make --version | head -1
}

# Builds the guest kernel: `make tinyconfig` of the kernel source tree $1, the fragment $2 merged
# on top, checked, and `make vmlinux` out of tree in $3 (reused while its stamp, $4, matches, so a
# changed fragment rebuilds only what it touches). Leaves $3/vmlinux and $3/.config; fails when
# Kconfig dropped any line of the fragment (a missing dependency would otherwise go unnoticed).
kernel_build() {
  local src=$1 fragment=$2 obj=$3 stamp=$4
  if [ "$(cat "$obj/.msb-tree" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$obj"
  fi
  mkdir -p "$obj" && echo "$stamp" >"$obj/.msb-tree" || return 1
  make -s -C "$src" O="$obj" tinyconfig >/dev/null || return 1
  KCONFIG_CONFIG="$obj/.config" "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" \
    "$obj/.config" "$fragment" >"$obj/merge.log" || return 1
  make -s -C "$src" O="$obj" olddefconfig >/dev/null || return 1
  local line sym got bad=0
  while read -r line; do
    sym=$(grep -oE 'CONFIG_[A-Za-z0-9_]+' <<<"$line")
    # "is not set" also holds for a symbol Kconfig left out (its dependencies are off).
    if ! grep -qxF "$line" "$obj/.config" &&
      { [ "${line:0:1}" != "#" ] || grep -qE "^$sym=" "$obj/.config"; }; then
      got=$(grep -E "^$sym=|^# $sym is not set" "$obj/.config" || echo "absent")
      echo "kernel_build: $fragment wants '$line', Kconfig made it '$got' (a missing dependency?)" >&2
      bad=1
    fi
  done < <(grep -E '^(CONFIG_[A-Za-z0-9_]+=.*|# CONFIG_[A-Za-z0-9_]+ is not set)$' "$fragment")
  [ "$bad" = 0 ] || return 1
  # KBUILD_BUILD_*: the same inputs give the same `uname -v`, whoever builds when, however often.
  make -s -C "$src" O="$obj" -j"$(nproc)" KBUILD_BUILD_USER=msb KBUILD_BUILD_HOST=msb \
    KBUILD_BUILD_VERSION=1 KBUILD_BUILD_TIMESTAMP="$(date -u -d @0)" vmlinux
}
