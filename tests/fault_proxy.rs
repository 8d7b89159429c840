//! The fault proxy itself, against the embedded relay: traffic passes, frames can be dropped,
//! a stall holds replies, a cut disconnects, and a refusal keeps the relay unreachable.

mod support;

use nostr_sdk::prelude::*;
use std::time::Duration;
use support::bed::{embedded_relay, scratch_dir};
use support::fault_proxy::FaultProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_passes_drops_stalls_cuts_and_refuses() {
    let dir = scratch_dir("proxy");
    let relay = embedded_relay(&dir).await;
    let addr = relay.addr();
    let proxy = FaultProxy::start(addr).await.expect("proxy");

    let keys = Keys::generate();
    let client = Client::default();
    client.add_relay(proxy.url()).await.expect("add");
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(5)).await;
    let note = EventBuilder::text_note("through the proxy")
        .sign_with_keys(&keys)
        .expect("sign");
    client
        .send_event(&note)
        .await
        .expect("publish through proxy");
    let filter = Filter::new().id(note.id);
    let got = client
        .fetch_events(filter.clone(), Duration::from_secs(5))
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1, "traffic passes");

    // Drop the relay's next two frames (EVENT and EOSE): the fetch times out empty.
    proxy.drop_next_frames(2);
    let got = client
        .fetch_events(filter.clone(), Duration::from_millis(800))
        .await;
    assert!(
        got.map(|e| e.is_empty()).unwrap_or(true),
        "dropped frames never arrive"
    );

    // Stall: nothing comes back until released.
    proxy.stall(true);
    let stalled = client
        .fetch_events(filter.clone(), Duration::from_millis(500))
        .await;
    assert!(
        stalled.map(|e| e.is_empty()).unwrap_or(true),
        "a stall holds the reply"
    );
    proxy.stall(false);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Cut while refusing: the relay becomes unreachable through the proxy.
    let relay_handle = client.relay(proxy.url()).await.expect("relay handle");
    proxy.refuse(true);
    proxy.cut();
    let mut disconnected = false;
    for _ in 0..50 {
        if !relay_handle.is_connected() {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(disconnected, "a cut disconnects the client");
    // While refusing, a fresh websocket upgrade gets no answer; once allowed, it does.
    assert_eq!(
        upgrade_status(&proxy).await,
        None,
        "a refusing proxy keeps the relay unreachable"
    );
    let accepted_before = proxy.accepted();
    proxy.refuse(false);
    let status = upgrade_status(&proxy)
        .await
        .expect("reachable again once the proxy lets it");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    assert!(proxy.accepted() > accepted_before);

    client.disconnect().await;
    relay.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends a websocket upgrade through the proxy; the status line, or `None` if the connection
/// closed without one.
async fn upgrade_status(proxy: &FaultProxy) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = proxy.url().trim_start_matches("ws://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| {
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}
