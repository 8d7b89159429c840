//! The `grasp-sync` binary: parses the command line (see `cli.rs`) and runs one role.

mod cli;
mod roles;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Command};
use grasp_sync::config;
use grasp_sync::observe::memory;

fn runtime() -> Result<tokio::runtime::Runtime> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Every role: RSS back near the live heap after bursts (see `observe::memory`).
    rt.spawn(memory::trim_periodically(memory::TRIM_INTERVAL));
    Ok(rt)
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
        Command::Crd => print!("{}", grasp_sync::api::crd::render_crds()),
        Command::Controller(args) => {
            use grasp_sync::k8s::controller::{self as ctl, ControllerOptions};
            let own = grasp_sync::core::RelayUrl::parse(&args.own_relay)
                .with_context(|| format!("--own-relay {:?}", args.own_relay))?;
            let identity = args.identity.unwrap_or_else(ctl::default_identity);
            let mut opts = ControllerOptions::new(own, identity);
            opts.namespace = args.namespace;
            opts.lease_namespace = args.lease_namespace;
            opts.listen = args.listen;
            opts.settings = grasp_sync::k8s::process::load_settings(args.config.as_deref())?;
            runtime()?.block_on(ctl::run_in_cluster(opts))?;
        }
        Command::Worker(args) => {
            use grasp_sync::k8s::worker::{self, WorkerOptions};
            let own = grasp_sync::core::RelayUrl::parse(&args.own_relay)
                .with_context(|| format!("--own-relay {:?}", args.own_relay))?;
            let mut opts = WorkerOptions::new(own, args.name);
            opts.namespace = args.namespace;
            opts.lease_namespace = args.lease_namespace;
            opts.listen = args.listen;
            opts.settings = grasp_sync::k8s::process::load_settings(args.config.as_deref())?;
            runtime()?.block_on(worker::run_in_cluster(opts))?;
        }
    }
    Ok(())
}
