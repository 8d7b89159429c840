//! Shared helpers for the core integration tests: signed NIP-34 events, a driver that plays
//! the shell (tracking which subscriptions are open on each relay), short tags for commands
//! and the expected filters of the three layers.
//!
//! Every test crate uses a different subset of these helpers.
#![allow(dead_code)]

use grasp_sync::core::nip34::OwnRelay;
use grasp_sync::core::pagination::PageReport;
use grasp_sync::core::relay_index::ConnectionStatus;
use grasp_sync::core::settings::RelayLimits;
use grasp_sync::core::{
    Command, Input, Millis, NegentropyOutcome, RelayUrl, SubPurpose, SyncCore, SyncSettings,
};
use nostr::{
    Event, EventBuilder, Filter, Keys, Kind, SingleLetterTag, SubscriptionId, Tag, TagKind,
    Timestamp,
};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A realistic start time (September 2026), so that a 1970 date would stand out.
pub const T0: Millis = Millis(1_790_000_000_000);

/// Our relay.
pub const OWN: &str = "wss://our.relay.example";
/// The remote relay that announcements list beside ours.
pub const REMOTE: &str = "wss://remote.example";

/// A normalised relay URL.
pub fn url(raw: &str) -> RelayUrl {
    RelayUrl::parse(raw).expect("test relay URL is valid")
}

/// Default settings with a 200 ms self-subscriber window.
pub fn settings() -> SyncSettings {
    SyncSettings {
        batch_window: Duration::from_millis(200),
        ..SyncSettings::default()
    }
}

/// A fixed maintainer key, so event ids are stable between runs.
pub fn maintainer() -> Keys {
    Keys::parse("0000000000000000000000000000000000000000000000000000000000000007")
        .expect("fixed secret key is valid")
}

/// `30617:<pubkey-hex>:<d>` of a repo announced by `keys`.
pub fn repo_ref(keys: &Keys, d: &str) -> String {
    format!("30617:{}:{d}", keys.public_key().to_hex())
}

/// A signed kind-30617 announcement with `relays` (and optional `clone`) tags.
pub fn announcement(keys: &Keys, d: &str, relays: &[&str], created_at: Millis) -> Event {
    announcement_with_clone(keys, d, relays, &[], created_at)
}

/// A signed kind-30617 announcement with `relays` and `clone` tags.
pub fn announcement_with_clone(
    keys: &Keys,
    d: &str,
    relays: &[&str],
    clone: &[&str],
    created_at: Millis,
) -> Event {
    let mut tags = vec![Tag::identifier(d)];
    if !relays.is_empty() {
        tags.push(Tag::custom(
            TagKind::custom("relays"),
            relays.iter().copied(),
        ));
    }
    if !clone.is_empty() {
        tags.push(Tag::custom(TagKind::custom("clone"), clone.iter().copied()));
    }
    EventBuilder::new(Kind::Custom(30617), "")
        .tags(tags)
        .custom_created_at(created_at.to_timestamp())
        .sign_with_keys(keys)
        .expect("announcement signs")
}

/// A signed root event (1617 patch, 1618 pull request or 1621 issue) for a repo ref.
pub fn root_event(keys: &Keys, kind: u16, repo: &str, content: &str, created_at: Millis) -> Event {
    EventBuilder::new(Kind::Custom(kind), content)
        .tag(Tag::parse(["a", repo]).expect("a tag parses"))
        .custom_created_at(created_at.to_timestamp())
        .sign_with_keys(keys)
        .expect("root event signs")
}

/// A short, order-preserving name for a command.
pub fn tag(c: &Command) -> String {
    match c {
        Command::Connect { .. } => "Connect".into(),
        Command::Disconnect { reason, .. } => format!("Disconnect({reason:?})"),
        Command::ClearPending { .. } => "ClearPending".into(),
        Command::ClearConfirmed { .. } => "ClearConfirmed".into(),
        Command::UnsubscribeAll { .. } => "UnsubscribeAll".into(),
        Command::Subscribe {
            purpose: SubPurpose::Live,
            ..
        } => "Subscribe(Live)".into(),
        Command::Subscribe {
            purpose: SubPurpose::Historic(_),
            ..
        } => "Subscribe(Historic)".into(),
        Command::Unsubscribe { .. } => "Unsubscribe".into(),
        Command::Negentropy { .. } => "Negentropy".into(),
        Command::Discovered { .. } => "Discovered".into(),
        Command::Metric { event, .. } => format!("Metric({event:?})"),
    }
}

