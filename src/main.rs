//! The `grasp-sync` binary: parses the command line (see `cli.rs`) and runs one role.

mod cli;
mod roles;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{Cli, Command};
use grasp_sync::config;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    roles::init_logging(cli.log_format);
    match cli.command {
        Command::Settings { config } => {
            let settings = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    config::settings_from_yaml(&text)
                        .with_context(|| format!("in {}", path.display()))?
                }
                None => grasp_sync::core::SyncSettings::default(),
            };
            print!("{}", serde_yaml::to_string(&settings)?);
        }
        Command::Run(args) => runtime()?.block_on(roles::run(args))?,
        Command::Relay(args) => runtime()?.block_on(roles::relay(args))?,
        Command::Status(args) => runtime()?.block_on(roles::status(args))?,
        Command::Controller(_) | Command::Worker(_) | Command::Crd => bail!("not implemented yet"),
    }
    Ok(())
}
