//! OCI side of microsandbox: reads an OCI bundle's `config.json` (via `oci-spec`), maps the rootfs
//! mounts containerd passes (overlay lowerdirs from the overlayfs snapshotter, or a plain
//! directory) to an `OciRootfsSource` (read-only lower layers plus a writable ext4 upper), pulls
//! images with `oci-distribution` and unpacks layers with whiteouts into a content cache.
//!
//! Filled by the containerd shim issue; it depends on nothing else of ours.