/// Tags of a command list.
pub fn tags(cmds: &[Command]) -> Vec<String> {
    cmds.iter().map(tag).collect()
}

/// Tags without metrics.
pub fn actions(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter(|c| !matches!(c, Command::Metric { .. }))
        .map(tag)
        .collect()
}

/// The filters of every `Subscribe` in order, with its purpose.
pub fn subscribes(cmds: &[Command]) -> Vec<(SubscriptionId, Vec<Filter>, SubPurpose)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Subscribe {
                sub,
                filters,
                purpose,
                ..
            } => Some((sub.clone(), filters.clone(), *purpose)),
            _ => None,
        })
        .collect()
}

/// Filters of the `Subscribe` commands with the given purpose kind (live or historic).
pub fn sub_filters(cmds: &[Command], live: bool) -> Vec<Vec<Filter>> {
    subscribes(cmds)
        .into_iter()
        .filter(|(_, _, p)| matches!(p, SubPurpose::Live) == live)
        .map(|(_, f, _)| f)
        .collect()
}

/// The filter of every `Negentropy` command, in order.
pub fn negentropy_filters(cmds: &[Command]) -> Vec<Filter> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Negentropy { filter, .. } => Some(filter.clone()),
            _ => None,
        })
        .collect()
}

/// The subscription id a command opens or closes.
pub fn sub_id(c: &Command) -> SubscriptionId {
    match c {
        Command::Subscribe { sub, .. }
        | Command::Unsubscribe { sub, .. }
        | Command::Negentropy { sub, .. } => sub.clone(),
        other => panic!("command {other:?} carries no subscription id"),
    }
}

/// How many commands have this tag.
pub fn count(cmds: &[Command], name: &str) -> usize {
    cmds.iter().filter(|c| tag(c) == name).count()
}

/// Layer 1: announcements and repo state.
pub fn l1() -> Filter {
    Filter::new().kinds([Kind::Custom(30617), Kind::Custom(30618)])
}

/// One tag filter (`#<letter>` with these values).
pub fn tagf(letter: char, values: &[&str]) -> Filter {
    Filter::new().custom_tags(
        SingleLetterTag::from_char(letter).expect("single letter tag"),
        values.iter().map(|v| v.to_string()),
    )
}

/// Layer 2 for one chunk of repo refs: `#a`, `#A`, `#q`.
pub fn l2(refs: &[&str]) -> Vec<Filter> {
    vec![tagf('a', refs), tagf('A', refs), tagf('q', refs)]
}

/// Layer 3 for one chunk of root ids: `#e`, `#E`, `#q`.
pub fn l3(ids: &[&str]) -> Vec<Filter> {
    vec![tagf('e', ids), tagf('E', ids), tagf('q', ids)]
}

/// The same filters with `limit: 0`.
pub fn live(fs: Vec<Filter>) -> Vec<Filter> {
    fs.into_iter().map(|f| f.limit(0)).collect()
}

/// The same filters with a page `limit`.
pub fn paged(fs: Vec<Filter>, limit: usize) -> Vec<Filter> {
    fs.into_iter().map(|f| f.limit(limit)).collect()
}

/// The same filters with `since`.
pub fn since(fs: Vec<Filter>, ts: Timestamp) -> Vec<Filter> {
    fs.into_iter().map(|f| f.since(ts)).collect()
}

/// What the test shell knows about one open subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSub {
    /// Live REQ, historic REQ page or negentropy session.
    pub kind: SubKind,
    /// Its filters (one for negentropy).
    pub filters: Vec<Filter>,
}

/// Kind of an open subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    /// `limit: 0` REQ.
    Live,
    /// A historic REQ page.
    Historic,
    /// A NIP-77 session.
    Negentropy,
}

