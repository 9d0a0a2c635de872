//! `msbox`: run a command in a fresh microVM, without containerd. See `msb_shim::msbox`.

use clap::Parser;

fn main() {
    let cli = msb_shim::msbox::Cli::parse();
    let filter = std::env::var("MSB_LOG").unwrap_or_else(|_| "warn".into());
    let mut filter = tracing_subscriber::EnvFilter::new(filter);
    // oci-distribution logs a token server's answer, the token in it, at debug: never that.
    if let Ok(quiet) = "oci_distribution=warn".parse() {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let code = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(msb_shim::msbox::main(cli));
            // Not a plain drop: that waits for a pending read of our stdin (tokio reads it on a
            // blocking thread that cannot be cancelled), i.e. for the user to press a key.
            rt.shutdown_background();
            code
        }
        Err(e) => {
            eprintln!("msbox: cannot start the async runtime: {e}");
            125
        }
    };
    std::process::exit(code);
}
