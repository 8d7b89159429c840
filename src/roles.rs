//! The binary's standalone roles: `run` (the main job), `relay` (the embedded relay alone) and
//! `status` (the table from a running `run`). Logging set-up lives here too.

use crate::cli::{LogFormat, RelayArgs, RunArgs, StatusArgs};
use anyhow::{anyhow, bail, Context, Result};
use grasp_sync::config::{self, ConfigSet};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::engine::wall_clock;
use grasp_sync::observe::table::{render, StatusObject};
use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use grasp_sync::standalone::{progress, Standalone, StandaloneOptions};
use std::io::IsTerminal;
use std::time::Duration;

/// Installs the tracing subscriber: text on a terminal, JSON lines otherwise (or as asked).
/// `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// The built-in configuration of `run` without `--config`: discovery admits public `wss://`
/// relays (the SSRF guard refuses private addresses), up to 500.
pub const DEFAULT_CONFIG: &str = "\
apiVersion: sync.grasp.dev/v1alpha1
kind: RelayAllowlist
metadata: {name: default}
spec:
  discovery: Enabled
  allowPrivateNetworks: false
  maxRelays: 500
  allow:
    - host: \"*\"
      schemes: [wss]
";

fn read_config(path: Option<&std::path::Path>) -> Result<ConfigSet> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            config::load_config(&text).with_context(|| format!("in {}", path.display()))
        }
        None => {
            tracing::info!("no --config: discovering public wss:// relays (built-in allowlist)");
            Ok(config::load_config(DEFAULT_CONFIG)?)
        }
    }
}

async fn ctrl_c_or_term() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `grasp-sync run`.
pub async fn run(args: RunArgs) -> Result<()> {
    let config = read_config(args.config.as_deref())?;
    let mut opts = StandaloneOptions::new(config);
    opts.own_relay = args
        .own_relay
        .as_deref()
        .map(|u| RelayUrl::parse(u).map_err(|e| anyhow!("--own-relay {u:?}: {}", e.reason())))
        .transpose()?;
    opts.data = args.data;
    opts.relay_listen = args.relay_listen;
    opts.listen = args.listen;
    opts.session.chunk_size = opts.config.settings.chunk_size;
    opts.session.default_limits = opts.config.settings.default_limits;
    let app = Standalone::start(opts).await?;
    let interactive = std::io::stderr().is_terminal();
    eprintln!(
        "grasp-sync: our relay {}; status at http://{}/status (Ctrl-C to stop)",
        app.own_url(),
        app.http_addr()
    );
    tokio::select! {
        _ = ctrl_c_or_term() => {}
        _ = progress::report_loop(&app, interactive) => {}
    }
    eprintln!("grasp-sync: stopping (closing subscriptions, flushing to our relay)…");
    let table = render(&app.status().await, wall_clock().as_secs());
    let stats = app.shutdown(Duration::from_secs(10)).await;
    print!("{table}");
    tracing::info!(
        stored = stats.stored,
        rejected = stats.rejected,
        deduplicated = stats.deduplicated,
        "stopped"
    );
    Ok(())
}

/// `grasp-sync relay`.
pub async fn relay(args: RelayArgs) -> Result<()> {
    let mut cfg = EmbeddedRelayConfig::new(args.relay_listen, args.data);
    if let Some(public) = args.public_url {
        let url = RelayUrl::parse(&public)
            .map_err(|e| anyhow!("--public-url {public:?}: {}", e.reason()))?;
        cfg.public_urls.push(url);
    }
    let relay = EmbeddedRelay::start(cfg).await?;
    eprintln!("grasp-sync relay listening on {}", relay.url());
    ctrl_c_or_term().await;
    relay.shutdown();
    Ok(())
}

/// `grasp-sync status`.
pub async fn status(args: StatusArgs) -> Result<()> {
    let base = url::Url::parse(&args.url).with_context(|| format!("--url {}", args.url))?;
    if base.scheme() != "http" {
        bail!("--url must be http://HOST:PORT (got {})", args.url);
    }
    let host = base
        .host_str()
        .ok_or_else(|| anyhow!("--url has no host"))?;
    let port = base.port_or_known_default().unwrap_or(80);
    let host_port = format!("{host}:{port}");
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(host_port.as_str()),
    )
    .await
    .map_err(|_| anyhow!("connecting to {host_port} timed out"))?
    .with_context(|| format!("connecting to {host_port}"))?;
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        grasp_sync::relay::wire::http_get_raw(
            &mut stream,
            &host_port,
            "/status",
            "application/json",
            16 << 20,
        ),
    )
    .await
    .map_err(|_| anyhow!("{host_port}/status timed out"))?
    .ok_or_else(|| anyhow!("{host_port}/status did not answer 200"))?;
    let objects: Vec<StatusObject> =
        serde_json::from_slice(&body).context("/status is not a list of SyncRelay objects")?;
    print!("{}", render(&objects, wall_clock().as_secs()));
    Ok(())
}