/// Plays the shell around a core: feeds inputs at a controlled time and executes the
/// returned commands against a model of each relay's open subscriptions.
pub struct Harness {
    /// The core under test.
    pub core: SyncCore,
    /// The current time.
    pub now: Millis,
    open: HashMap<RelayUrl, BTreeMap<SubscriptionId, OpenSub>>,
    max_open: HashMap<RelayUrl, usize>,
    /// Every command returned so far, with the time.
    pub log: Vec<(Millis, Command)>,
}

impl Harness {
    /// A core for our relay with these settings and seed, at [`T0`].
    pub fn new(settings: SyncSettings, seed: u64) -> Self {
        Harness {
            core: SyncCore::new(settings, OwnRelay::new([url(OWN)]), seed),
            now: T0,
            open: HashMap::new(),
            max_open: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// [`settings`] and a fixed seed.
    pub fn standard() -> Self {
        Harness::new(settings(), 7)
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
    }

    /// Feeds one input at the current time and executes the commands in the model.
    pub fn send(&mut self, input: Input) -> Vec<Command> {
        match &input {
            Input::NegentropyDone { relay, sub, .. } => {
                if let Some(m) = self.open.get_mut(relay) {
                    m.remove(sub);
                }
            }
            Input::Disconnected { relay } => {
                self.open.remove(relay);
            }
            Input::Closed { relay, sub, .. } => {
                if let Some(m) = self.open.get_mut(relay) {
                    m.remove(sub);
                }
            }
            _ => {}
        }
        let cmds = self.core.handle(self.now, input);
        for c in &cmds {
            self.apply(c);
            self.log.push((self.now, c.clone()));
        }
        cmds
    }

    fn apply(&mut self, c: &Command) {
        let relay = c.relay().clone();
        let m = self.open.entry(relay.clone()).or_default();
        match c {
            Command::Subscribe {
                sub,
                filters,
                purpose,
                ..
            } => {
                let kind = match purpose {
                    SubPurpose::Live => SubKind::Live,
                    SubPurpose::Historic(_) => SubKind::Historic,
                };
                let previous = m.insert(
                    sub.clone(),
                    OpenSub {
                        kind,
                        filters: filters.clone(),
                    },
                );
                assert!(
                    previous.is_none(),
                    "subscription id {sub} reused while open"
                );
            }
            Command::Negentropy { sub, filter, .. } => {
                let previous = m.insert(
                    sub.clone(),
                    OpenSub {
                        kind: SubKind::Negentropy,
                        filters: vec![filter.clone()],
                    },
                );
                assert!(previous.is_none(), "session id {sub} reused while open");
            }
            Command::Unsubscribe { sub, .. } => {
                m.remove(sub);
            }
            Command::UnsubscribeAll { .. } | Command::Disconnect { .. } => m.clear(),
            Command::ClearPending { closed, .. } => {
                for sub in closed {
                    m.remove(sub);
                }
            }
            _ => {}
        }
        let n = m.len();
        let max = self.max_open.entry(relay).or_insert(0);
        *max = (*max).max(n);
    }

    /// A `Tick` at the current time.
    pub fn tick(&mut self) -> Vec<Command> {
        self.send(Input::Tick)
    }

    /// Advances, then ticks.
    pub fn tick_after(&mut self, d: Duration) -> Vec<Command> {
        self.advance(d);
        self.tick()
    }

    /// An event from our relay.
    pub fn own(&mut self, ev: &Event) -> Vec<Command> {
        self.send(Input::OwnEvent(Box::new(ev.clone())))
    }

    /// Feeds the events now, then ticks once the batch window has passed.
    pub fn own_batch(&mut self, events: &[Event]) -> Vec<Command> {
        let mut out = Vec::new();
        for ev in events {
            out.extend(self.own(ev));
        }
        assert!(
            out.is_empty(),
            "no command before the batch window: {out:?}"
        );
        let window = self.core.settings().batch_window;
        self.tick_after(window)
    }

    /// A driver admits the relay.
    pub fn manage(&mut self, relay: &str, limits: Option<RelayLimits>) -> Vec<Command> {
        self.send(Input::ManageRelay {
            url: url(relay),
            bootstrap: false,
            suspended: false,
            limits,
        })
    }

    /// The connection to the relay came up.
    pub fn connected(&mut self, relay: &str, nip77: Option<bool>) -> Vec<Command> {
        self.send(Input::Connected {
            relay: url(relay),
            limits: None,
            nip77,
        })
    }

    /// The connection to the relay was lost.
    pub fn disconnected(&mut self, relay: &str) -> Vec<Command> {
        self.send(Input::Disconnected { relay: url(relay) })
    }

    /// EOSE on a historic page.
    pub fn eose(
        &mut self,
        relay: &str,
        sub: &SubscriptionId,
        pages: Vec<PageReport>,
    ) -> Vec<Command> {
        self.send(Input::Eose {
            relay: url(relay),
            sub: sub.clone(),
            pages,
        })
    }

    /// A negentropy session ended.
    pub fn neg_done(
        &mut self,
        relay: &str,
        sub: &SubscriptionId,
        outcome: NegentropyOutcome,
    ) -> Vec<Command> {
        self.send(Input::NegentropyDone {
            relay: url(relay),
            sub: sub.clone(),
            outcome,
        })
    }

    /// Subscriptions open on a relay, in id order.
    pub fn open_subs(&self, relay: &str) -> Vec<(SubscriptionId, OpenSub)> {
        self.open
            .get(&url(relay))
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Number of subscriptions open on a relay.
    pub fn open_count(&self, relay: &str) -> usize {
        self.open.get(&url(relay)).map_or(0, BTreeMap::len)
    }

    /// The most subscriptions ever open at once on a relay.
    pub fn max_open(&self, relay: &str) -> usize {
        self.max_open.get(&url(relay)).copied().unwrap_or(0)
    }

    /// Open historic REQs and negentropy sessions on a relay.
    pub fn historic_open(&self, relay: &str) -> Vec<(SubscriptionId, OpenSub)> {
        self.open_subs(relay)
            .into_iter()
            .filter(|(_, s)| s.kind != SubKind::Live)
            .collect()
    }

    /// Answers every historic part (an empty last page, or a finished session) until none
    /// is left; returns the commands.
    pub fn confirm_all(&mut self, relay: &str) -> Vec<Command> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            let Some((sub, s)) = self.historic_open(relay).into_iter().next() else {
                return out;
            };
            let cmds = match s.kind {
                SubKind::Negentropy => self.neg_done(relay, &sub, NegentropyOutcome::Done),
                _ => {
                    let pages = vec![PageReport::default(); s.filters.len()];
                    self.eose(relay, &sub, pages)
                }
            };
            out.extend(cmds);
        }
        panic!("historic work on {relay} never finished");
    }

    /// Runs a direct call on the core at the current time and executes its commands.
    pub fn run(&mut self, f: impl FnOnce(&mut SyncCore, Millis) -> Vec<Command>) -> Vec<Command> {
        let cmds = f(&mut self.core, self.now);
        for c in &cmds {
            self.apply(c);
            self.log.push((self.now, c.clone()));
        }
        cmds
    }

    /// Answers a pending connection attempt (the core said `Connect`) with `Connected`.
    pub fn finish_connecting(&mut self, relay: &str, nip77: Option<bool>) -> Vec<Command> {
        let connecting = self
            .core
            .relay_summary(&url(relay))
            .is_some_and(|s| s.connection == ConnectionStatus::Connecting);
        if connecting {
            self.connected(relay, nip77)
        } else {
            Vec::new()
        }
    }

    /// Feeds the events, admits `relay`, connects it and confirms everything.
    pub fn sync_up(
        &mut self,
        events: &[Event],
        relay: &str,
        limits: Option<RelayLimits>,
        nip77: Option<bool>,
    ) {
        let batch = self.own_batch(events);
        assert_eq!(tags(&batch), ["Discovered"], "the batch discovers {relay}");
        let manage = self.manage(relay, limits);
        assert_eq!(tags(&manage), ["Connect"]);
        self.connected(relay, nip77);
        self.confirm_all(relay);
        let summary = self.core.relay_summary(&url(relay)).expect("relay known");
        assert!(
            summary.synced,
            "relay synced after confirm_all: {summary:?}"
        );
    }
}

/// Random announcements, root events, removals, answers (full and empty pages, finished and
/// refused sessions), rate limits, refusals and reconnects against [`REMOTE`], with these
/// limits. Asserts after every step that the subscription budget was never exceeded.
pub fn churn(seed: u64, nip77: bool, limits: RelayLimits, steps: u64) -> Harness {
    // Other timers may fire while an event waits in the window: no assertion on them here.
    fn feed(h: &mut Harness, ev: &Event) {
        h.own(ev);
        h.tick_after(Duration::from_millis(200));
    }
    let budget = limits.max_subscriptions as usize;
    let keys = maintainer();
    let mut h = Harness::standard();
    h.own_batch(&[announcement(&keys, "r0", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, Some(limits));
    h.connected(REMOTE, (!nip77).then_some(false));
    let mut state = 0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut repos = vec!["r0".to_string()];
    for step in 0..steps {
        h.advance(Duration::from_secs(3));
        h.finish_connecting(REMOTE, (!nip77).then_some(false));
        let pick = |n: usize, r: u64| (r % n as u64) as usize;
        match next() % 10 {
            0 | 1 => {
                let d = format!("r{}", repos.len());
                let ev = announcement(&keys, &d, &[OWN, REMOTE], h.now);
                repos.push(d);
                feed(&mut h, &ev);
            }
            2 | 3 => {
                let d = &repos[pick(repos.len(), next())];
                let ev = root_event(&keys, 1621, &repo_ref(&keys, d), &format!("i{step}"), h.now);
                feed(&mut h, &ev);
            }
            4 => {
                // A repo drops the relay, or lists it again (a newer announcement).
                let d = repos[pick(repos.len(), next())].clone();
                let relays: &[&str] = if next() % 2 == 0 {
                    &[OWN]
                } else {
                    &[OWN, REMOTE]
                };
                let ev = announcement(&keys, &d, relays, h.now);
                feed(&mut h, &ev);
            }
            5 | 6 => {
                // Answer one historic part.
                let open = h.historic_open(REMOTE);
                if open.is_empty() {
                    continue;
                }
                let (sub, part) = open[pick(open.len(), next())].clone();
                if part.kind == SubKind::Negentropy {
                    let outcome = match next() % 6 {
                        0 => NegentropyOutcome::Unsupported,
                        1 => NegentropyOutcome::Failed,
                        _ => NegentropyOutcome::Done,
                    };
                    h.neg_done(REMOTE, &sub, outcome);
                } else {
                    let full = next() % 3 == 0;
                    let pages = (0..part.filters.len())
                        .map(|i| PageReport {
                            received: if full && i == 0 { limits.max_limit } else { 0 },
                            oldest: Some(Timestamp::from_secs(1_780_000_000 - step)),
                        })
                        .collect();
                    h.eose(REMOTE, &sub, pages);
                }
            }
            7 => {
                h.tick();
            }
            8 => match next() % 4 {
                0 => {
                    h.send(Input::Notice {
                        relay: url(REMOTE),
                        message: "rate-limited: slow down".into(),
                    });
                }
                1 => {
                    // The relay refuses one of the open subscriptions.
                    let open = h.open_subs(REMOTE);
                    if !open.is_empty() {
                        let (sub, _) = open[pick(open.len(), next())].clone();
                        h.send(Input::Closed {
                            relay: url(REMOTE),
                            sub,
                            message: "error: too many subscriptions".into(),
                        });
                    }
                }
                _ => {
                    h.tick_after(Duration::from_secs(30));
                }
            },
            _ => {
                if next() % 3 == 0 {
                    h.disconnected(REMOTE);
                    h.tick_after(Duration::from_secs(40));
                }
            }
        }
        assert!(
            h.max_open(REMOTE) <= budget,
            "seed {seed} step {step}: budget of {budget} exceeded ({})",
            h.max_open(REMOTE)
        );
    }
    h
}
