//! `msbox doctor`: prints what this host can run ([`msb_runtime::doctor`]).

use clap::Args;
use msb_runtime::doctor::{report, Facts};

/// Arguments of `msbox doctor` (none yet).
#[derive(Debug, Args)]
pub struct DoctorArgs {}

/// Prints the report; exit code 0 when `msbox run` can boot a guest with `auto`, else 1.
pub fn run(_args: DoctorArgs) -> i32 {
    let r = report(&Facts::probe());
    for l in &r.lines {
        println!("{l}");
    }
    println!("{}", r.auto);
    if r.ready {
        println!("ready: msbox run can boot a guest here");
        0
    } else {
        println!("not ready: fix the failed checks the chosen backend needs");
        1
    }
}
