//! `msb-krun-vmm`: the VMM process of the krun backend (see the `msb_krunvmm` library docs).
//!
//! Started by the microsandbox runtime, never by hand: the LaunchConfig arrives as JSON on
//! fd 3. `msb-krun-vmm --check` reads and translates it, prints the builder calls (and what it
//! finds on the pod network's descriptor, which it leaves as it is) and exits without touching
//! KVM (tests and debugging).

use std::convert::Infallible;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Duration;

use msb_krunvmm::krun::KrunVm;
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
    let Err(e) = run(&cfg, last_error);
    let cause = chain(&e);
    tracing::error!(target: "krun_vmm", sandbox = %cfg.id, "{cause}");
    verdict::append(
        &cfg.console_log,
        &verdict::explain(&cause, msb_runtime::host::kvm_usable()),
    );
    ExitCode::FAILURE
}

/// Sets up the agent connection and enters the VM; returns only on failure.
fn run(cfg: &LaunchConfig, last_error: LastError) -> anyhow::Result<Infallible> {
    translate::validate(cfg)?;
    let listener = agent::listen(&cfg.agent_socket)?;
    let timeout = Duration::from_millis(cfg.agent_accept_timeout_ms);
    let agent = agent::accept(listener, &cfg.agent_socket, timeout)?;
    let console_log = cfg.console_log.clone();
    let id = cfg.id.clone();
    let observer = Box::new(move |code: i32| {
        tracing::info!(target: "krun_vmm", sandbox = %id, "the VM stopped with exit code {code}");
        if code != 0 {
            let cause = verdict::exit_cause(code, last_error.get());
            verdict::append(
                &console_log,
                &verdict::explain(&cause, msb_runtime::host::kvm_usable()),
            );
        }
    });
    let mut vm = KrunVm::default();
    translate::configure(cfg, agent.as_raw_fd(), observer, &mut vm)?;
    tracing::info!(target: "krun_vmm", sandbox = %cfg.id, "entering the VM: {} vCPUs, {} MiB, kernel from {}", cfg.vcpus, cfg.memory_mib, cfg.krunfw.display());
    // libkrun duplicates the agent descriptor; `agent` stays open until the process ends.
    match vm.enter()? {}
}

/// The error and its causes on one line (printed once, here at the binary's edge).
fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}
