//! End-to-end tests: they start a real containerd 1.6 with a private root and socket (images
//! imported from a tarball built with umoci and skopeo) and real guests under QEMU, and drive the
//! shipped binaries.
//!
//! The harness lives here; the tests live in `tests/`.

pub mod containerd;
pub mod guest;
pub mod ids;
pub mod paths;

/// Says that the running test is skipped and why, where a person sees it: straight to the
/// process's stderr, because libtest captures `eprintln!` of a passing test and a skip must
/// never pass silently.
pub fn skip(reason: impl std::fmt::Display) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}
