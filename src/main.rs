//! The `prescale` command line: parses arguments, loads config, wires the crates together and
//! starts services. Logic that a test would want to call lives in the library crates.

mod backend_cmd;
mod certs_cmd;
mod exit;
mod forecaster_cmd;
mod ingest_cmd;
mod keda_cmd;
mod learning_cmd;
mod live_cmd;
mod load_cmd;
mod membership_cmd;
mod model_fanout;
mod node_cmd;
mod personas_cmd;
mod reload_cmd;
mod replay_cmd;
mod report_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::CliError;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A reverse proxy that scales the services behind it before demand arrives.
#[derive(Parser, Debug)]
#[command(name = "prescale", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// All-in-one node on the embedded default: proxy, admin API and demo backends. No config needed.
    Up(node_cmd::UpArgs),
    /// Run the reverse proxy with a configuration file.
    Proxy(node_cmd::ProxyArgs),
    /// Run a regional forecaster: receives proxies' sketches over QUIC and stores minute series.
    Forecaster(forecaster_cmd::Args),
    /// Validate a configuration file; exit status 2 and a message per problem when invalid.
    CheckConfig(node_cmd::CheckConfigArgs),
    /// Simulate scaling policies (predictive, reactive HPA, oracle) on a request trace.
    Replay(replay_cmd::Args),
    /// Capacity report of a region or all over a period (HTML, Markdown or JSON), from a
    /// forecaster's database or its admin API.
    Report(report_cmd::Args),
    /// Write a development CA and node certificates for the QUIC mesh.
    Certs(certs_cmd::Args),
    /// Run a demo HTTP backend.
    Backend(backend_cmd::Args),
    /// Send real HTTP traffic with many user identities (synthetic, a trace, or the Azure sample).
    Load(load_cmd::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with success, usage errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing();
    let result: Result<(), CliError> = match cli.command {
        Command::Up(args) => node_cmd::up(args),
        Command::Proxy(args) => node_cmd::proxy(args),
        Command::CheckConfig(args) => node_cmd::check_config(args),
        Command::Forecaster(args) => forecaster_cmd::run(args),
        Command::Replay(args) => replay_cmd::run(args),
        Command::Report(args) => report_cmd::run(args),
        Command::Certs(args) => certs_cmd::run(args),
        Command::Backend(args) => backend_cmd::run(args),
        Command::Load(args) => load_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => err.report(),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PRESCALE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
