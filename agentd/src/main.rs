//! agentd: PID 1 of a microsandbox microVM. See the library for what it does.

fn main() {
    let boot_ns = msb_agentd::sys::boottime_ns();
    msb_agentd::run(boot_ns)
}
