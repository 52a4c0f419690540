//! `prescale certs`: write a development CA and node certificates for the mutual-TLS QUIC links
//! between proxies and forecasters, optionally binding each node's membership role and region
//! (`NAME:ROLE:REGION`). A thin wrapper over `prescale_gossip::write_dev_certs`.

use std::path::PathBuf;

use crate::exit::CliError;

/// Write a dev CA (`ca.pem`, `ca.key.pem`) and, per node, `NODE.pem` + `NODE.key.pem`.
/// An existing CA in the directory is reused, so nodes can be added later.
///
/// A node taking part in cluster membership (`[mesh] membership_listen`) needs a certificate
/// that binds its role and region: give it as NAME:ROLE:REGION (e.g. `fc-eu:forecaster:eu`,
/// `edge-1:proxy:eu`); membership refuses certificates without them.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Node: its name (a DNS name, e.g. proxy-eu-1), or NAME:ROLE:REGION (ROLE proxy or
    /// forecaster) to also bind its membership role and region; repeat for more nodes.
    #[arg(long = "node", value_name = "NAME[:ROLE:REGION]", required = true, num_args = 1..)]
    pub nodes: Vec<String>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    match prescale_gossip::write_dev_certs(&args.out, &args.nodes) {
        Ok(files) => {
            println!(
                "CA: {} (key {})",
                files.ca_cert.display(),
                files.ca_key.display()
            );
            for (node, cert, key) in &files.nodes {
                println!("{node}: {} (key {})", cert.display(), key.display());
            }
            Ok(())
        }
        Err(e @ prescale_gossip::Error::Argument(_)) => Err(CliError::input(e)),
        Err(e) => Err(CliError::runtime(
            anyhow::Error::new(e)
                .context(format!("writing certificates to {}", args.out.display())),
        )),
    }
}
