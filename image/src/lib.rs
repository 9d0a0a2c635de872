//! OCI images without containerd, for `msbox pull` and `msbox run IMAGE`.
//!
//! - [`store`]: the content store under the data directory (blobs by digest, written
//!   atomically, shared across images; one record per pulled image).
//! - [`pull`]: a registry pull with `oci-distribution` into the store, every blob verified by
//!   digest before it is used.
//! - [`unpack`]: a layer (tar, gzip or zstd) into a directory in overlayfs' format (whiteouts as
//!   0/0 character devices, opaque directories by xattr), refusing entries that escape it.
//!
//! The per-layer EROFS images that a VM mounts are built from unpacked layers by the runtime's
//! builder (`msb_runtime::disks::make_lower`); see `layers` in the `msbox` CLI.

pub mod pull;
pub mod store;
pub mod unpack;

#[cfg(feature = "test-support")]
pub mod testing;
