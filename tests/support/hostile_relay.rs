//! A deliberately misbehaving relay for the hostile-relay test. No real relay can be told to
//! forge signatures or send garbage, so this one is hand-written, and it is the only one. For
//! every REQ it answers, per filter carrying an `#a` tag: one valid event, one with a forged
//! signature, one with a forged id, one matching no filter, one oversized, a non-JSON text
//! frame and a binary frame; it sends EOSE only for live (`limit: 0`) REQs, so historic
//! batches time out. NEG-OPEN gets the NOTICE relays without NIP-77 send.

use super::bed::free_addr;
use futures_util::{SinkExt, StreamExt};
use nostr::{ClientMessage, Event, EventBuilder, JsonUtil, Keys, Kind, RelayMessage, Tag, TagKind};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// What the relay sent, for the assertions.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// Valid events (should reach our relay).
    pub valid: Vec<Event>,
    /// Events that must never reach our relay.
    pub bad: Vec<Event>,
}

/// The running relay.
pub struct HostileRelay {
    /// Address.
    pub addr: SocketAddr,
    /// What it sent.
    pub sent: Arc<Mutex<Sent>>,
    task: JoinHandle<()>,
}

impl Drop for HostileRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn with_a(keys: &Keys, a: &str, content: &str) -> Event {
    EventBuilder::new(Kind::Custom(1617), content)
        .tags([Tag::custom(TagKind::custom("a"), [a])])
        .sign_with_keys(keys)
        .expect("sign")
}

fn forged(mut value: serde_json::Value, field: &str) -> String {
    // A signature that is well-formed but not this event's (the id stays right), or an id
    // that is not the hash of the content.
    if field == "sig" {
        let sig = value["sig"].as_str().unwrap_or_default().to_string();
        let flipped: String = sig
            .char_indices()
            .map(|(i, c)| {
                if i == 10 {
                    if c == '0' {
                        '1'
                    } else {
                        '0'
                    }
                } else {
                    c
                }
            })
            .collect();
        value["sig"] = serde_json::Value::String(flipped);
    } else {
        value["id"] = serde_json::Value::String("00".repeat(32));
    }
    value.to_string()
}

impl HostileRelay {
    /// Starts it on a free port.
    pub async fn start() -> HostileRelay {
        let addr = free_addr();
        let listener = TcpListener::bind(addr).await.expect("bind");
        let sent = Arc::new(Mutex::new(Sent::default()));
        let shared = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sent = shared.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let keys = Keys::generate();
                    while let Some(Ok(msg)) = ws.next().await {
                        let Message::Text(text) = msg else { continue };
                        let Ok(cm) = ClientMessage::from_json(text.as_str()) else {
                            continue;
                        };
                        let mut out: Vec<Message> = Vec::new();
                        match cm {
                            ClientMessage::Req {
                                subscription_id,
                                filters,
                            } => {
                                let live = filters.iter().all(|f| f.limit == Some(0));
                                let sub = subscription_id.as_str().to_string();
                                for f in &filters {
                                    let a = f.generic_tags.iter().find(|(t, _)| t.as_char() == 'a');
                                    let Some(value) = a.and_then(|(_, v)| v.iter().next()) else {
                                        continue;
                                    };
                                    let valid = with_a(&keys, value, "valid");
                                    let bad_sig = with_a(&keys, value, "to be forged");
                                    let bad_id = with_a(&keys, value, "id to be forged");
                                    let unrelated = EventBuilder::text_note("unrelated")
                                        .sign_with_keys(&keys)
                                        .expect("sign");
                                    let big = with_a(&keys, value, &"x".repeat(300 * 1024));
                                    let frame = |e: &str| {
                                        Message::text(format!("[\"EVENT\",\"{sub}\",{e}]"))
                                    };
                                    out.push(frame(&valid.as_json()));
                                    out.push(frame(&forged(
                                        serde_json::to_value(&bad_sig).expect("json"),
                                        "sig",
                                    )));
                                    out.push(frame(&forged(
                                        serde_json::to_value(&bad_id).expect("json"),
                                        "id",
                                    )));
                                    out.push(frame(&unrelated.as_json()));
                                    out.push(frame(&big.as_json()));
                                    out.push(Message::text("this is not json"));
                                    out.push(Message::binary(vec![0u8, 1, 2, 3]));
                                    let mut s = sent.lock().expect("lock");
                                    s.valid.push(valid);
                                    s.bad.extend([bad_sig, bad_id, unrelated, big]);
                                }
                                if live {
                                    out.push(Message::text(
                                        RelayMessage::eose(subscription_id.into_owned()).as_json(),
                                    ));
                                }
                            }
                            ClientMessage::NegOpen { .. } => {
                                out.push(Message::text(
                                    RelayMessage::notice("could not parse command").as_json(),
                                ));
                            }
                            _ => {}
                        }
                        for m in out {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        HostileRelay { addr, sent, task }
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}
