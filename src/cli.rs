//! The command line: one binary, one subcommand per role (DESIGN.md section 5). The Helm chart
//! renders exactly these flags; a chart test runs `grasp-sync <subcommand> --help` with them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Keeps a GRASP git relay in sync with the other Nostr relays its repositories list.
#[derive(Debug, Parser)]
#[command(name = "grasp-sync", version, about)]
pub struct Cli {
    /// Log format. `auto` is human-readable on a terminal and JSON lines otherwise.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true, env = "GRASP_SYNC_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Standalone mode, the main job: sync our relay (embedded by default) with no cluster.
    Run(RunArgs),
    /// The Kubernetes controller: discovery, assignment, leases, finalizers (leader-elected).
    Controller(ControllerArgs),
    /// A Kubernetes worker: holds the relay sessions of the SyncRelays assigned to it.
    Worker(WorkerArgs),
    /// Run only the embedded relay (nostr-relay-builder on LMDB), e.g. in a StatefulSet.
    Relay(RelayArgs),
    /// Print the SyncRelay and RelayAllowlist CRDs as YAML.
    Crd,
    /// Print the `kubectl get syncrelays` table from a running `run` (its `/status`).
    Status(StatusArgs),
    /// Validate the `kind: Settings` document of a config file and print the effective
    /// settings (defaults filled in) as YAML.
    Settings {
        /// Multi-document YAML config; without it, the defaults are printed.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `grasp-sync run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Multi-document YAML of SyncRelay, RelayAllowlist and (optionally) Settings objects.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Our relay. Without it an embedded relay is started on `--relay-listen`.
    #[arg(long, env = "GRASP_SYNC_OWN_RELAY")]
    pub own_relay: Option<String>,
    /// Storage of the embedded relay.
    #[arg(long, default_value = "./data")]
    pub data: PathBuf,
    /// Listen address of the embedded relay.
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub relay_listen: SocketAddr,
    /// Listen address of /metrics, /livez, /readyz and /status.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
}

/// `grasp-sync controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Our relay (the GRASP relay being kept in sync).
    #[arg(long, env = "GRASP_SYNC_OWN_RELAY")]
    pub own_relay: String,
    /// Namespace to watch and write; all namespaces when absent.
    #[arg(long, env = "GRASP_SYNC_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the Leases (leader election and worker liveness).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in leader election (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// YAML file with a `kind: Settings` document.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address of /metrics, /livez and /readyz.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
}

/// `grasp-sync worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Our relay (the GRASP relay being kept in sync).
    #[arg(long, env = "GRASP_SYNC_OWN_RELAY")]
    pub own_relay: String,
    /// This worker's name (the StatefulSet pod name); also its Lease name.
    #[arg(long, env = "POD_NAME")]
    pub name: String,
    /// Namespace to watch and write; all namespaces when absent.
    #[arg(long, env = "GRASP_SYNC_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// YAML file with a `kind: Settings` document.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address of /metrics, /livez and /readyz.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
}

/// `grasp-sync relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Listen address of the relay.
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub relay_listen: SocketAddr,
    /// Storage directory.
    #[arg(long, default_value = "./data")]
    pub data: PathBuf,
    /// The public URL under which the relay is listed in announcements (default: ws://ADDR).
    #[arg(long)]
    pub public_url: Option<String>,
}

/// `grasp-sync status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Base URL of a running `grasp-sync run` (its `--listen`).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub url: String,
}
