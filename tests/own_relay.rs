//! The own-relay client against the embedded relay over loopback: publishing with `OK false`
//! classified, the self-subscriber's stream, and the local item set for negentropy.

mod support;

use grasp_sync::relay::forward::OkRejection;
use grasp_sync::relay::own::{OwnRelayClient, PublishOutcome};
use nostr::{Event, EventBuilder, Filter, Keys, Kind, Tag};
use std::time::Duration;
use support::bed::{announcement, embedded_relay, scratch_dir};
use tokio::sync::mpsc::Receiver;

async fn next(rx: &mut Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("self-subscriber delivers within 5 s")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_and_local_items() {
    let dir = scratch_dir("own");
    let relay = embedded_relay(&dir).await;
    let own = OwnRelayClient::connect(relay.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    let mut rx = own
        .self_subscribe(None, Duration::from_secs(900), 64)
        .await
        .expect("self-subscribe");
    let keys = Keys::generate();

    let ours = announcement(&keys, "ours", &[relay.url().as_str()]);
    assert_eq!(own.publish(&ours).await, PublishOutcome::Stored);
    // Events we publish ourselves still reach the self-subscriber.
    assert_eq!(next(&mut rx).await.id, ours.id);

    let foreign = announcement(&keys, "foreign", &["wss://elsewhere.example"]);
    match own.publish(&foreign).await {
        PublishOutcome::Rejected(OkRejection::Blocked, msg) => {
            assert!(msg.contains("does not list"), "{msg}")
        }
        other => panic!("foreign announcement must be blocked, got {other:?}"),
    }

    let repo = format!("30617:{}:ours", keys.public_key().to_hex());
    let issue = EventBuilder::new(Kind::Custom(1621), "bug")
        .tag(Tag::parse(["a", repo.as_str()]).expect("tag"))
        .sign_with_keys(&keys)
        .expect("sign");
    assert_eq!(own.publish(&issue).await, PublishOutcome::Stored);
    assert_eq!(next(&mut rx).await.id, issue.id);
    // Publishing again is not an error: our relay already has it.
    assert_eq!(own.publish(&issue).await, PublishOutcome::Stored);
    // A kind the self-subscriber does not watch never reaches it.
    let note = EventBuilder::text_note("unrelated")
        .sign_with_keys(&keys)
        .expect("sign");
    assert_eq!(own.publish(&note).await, PublishOutcome::Stored);

    let items = own
        .local_items(
            Filter::new().kind(Kind::Custom(1621)),
            Duration::from_secs(5),
        )
        .await
        .expect("local items");
    assert_eq!(items.to_vec(), vec![(issue.id, issue.created_at)]);
    let extra = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(
        extra
            .map(|e| e.is_some_and(|e| e.id == issue.id))
            .unwrap_or(true),
        "only watched kinds (re-deliveries allowed) reach the self-subscriber"
    );

    own.shutdown().await;
    relay.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
