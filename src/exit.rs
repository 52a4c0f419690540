//! How a subcommand's failure becomes an exit status: bad input (arguments, config, trace files)
//! exits 2, anything else exits 1. The message always names what is wrong.

use std::process::ExitCode;

#[derive(Debug)]
pub enum CliError {
    /// The user gave us something we cannot use: exit status 2.
    Input(anyhow::Error),
    /// The input was fine but running failed: exit status 1.
    Runtime(anyhow::Error),
}

impl CliError {
    pub fn input(err: impl Into<anyhow::Error>) -> Self {
        CliError::Input(err.into())
    }

    pub fn runtime(err: impl Into<anyhow::Error>) -> Self {
        CliError::Runtime(err.into())
    }

    pub fn report(self) -> ExitCode {
        match self {
            CliError::Input(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
            CliError::Runtime(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Runtime(e)
    }
}
