//! End-to-end tests: they start a real containerd 1.6 with a private root and socket (images
//! imported from a tarball built with umoci and skopeo) and real guests under QEMU, and drive the
//! shipped binaries.
//!
//! The harness lives here; the tests live in `tests/`.

pub mod cgroups;
pub mod containerd;
pub mod cri;
pub mod cri_stream;
pub mod ctr;
pub mod guest;
pub mod ids;
pub mod paths;

/// The environment variable naming the file where every skip is also recorded, one line each,
/// so that `./hack/test` can print a summary at its end (libtest's own output scrolls away).
pub const SKIP_LOG_ENV: &str = "MSB_SKIP_LOG";

/// The environment variable that turns a missing prerequisite of a guest or containerd test into
/// a failure: `.ci/run` sets it, where everything those tests need is installed.
pub const REQUIRE_GUESTS_ENV: &str = "MSB_REQUIRE_GUESTS";

/// Says that the running test is skipped and why, where a person sees it: straight to the
/// process's stderr, because libtest captures `eprintln!` of a passing test and a skip must
/// never pass silently; and into the skip log when `$MSB_SKIP_LOG` names one.
///
/// For reasons that lie in the host's hardware (krun on a host whose KVM cannot boot a standard
/// guest). A missing install is [`require`]'s business.
pub fn skip(reason: impl std::fmt::Display) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            // One write per line: concurrent test processes append whole lines.
            let _ = f.write_all(format!("{test}: {reason}\n").as_bytes());
        }
    }
}

/// A prerequisite that the set-up scripts install (guest assets, QEMU, runc, a containerd
/// download) is missing: a failure where `$MSB_REQUIRE_GUESTS` is `1` (CI), else a [`skip`].
pub fn require(reason: impl std::fmt::Display) {
    if std::env::var(REQUIRE_GUESTS_ENV).is_ok_and(|v| v == "1") {
        panic!("{reason} ({REQUIRE_GUESTS_ENV}=1: a missing prerequisite is a failure)");
    }
    skip(reason);
}
