//! `msb-krun-vmm`: the VMM process of the krun backend (see the `msb_krunvmm` library docs).
//!
//! Started by the microsandbox runtime, never by hand: the LaunchConfig arrives as JSON on
//! fd 3. `msb-krun-vmm --check` reads and translates it, prints the builder calls (and what it
//! finds on the pod network's descriptor, which it leaves as it is) and exits without touching
//! KVM (tests and debugging).

use std::convert::Infallible;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use msb_krunvmm::jail::Jail;
use msb_krunvmm::krun::KrunVm;
use msb_krunvmm::seccomp::Filters;
use msb_krunvmm::translate::{self, Recorder};
use msb_krunvmm::verdict::{self, LastError};
use msb_krunvmm::{agent, config_fd, LaunchConfig, CONFIG_FD};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let last_error = LastError::default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // stderr is krun.log in the sandbox directory; libkrun's `log` records arrive here too. Our
    // own events use the target `krun_vmm`: this binary's crate name, `msb_krun_vmm`, is also
    // the name of libkrun's VMM crate.
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .with(last_error.clone())
        .init();
    let check = std::env::args().nth(1).as_deref() == Some("--check");
    let cfg = match config_fd::read(CONFIG_FD) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("msb-krun-vmm: {}", chain(&e.into()));
            return ExitCode::from(2);
        }
    };
    if check {
        let mut r = Recorder::default();
        return match translate::configure(&cfg, -1, Box::new(|_| {}), &mut r) {
            Ok(()) => {
                println!("{}", r.calls.join("\n"));
                let Some(net) = &cfg.net else {
                    return ExitCode::SUCCESS;
                };
                match msb_krunvmm::tap::describe(net.fd) {
                    Ok(tap) => {
                        println!("fd {}: {tap}", net.fd);
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("msb-krun-vmm: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("msb-krun-vmm: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Judged now: once the VMM is confined, /sys, /proc/cpuinfo and /dev/kvm are out of reach.
    let kvm = msb_runtime::host::kvm_usable();
    let mut console = None;
    let Err(e) = run(&cfg, last_error, &kvm, &mut console);
    let cause = chain(&e);
    tracing::error!(target: "krun_vmm", sandbox = %cfg.id, "{cause}");
    let text = verdict::explain(&cause, kvm);
    match &console {
        Some(c) => verdict::append_to(c, &text),
        None => verdict::append(&cfg.console_log, &text),
    }
    ExitCode::FAILURE
}

/// Sets up the agent connection and the confinement, and enters the VM; returns only on
/// failure. `console` is the console log, opened for the verdict once the config is valid.
fn run(
    cfg: &LaunchConfig,
    last_error: LastError,
    kvm: &Result<(), String>,
    console: &mut Option<File>,
) -> anyhow::Result<Infallible> {
    translate::validate(cfg)?;
    // While this process has one thread (unshare needs it, and every thread libkrun starts
    // inherits the reduced capabilities); the new root is built later.
    msb_krunvmm::caps::limit().context("limit the VMM's capabilities")?;
    let jail = Jail::for_config(cfg).context("confine the VMM: a mount namespace of its own")?;
    let filters = Filters::compile()?;
    let listener = agent::listen(&cfg.agent_socket)?;
    let timeout = Duration::from_millis(cfg.agent_accept_timeout_ms);
    let agent = agent::accept(listener, &cfg.agent_socket, timeout)?;
    let log = |e| anyhow::Error::new(e).context(format!("open {}", cfg.console_log.display()));
    let opened = verdict::open_console(&cfg.console_log).map_err(log)?;
    let for_exit = opened.try_clone().map_err(log)?;
    let for_confine = opened.try_clone().map_err(log)?;
    *console = Some(opened);
    let id = cfg.id.clone();
    let exit_kvm = kvm.clone();
    let observer = Box::new(move |code: i32| {
        tracing::info!(target: "krun_vmm", sandbox = %id, "the VM stopped with exit code {code}");
        if code != 0 {
            let cause = verdict::exit_cause(code, last_error.get());
            verdict::append_to(&for_exit, &verdict::explain(&cause, exit_kvm.clone()));
        }
    });
    let mut vm = KrunVm::default();
    translate::configure(cfg, agent.as_raw_fd(), observer, &mut vm)?;
    let (id, kvm) = (cfg.id.clone(), kvm.clone());
    vm.before_guest_runs(move || confine(jail, &filters, &id, &for_confine, kvm));
    tracing::info!(target: "krun_vmm", sandbox = %cfg.id, "entering the VM: {} vCPUs, {} MiB, kernel from {}", cfg.vcpus, cfg.memory_mib, cfg.krunfw.display());
    // libkrun duplicates the agent descriptor; `agent` stays open until the process ends.
    match vm.enter()? {}
}

/// Pivots into the jail and installs the seccomp filters, after libkrun opened its files and
/// before the vCPUs run. Never lets the guest run unconfined: a failure ends the process, with
/// the cause in the console log the runtime shows.
fn confine(jail: Jail, filters: &Filters, id: &str, console: &File, kvm: Result<(), String>) {
    let start = Instant::now();
    let shares = jail.shares().count();
    let done = jail
        .enter()
        .map_err(anyhow::Error::from)
        .and_then(|()| msb_krunvmm::caps::drop_admin().map_err(anyhow::Error::from))
        .and_then(|()| filters.install().map_err(anyhow::Error::from));
    if let Err(e) = done {
        let cause = format!("confine the VMM before the guest runs: {e:#}");
        tracing::error!(target: "krun_vmm", sandbox = %id, "{cause}");
        verdict::append_to(console, &verdict::explain(&cause, kvm));
        std::process::exit(1);
    }
    tracing::info!(target: "krun_vmm", sandbox = %id, "confined in {:?}: new root with {shares} virtio-fs shares and /proc/self/fd, {} seccomp filters", start.elapsed(), filters.len());
}

/// The error and its causes on one line (printed once, here at the binary's edge).
fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}
