//! The `grasp-sync` binary: subcommands over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use grasp_sync::config;
use std::path::PathBuf;

/// Keeps a GRASP git relay in sync with the other Nostr relays its repositories list.
#[derive(Debug, Parser)]
#[command(name = "grasp-sync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the `kind: Settings` document of a config file and print the effective
    /// settings (defaults filled in) as YAML.
    Settings {
        /// Multi-document YAML config; without it, the defaults are printed.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

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
    }
    Ok(())
}
