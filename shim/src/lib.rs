//! containerd shim v2 and the `msbox` CLI (filled by later issues).
