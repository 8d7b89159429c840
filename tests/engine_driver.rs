//! The engine task end to end with our relay: an announcement published to the embedded relay
//! reaches the core through the self-subscriber, the batch window fires on the engine's own
//! timer, and the core's commands come out in order.

mod support;

use grasp_sync::core::nip34::OwnRelay;
use grasp_sync::core::{Command, Input, RelayUrl, SyncCore, SyncSettings};
use grasp_sync::engine::{spawn_engine, CommandSink};
use grasp_sync::relay::own::{OwnRelayClient, PublishOutcome};
use nostr::Keys;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::bed::{announcement, embedded_relay, scratch_dir};

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Command>>>);

impl CommandSink for Recorder {
    fn execute(&mut self, command: Command) {
        self.0.lock().expect("recorder lock").push(command);
    }
}

impl Recorder {
    async fn wait_for(&self, what: &str, pred: impl Fn(&Command) -> bool) -> Command {
        for _ in 0..100 {
            if let Some(c) = self
                .0
                .lock()
                .expect("recorder lock")
                .iter()
                .find(|c| pred(c))
            {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {what} within 5 s; got {:?}",
            self.0.lock().expect("lock")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcement_on_our_relay_discovers_and_connects_a_remote() {
    let dir = scratch_dir("engine");
    let relay = embedded_relay(&dir).await;
    let own_client = OwnRelayClient::connect(relay.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    let settings = SyncSettings {
        batch_window: Duration::from_millis(200),
        ..SyncSettings::default()
    };
    let core = SyncCore::new(settings, OwnRelay::new([relay.url().clone()]), 7);
    let recorder = Recorder::default();
    let (engine, task) = spawn_engine(core, recorder.clone(), 256);
    let events = own_client
        .self_subscribe(None, Duration::from_secs(900), 256)
        .await
        .expect("self-subscribe");
    let feeder = engine.feed_own_events(events);

    // Port 9 (discard) on loopback: the recorder never connects, so nothing is dialled.
    let remote = RelayUrl::parse("ws://127.0.0.1:9").expect("url");
    let keys = Keys::generate();
    let ann = announcement(&keys, "repo", &[relay.url().as_str(), remote.as_str()]);
    assert_eq!(own_client.publish(&ann).await, PublishOutcome::Stored);

    let discovered = recorder
        .wait_for("Discovered", |c| matches!(c, Command::Discovered { .. }))
        .await;
    assert_eq!(
        discovered,
        Command::Discovered {
            relay: remote.clone()
        }
    );

    engine
        .send(Input::ManageRelay {
            url: remote.clone(),
            bootstrap: false,
            suspended: false,
            limits: None,
        })
        .await
        .expect("engine running");
    let connect = recorder
        .wait_for("Connect", |c| matches!(c, Command::Connect { .. }))
        .await;
    assert_eq!(
        connect,
        Command::Connect {
            relay: remote.clone()
        }
    );

    let summaries = engine.summaries().await.expect("summaries");
    let s = summaries
        .iter()
        .find(|s| s.url == remote)
        .expect("remote summarised");
    assert_eq!(
        (s.desired_repos, s.confirmed_repos, s.synced),
        (1, 0, false)
    );
    assert_eq!(engine.stats().await.expect("stats").own_events, 1);

    // The feeder holds a handle too: the engine stops once every handle is gone.
    feeder.abort();
    let _ = feeder.await;
    drop(engine);
    let core = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("engine stops when its handles are dropped")
        .expect("engine task");
    assert_eq!(core.index.len(), 1);
    own_client.shutdown().await;
    relay.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
