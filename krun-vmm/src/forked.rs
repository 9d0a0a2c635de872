//! Tests that need a process of one thread (`unshare(CLONE_NEWNS)`) or change the whole process
//! (`pivot_root`, seccomp): run in a forked child of the test binary.

use std::io::{Read, Write};

/// Runs `f` in a forked child and returns what it reports, one line per unexpected outcome.
/// A child that panics, or ends otherwise than by returning from `f`, fails the test.
pub(crate) fn in_child(f: impl FnOnce(&mut Vec<String>)) -> Vec<String> {
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: the child runs only `f` and leaves with `_exit`, never returning into the test
    // harness; glibc resets its allocator's locks in the child, so allocating there is sound.
    match unsafe { libc::fork() } {
        0 => {
            drop(r);
            let mut failures = Vec::new();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut failures)));
            let code = match ran {
                Ok(()) => 0,
                Err(_) => 101,
            };
            let _ = std::fs::File::from(w).write_all(failures.join("\n").as_bytes());
            // SAFETY: leaves the child at once, running nothing of the parent's.
            unsafe { libc::_exit(code) }
        }
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        pid => {
            drop(w);
            let mut out = String::new();
            std::fs::File::from(r).read_to_string(&mut out).unwrap();
            let pid = nix::unistd::Pid::from_raw(pid);
            let status = nix::sys::wait::waitpid(pid, None).unwrap();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(pid, 0),
                "the child failed; it reported: {out}"
            );
            out.lines().map(str::to_owned).collect()
        }
    }
}
