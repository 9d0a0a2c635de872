# shellcheck shell=bash
# Newer containerd and Docker for the end-to-end tests (test-e2e/tests/ctrd_versions.rs), from
# Debian's own archive, never installed: each set of packages is fetched with a private apt list
# (`apt-get download`) and unpacked with `dpkg -x` into $MSB_CTRD_CACHE/<name>/root.
#
#   $MSB_CTRD_CACHE/1.7/root/usr/bin/{containerd,ctr}          containerd 1.7 (Debian 13 trixie)
#   $MSB_CTRD_CACHE/2.1/root/usr/bin/{containerd,ctr}          containerd 2.1 (Debian sid)
#   $MSB_CTRD_CACHE/docker-26/root/usr/{sbin/dockerd,bin/docker}  Docker 26 (Debian 13 trixie)
#   $MSB_CTRD_CACHE/<name>/versions                            what was unpacked ("package version")
#   $MSB_CTRD_CACHE/apt/<suite>/                               the private apt lists and cache
#
# A directory with its `versions` file is complete and never fetched again: a second run does
# not touch the network. Each is unpacked beside its final place and renamed into it, so an
# interrupted fetch leaves nothing that looks complete. test-e2e/src/containerd.rs reads the same
# layout (and the same $MSB_CTRD_CACHE).
#
# sid moves: when it no longer carries containerd 2.1.x, a fresh fetch fails and names the
# version it found (an existing cache keeps working).

MSB_CTRD_CACHE="${MSB_CTRD_CACHE:-/var/cache/microsandbox/ctrd}"

# The Debian mirror this machine's apt already uses for its own release's main component.
_ctrd_mirror() {
  local codename mirror
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  # shellcheck disable=SC2016 # $(URI) is apt's format field, not the shell's
  mirror=$(apt-get indextargets --format '$(URI)' 'Created-By: Packages' |
    grep -m1 "/dists/$codename/main/" | sed 's|/dists/.*||')
  [ -n "$mirror" ] || {
    echo "ctrd-versions: no Debian mirror for $codename main in this machine's apt sources" >&2
    return 1
  }
  echo "$mirror"
}

# apt-get with a private source list for suite $1: only that suite of Debian main (from the
# machine's own mirror), its lists and package cache under $MSB_CTRD_CACHE/apt/$1, no AppStream
# metadata; the remaining arguments are apt-get's.
_ctrd_apt() {
  local suite=$1 dir="$MSB_CTRD_CACHE/apt/$1" mirror
  shift
  mirror=$(_ctrd_mirror) || return 1
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$mirror" "$suite" >"$dir/sources.list"
  apt-get -q \
    -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false \
    -o APT::Sandbox::User=root \
    "$@"
}

# Suites whose lists this shell updated already.
_CTRD_UPDATED=" "

# Fetches and unpacks packages into $MSB_CTRD_CACHE/$1 unless that is complete already.
# $1: name (directory), $2: suite, $3: the package whose version must match $4 (a shell pattern,
# e.g. '2.1.*'), the rest: the packages to unpack (including $3). Returns non-zero on any failure,
# with or without `set -e`.
ctrd_fetch() {
  local name=$1 suite=$2 key=$3 want=$4
  shift 4
  local dest="$MSB_CTRD_CACHE/$name"
  [ -f "$dest/versions" ] && return 0
  echo "ctrd-versions: $name: apt-get download $* from Debian $suite"
  local work="$dest.tmp"
  rm -rf "$work"
  mkdir -p "$work/debs" || return 1
  if [[ $_CTRD_UPDATED != *" $suite "* ]]; then
    _ctrd_apt "$suite" update >/dev/null || {
      echo "ctrd-versions: apt-get update of Debian $suite failed" >&2
      return 1
    }
    _CTRD_UPDATED+="$suite "
  fi
  local p args=()
  for p in "$@"; do args+=("$p/$suite"); done
  (cd "$work/debs" && _ctrd_apt "$suite" download "${args[@]}" >/dev/null) || {
    echo "ctrd-versions: apt-get download ${args[*]} failed" >&2
    return 1
  }
  local deb pkg ver versions=""
  for deb in "$work"/debs/*.deb; do
    pkg=$(dpkg-deb -f "$deb" Package) && ver=$(dpkg-deb -f "$deb" Version) || return 1
    # shellcheck disable=SC2053 # $want is a pattern
    if [ "$pkg" = "$key" ] && [[ $ver != $want ]]; then
      echo "ctrd-versions: Debian $suite has $pkg $ver, the tests expect $want:" \
        "update hack/lib/ctrd-versions.sh and test-e2e/src/containerd.rs" >&2
      return 1
    fi
    dpkg -x "$deb" "$work/root" || return 1
    versions+="$pkg $ver"$'\n'
  done
  rm -rf "$work/debs"
  printf '%s' "$versions" >"$work/versions" || return 1
  rm -rf "$dest"
  mv "$work" "$dest" || return 1
  echo "ctrd-versions: $name: $(tr '\n' ' ' <"$dest/versions")"
}

# Everything test-e2e/tests/ctrd_versions.rs runs. One fetch at a time across processes (a lock
# file in the cache).
ctrd_versions_fetch() {
  mkdir -p "$MSB_CTRD_CACHE" || return 1
  (
    flock 9 &&
      ctrd_fetch 1.7 trixie containerd '1.7.*' containerd &&
      ctrd_fetch 2.1 sid containerd '2.1.*' containerd &&
      ctrd_fetch docker-26 trixie docker.io '26.*' docker.io docker-cli
  ) 9>"$MSB_CTRD_CACHE/.lock"
}
