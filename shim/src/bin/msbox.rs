//! `msbox`: run a command in a fresh microVM, without containerd. See `msb_shim::msbox`.

use clap::Parser;

fn main() {
    let cli = msb_shim::msbox::Cli::parse();
    let filter = std::env::var("MSB_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let code = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(msb_shim::msbox::main(cli)),
        Err(e) => {
            eprintln!("msbox: cannot start the async runtime: {e}");
            125
        }
    };
    std::process::exit(code);
}
