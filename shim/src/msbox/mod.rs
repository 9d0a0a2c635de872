//! `msbox`, the standalone CLI: `msbox run ROOTFS_DIR [-- CMD ARGS...]` boots a microVM, runs
//! CMD as the init of a container whose root is ROOTFS_DIR (read-only lower, fresh ext4 upper),
//! wires the standard streams and exits with CMD's status. Exit codes follow `docker run`:
//! the command's own status, 125 when msbox itself fails, 126/127 when the command cannot be
//! run / is not found. `msbox doctor` tells what this host can run and which backend `auto`
//! picks (docs/BACKENDS.md).

mod doctor;
mod run;
mod term;

use clap::{Parser, Subcommand};

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "msbox", about = "Run commands in microVMs")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new microVM from a root file system directory.
    Run(Box<run::RunArgs>),
    /// Check what this host can run: KVM, libkrunfw, QEMU, guest assets, containerd.
    Doctor(doctor::DoctorArgs),
}

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => match run::run(*args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("msbox: {e:#}");
                125
            }
        },
        Command::Doctor(args) => doctor::run(args),
    }
}
