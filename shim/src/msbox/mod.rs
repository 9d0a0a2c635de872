//! `msbox`, the standalone CLI, without containerd:
//! - `msbox run IMAGE|ROOTFS_DIR [-- CMD ARGS...]` boots a microVM and runs the image's process
//!   (or CMD) as the init of a container whose root is the image's layers (or ROOTFS_DIR) as
//!   read-only lowers under a fresh ext4 upper; it wires the standard streams and exits with the
//!   process's status. Exit codes follow `docker run`: the process's own status, 125 when msbox
//!   itself fails, 126/127 when the command cannot be run / is not found.
//! - `msbox pull`, `images`, `rmi`, `prune`: the image store (`msb_image`).
//! - `msbox doctor` tells what this host can run and which backend `auto` picks
//!   (docs/BACKENDS.md).

mod doctor;
mod images;
mod layers;
mod run;
mod term;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "msbox", about = "Run commands in microVMs")]
pub struct Cli {
    /// The image store (default: /var/lib/msbox as root, else $XDG_DATA_HOME/msbox).
    #[arg(long, global = true)]
    pub data_root: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new microVM, from an image or a root file system directory.
    Run(Box<run::RunArgs>),
    /// Pull an image from a registry into the store.
    Pull(images::PullArgs),
    /// List the pulled images.
    Images,
    /// Remove images, and the blobs and layer images no other image uses.
    Rmi(images::RmiArgs),
    /// Remove the blobs and layer images no pulled image uses.
    Prune,
    /// Check what this host can run: KVM, libkrunfw, QEMU, guest assets, containerd.
    Doctor(doctor::DoctorArgs),
}

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    let root = cli.data_root.as_ref();
    let done = match cli.command {
        Command::Run(args) => run::run(*args, root).await,
        Command::Pull(args) => match images::open_store(root) {
            Ok(store) => images::pull(&store, &args).await.map(|()| 0),
            Err(e) => Err(e),
        },
        Command::Images => images::open_store(root).and_then(|s| images::images(&s).map(|()| 0)),
        Command::Rmi(args) => {
            images::open_store(root).and_then(|s| images::rmi(&s, &args).map(|()| 0))
        }
        Command::Prune => images::open_store(root).and_then(|s| images::prune(&s).map(|()| 0)),
        Command::Doctor(args) => Ok(doctor::run(args)),
    };
    match done {
        Ok(code) => code,
        Err(e) => {
            eprintln!("msbox: {e:#}");
            125
        }
    }
}
