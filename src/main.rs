//! The `grasp-sync` binary: parses the command line (see `cli.rs`) and runs one role.

mod cli;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{Cli, Command};
use grasp_sync::config;

fn main() -> Result<()> {
    let cli = Cli::parse();
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
        Command::Run(_)
        | Command::Controller(_)
        | Command::Worker(_)
        | Command::Relay(_)
        | Command::Crd
        | Command::Status(_) => bail!("not implemented yet"),
    }
    Ok(())
}
