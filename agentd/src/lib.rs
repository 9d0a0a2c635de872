//! agentd: PID 1 of a microsandbox microVM.
//!
//! Boot ([`init`]): mount the kernel file systems, load the initramfs's modules ([`modules`]),
//! leave the initramfs for a tmpfs root, mount cgroup2, apply the `MSB_*` settings, then open the
//! `agent` port ([`port`]) and serve the protocol ([`server`], the dispatcher): containers
//! ([`container`], [`storage`], [`cgroup`], OOM reports in [`oom`]), processes ([`prepare`] turns
//! a request into a plan, [`seccomp`] compiles its container's profile, [`spawn`] starts it,
//! [`exec`] runs its session, [`reaper`] reaps), files ([`fs`]), the pod network ([`net`]), port
//! forwarding ([`forward`]), shutdown ([`shutdown`]) and a VM restored from a template
//! ([`restore`]). Every path inside a container's root
//! that agentd creates, reads, writes or mounts on is resolved inside that root ([`inroot`]).
//!
//! Threads, not async: the dispatcher is the main thread and the only one that spawns; each
//! process has small threads for its streams and exit; one thread reaps; one writes the port.
//! Blocking I/O with bounded queues gives backpressure end to end without a runtime whose own
//! threads would complicate `clone` in a multi-threaded PID 1.
//!
//! PID 1 must never exit (the kernel would panic): a panic on the main thread is caught, logged
//! and ends in an orderly power-off; a panic on a session thread ends that thread only.

pub mod caps;
pub mod cgroup;
pub mod container;
pub mod exec;
pub mod forward;
pub mod fs;
pub mod init;
pub mod inroot;
pub mod modules;
pub mod mount_opts;
pub mod net;
pub mod oom;
pub mod port;
pub mod prepare;
pub mod reaper;
pub mod restore;
pub mod seccomp;
pub mod server;
pub mod shutdown;
pub mod spawn;
pub mod storage;
pub mod sys;
pub mod users;

use msb_protocol::boot::BootEnv;
use msb_protocol::types::Ready;

/// Runs agentd as PID 1. `boot_ns` is CLOCK_BOOTTIME at the first instruction of `main`.
pub fn run(boot_ns: u64) -> ! {
    // Before any thread exists, so that every thread inherits the blocked SIGCHLD.
    let sigset = match sys::block_sigchld() {
        Ok(s) => s,
        Err(e) => fatal(&format!("block SIGCHLD: {e}")),
    };
    if let Err(e) = init::early_mounts() {
        fatal(&e.to_string());
    }
    // Not `std::env::vars()`: it panics on a variable that is not UTF-8, and the kernel hands
    // init every unknown word of its command line as one, whatever its bytes.
    let env = BootEnv::from_vars(std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    }));
    let level = env
        .as_ref()
        .ok()
        .and_then(|e| e.log.clone())
        .unwrap_or_else(|| "info".into());
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
    let release = sys::kernel_release();
    let loaded = modules::load_all(&release);
    if let Err(e) = init::leave_initramfs().and_then(|_| init::late_mounts()) {
        fatal(&e.to_string());
    }
    if let Err(e) = sys::loopback_up() {
        tracing::warn!("bring up lo: {e}");
    }
    match &env {
        Ok(env) => init::apply_boot_env(env),
        Err(e) => tracing::error!("boot settings ignored: {e}"),
    }
    if env.as_ref().is_ok_and(|e| e.template) {
        match restore::park_devices() {
            Ok(n) => tracing::info!("template: {n} devices left unbound until core.restore"),
            Err(e) => fatal(&format!("template: {e}")),
        }
    }
    let init_ns = sys::boottime_ns();
    tracing::info!(
        "agentd {} on {release}: {loaded} modules, up in {} ms",
        env!("CARGO_PKG_VERSION"),
        init_ns / 1_000_000
    );
    let reaper = match reaper::Reaper::start(sigset) {
        Ok(r) => r,
        Err(e) => fatal(&format!("start the reaper: {e}")),
    };
    let port_path = match port::find() {
        Ok(p) => p,
        Err(e) => fatal(&e.to_string()),
    };
    let (reader, writer) = match port::open(&port_path).and_then(|f| f.try_clone().map(|w| (f, w)))
    {
        Ok(p) => p,
        Err(e) => fatal(&format!("open {}: {e}", port_path.display())),
    };
    let out = match port::Out::start(writer) {
        Ok(o) => o,
        Err(e) => fatal(&format!("start the writer: {e}")),
    };
    let ready = Ready {
        boot_time_ns: boot_ns,
        init_time_ns: init_ns,
        ready_time_ns: 0,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: release,
        // The kernel makes the boot id at its first read: a template leaves it unread, so that
        // each clone makes its own after `core.restore` has reseeded the generator.
        boot_id: if env.as_ref().is_ok_and(|e| e.template) {
            String::new()
        } else {
            sys::boot_id()
        },
    };
    let mut server = server::Server::new(out, reaper, ready);
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || server.serve(reader)));
    if let Err(p) = result {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        fatal(&format!("agentd panicked: {}", what.unwrap_or_default()));
    }
    fatal("the server returned")
}

/// Locks `m`, also when a thread panicked while holding it: a panic ends that session thread
/// only (see above), and the state it guarded stays usable for every other session.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs and powers off: the only way PID 1 may end.
pub fn fatal(msg: &str) -> ! {
    eprintln!("agentd: fatal: {msg}");
    sys::power_off()
}
