//! End-to-end tests: they start a real containerd 1.6 with a private root and socket, a real
//! distribution registry on 127.0.0.1 and real guests under QEMU, and drive the shipped binaries.
//!
//! The harness lives here; the tests live in `tests/`.

pub mod containerd;
pub mod guest;
pub mod paths;
