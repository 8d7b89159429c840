//! Property tests of the functional core, driven through `SyncCore::handle` by a model shell.
//!
//! The model shell executes the core's commands the way the real relay sessions would: it
//! tracks connection state and the open subscriptions of every relay, and only ever answers
//! (EOSE, negentropy results, CLOSED) for subscriptions that are actually open. Random
//! interleavings of announcements, root events, relay management, connection events, EOSE,
//! negentropy results, CLOSED, NOTICE and ticks are fed through it, and the properties are
//! checked at every step or once the scenario has been driven to quiescence.

use grasp_sync::core::actions::{compute_relay_actions, compute_relay_delta_actions};
use grasp_sync::core::command::{Command, Input, MetricEvent, NegentropyOutcome, SubPurpose};
use grasp_sync::core::health::{classify_relay_message, RelayMessageClass};
use grasp_sync::core::ids::{RelayId, RepoId, RootId};
use grasp_sync::core::lifecycle::Budget;
use grasp_sync::core::nip34::{parse_announcement, parse_root_event, OwnRelay, ParseLimits};
use grasp_sync::core::pagination::{PageCursor, PageReport, PageStep};
use grasp_sync::core::pending::{BatchId, BatchKind};
use grasp_sync::core::relay_index::{ConnectionStatus, RelayState};
use grasp_sync::core::repo_index::{
    derive_relay_targets, RelayTargets, RepoSyncIndex, Symbols, TargetChanges, TargetDelta,
};
use grasp_sync::core::settings::{RelayLimits, Scope, SyncSettings};
use grasp_sync::core::{Millis, RelayUrl, SyncCore};
use nostr::{Event, EventBuilder, Filter, Keys, Kind, SubscriptionId, Tag, TagKind, Timestamp};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Event pool: signing is slow, so every event is signed once and shared by all test cases.
// ---------------------------------------------------------------------------------------------

const OWN_URL: &str = "ws://127.0.0.1:10000";
/// Remote relays `ws://127.0.0.1:1000N`.
const REMOTES: usize = 4;
/// Repos 0..ANNOUNCED get announcements; the last repo is never announced.
const REPOS: usize = 5;
const ANNOUNCED: usize = 4;
const VERSIONS: usize = 3;
const ROOTS: usize = 8;

struct Pool {
    keys: Vec<Keys>,
    own: RelayUrl,
    remotes: Vec<RelayUrl>,
    /// Relay subsets of size 1–3 of the remote pool.
    subsets: Vec<Vec<usize>>,
    roots: Vec<Event>,
    announcements: Mutex<HashMap<(usize, usize, usize, bool), Event>>,
}

impl Pool {
    fn new() -> Self {
        let keys: Vec<Keys> = (1..=2u8)
            .map(|i| Keys::parse(&format!("{i:064x}")).expect("valid secret key"))
            .collect();
        let remotes: Vec<RelayUrl> = (1..=REMOTES)
            .map(|i| RelayUrl::parse(&format!("ws://127.0.0.1:1000{i}")).expect("valid url"))
            .collect();
        let subsets: Vec<Vec<usize>> = (1u32..(1 << REMOTES))
            .filter(|m| m.count_ones() <= 3)
            .map(|m| (0..REMOTES).filter(|i| m & (1 << i) != 0).collect())
            .collect();
        let mut pool = Pool {
            keys,
            own: RelayUrl::parse(OWN_URL).expect("valid url"),
            remotes,
            subsets,
            roots: Vec::new(),
            announcements: Mutex::new(HashMap::new()),
        };
        let kinds = [1617u16, 1618, 1621];
        pool.roots = (0..ROOTS)
            .map(|i| {
                let mut repos = vec![i % REPOS];
                if i % 2 == 1 {
                    repos.push((i + 2) % REPOS);
                }
                let tags: Vec<Tag> = repos
                    .iter()
                    .map(|r| Tag::parse(["a", pool.repo_ref(*r).as_str()]).expect("a tag"))
                    .collect();
                EventBuilder::new(Kind::Custom(kinds[i % 3]), format!("root {i}"))
                    .tags(tags)
                    .custom_created_at(Timestamp::from_secs(1_650_000_000 + i as u64))
                    .sign_with_keys(&pool.keys[i % 2])
                    .expect("sign")
            })
            .collect();
        pool
    }

    fn repo_ref(&self, repo: usize) -> String {
        format!(
            "30617:{}:repo{repo}",
            self.keys[repo % 2].public_key().to_hex()
        )
    }

    /// Version `version` of repo `repo`'s announcement, listing `subset` and maybe our relay.
    fn announcement(&self, repo: usize, version: usize, subset: usize, lists_us: bool) -> Event {
        let key = (repo, version, subset, lists_us);
        let mut cache = self.announcements.lock().expect("pool lock");
        cache
            .entry(key)
            .or_insert_with(|| {
                let mut relays: Vec<String> = Vec::new();
                if lists_us {
                    relays.push(self.own.as_str().to_string());
                }
                relays.extend(
                    self.subsets[subset]
                        .iter()
                        .map(|i| self.remotes[*i].as_str().to_string()),
                );
                EventBuilder::new(Kind::Custom(30617), "")
                    .tags([
                        Tag::custom(TagKind::custom("d"), [format!("repo{repo}")]),
                        Tag::custom(TagKind::custom("relays"), relays),
                    ])
                    .custom_created_at(Timestamp::from_secs(1_600_000_000 + 10 * version as u64))
                    .sign_with_keys(&self.keys[repo % 2])
                    .expect("sign")
            })
            .clone()
    }
}

static POOL: LazyLock<Pool> = LazyLock::new(Pool::new);

// ---------------------------------------------------------------------------------------------
// Operations and their strategies.
// ---------------------------------------------------------------------------------------------

const CLOSED_MESSAGES: [&str; 6] = [
    "rate-limited: slow down",
    "error: too many subscriptions",
    "error: shutting down",
    "negentropy: disabled",
    "auth-required: please authenticate",
    "",
];

const NOTICE_MESSAGES: [&str; 4] = [
    "rate limit exceeded",
    "Maximum subscriptions (8) reached",
    "could not parse command",
    "hello",
];

/// How to answer one filter of a historic page.
#[derive(Debug, Clone, Copy)]
enum PageKind {
    /// Nothing came back.
    Empty,
    /// Fewer than the page limit.
    Short(u32, i64),
    /// Exactly the page limit.
    Full(i64),
    /// Any count at all (a relay ignoring `limit`).
    Any(u32, i64),
}

#[derive(Debug, Clone)]
enum Op {
    Announce {
        repo: usize,
        version: usize,
        subset: usize,
        lists_us: bool,
    },
    Root(usize),
    Manage {
        relay: usize,
        bootstrap: bool,
        suspended: bool,
        limits: Option<RelayLimits>,
    },
    Unmanage(usize),
    ConnectOk {
        pick: usize,
        limits: Option<RelayLimits>,
        nip77: Option<bool>,
    },
    ConnectFail(usize),
    Drop(usize),
    Eose {
        pick: usize,
        pages: Vec<PageKind>,
    },
    Neg {
        pick: usize,
        outcome: NegentropyOutcome,
    },
    Closed {
        pick: usize,
        msg: usize,
    },
    Notice {
        relay: usize,
        msg: usize,
    },
    Tick(u64),
}

fn limits_strategy() -> impl Strategy<Value = RelayLimits> {
    (3u32..=20, 1u32..=12, 10u32..=500).prop_map(|(s, f, l)| RelayLimits {
        max_subscriptions: s,
        max_filters: f,
        max_limit: l,
    })
}

fn page_strategy() -> impl Strategy<Value = PageKind> {
    prop_oneof![
        3 => Just(PageKind::Empty),
        2 => (0u32..1000, -3i64..200).prop_map(|(n, b)| PageKind::Short(n, b)),
        2 => (-3i64..200).prop_map(PageKind::Full),
        1 => (0u32..1000, -3i64..200).prop_map(|(n, b)| PageKind::Any(n, b)),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let subsets = POOL.subsets.len();
    prop_oneof![
        6 => (0..ANNOUNCED, 0..VERSIONS, 0..subsets, prop::bool::weighted(0.85)).prop_map(
            |(repo, version, subset, lists_us)| Op::Announce { repo, version, subset, lists_us }
        ),
        3 => (0..ROOTS).prop_map(Op::Root),
        3 => (
            0..REMOTES,
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
            prop::option::weighted(0.7, limits_strategy()),
        )
            .prop_map(|(relay, bootstrap, suspended, limits)| Op::Manage {
                relay,
                bootstrap,
                suspended,
                limits
            }),
        1 => (0..REMOTES).prop_map(Op::Unmanage),
        5 => (
            any::<usize>(),
            prop::option::weighted(0.3, limits_strategy()),
            prop::option::of(any::<bool>()),
        )
            .prop_map(|(pick, limits, nip77)| Op::ConnectOk { pick, limits, nip77 }),
        1 => any::<usize>().prop_map(Op::ConnectFail),
        2 => any::<usize>().prop_map(Op::Drop),
        7 => (any::<usize>(), prop::collection::vec(page_strategy(), 1..4))
            .prop_map(|(pick, pages)| Op::Eose { pick, pages }),
        4 => (
            any::<usize>(),
            prop_oneof![
                3 => Just(NegentropyOutcome::Done),
                1 => Just(NegentropyOutcome::Unsupported),
                1 => Just(NegentropyOutcome::Failed),
            ]
        )
            .prop_map(|(pick, outcome)| Op::Neg { pick, outcome }),
        2 => (any::<usize>(), 0..CLOSED_MESSAGES.len()).prop_map(|(pick, msg)| Op::Closed { pick, msg }),
        1 => (0..REMOTES, 0..NOTICE_MESSAGES.len()).prop_map(|(relay, msg)| Op::Notice { relay, msg }),
        5 => prop_oneof![
            Just(0u64),
            Just(150),
            Just(1_000),
            Just(5_000),
            Just(31_000),
            Just(70_000),
            Just(600_000),
            Just(1_200_000),
            // Past the daily resync.
            Just(25 * 3_600_000),
        ]
        .prop_map(Op::Tick),
    ]
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op_strategy(), 1..90)
}

// ---------------------------------------------------------------------------------------------
// The model shell.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Conn {
    #[default]
    Down,
    Connecting,
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubKind {
    Live,
    Historic(BatchId),
    Neg(BatchId),
}

#[derive(Debug, Clone)]
struct OpenSub {
    kind: SubKind,
    filters: Vec<Filter>,
}

#[derive(Debug, Default)]
struct RelayModel {
    conn: Conn,
    subs: BTreeMap<SubscriptionId, OpenSub>,
    /// Items named so far by the historic filters of each pending batch.
    pending: BTreeMap<BatchId, BTreeSet<String>>,
    /// Confirmed items (repo refs and root ids), as of the start of the step, updated by
    /// the clearing commands within it.
    confirmed: BTreeSet<String>,
    /// Items of pending catch-up batches: clearing pending demotes them from confirmed.
    catching_up: BTreeSet<String>,
    /// A quick reconnect began: its ClearPending is followed by a catch-up of everything
    /// still confirmed.
    quick_reconnect: bool,
    /// What the relay advertised in NIP-11 for this connection: its real budget.
    advertised: Option<RelayLimits>,
}

/// Settings the engine properties vary: small chunks split the few items into several
/// filters per layer, a small page budget ends REQ walks early.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    chunk_size: usize,
    max_pages: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        let d = SyncSettings::default();
        Tuning {
            chunk_size: d.chunk_size,
            max_pages: d.max_pages,
        }
    }
}

fn tuning_strategy() -> impl Strategy<Value = Tuning> {
    (
        prop_oneof![2 => Just(100usize), 1 => Just(1), 1 => Just(2)],
        prop_oneof![3 => Just(100_000u32), 1 => Just(2)],
    )
        .prop_map(|(chunk_size, max_pages)| Tuning {
            chunk_size,
            max_pages,
        })
}

#[derive(Debug, Clone, Copy, Default)]
struct Checks {
    /// Property 1: no historic request of a pending or confirmed item.
    no_rerequest: bool,
    /// Property 4: subscription budget and filters per REQ; model and core agree.
    budget: bool,
    /// Property 6: the incremental targets equal the full derivation.
    targets: bool,
}

struct Harness {
    core: SyncCore,
    now: Millis,
    relays: BTreeMap<RelayUrl, RelayModel>,
    checks: Checks,
    trace: Vec<String>,
}

/// Whether the live budget can hold layer 1 plus one chunk of each of layers 2 and 3 (seven
/// filters). Below that, full live coverage is impossible and the core reports
/// `BudgetTooSmall`: properties 2 and 3 do not apply.
fn feasible(limits: RelayLimits) -> bool {
    let b = Budget::of(limits);
    b.live * b.max_filters >= 7
}

fn named_items(f: &Filter) -> impl Iterator<Item = &String> {
    f.generic_tags.values().flatten()
}

fn effective(c: &Command) -> bool {
    !matches!(c, Command::Metric { .. } | Command::Discovered { .. })
}

impl Harness {
    fn new(checks: Checks) -> Self {
        Harness::tuned(checks, Tuning::default())
    }

    fn tuned(checks: Checks, tuning: Tuning) -> Self {
        let settings = SyncSettings {
            batch_window: Duration::from_millis(100),
            chunk_size: tuning.chunk_size,
            max_pages: tuning.max_pages,
            ..SyncSettings::default()
        };
        let own = OwnRelay::new([POOL.own.clone()]);
        let mut relays = BTreeMap::new();
        for r in &POOL.remotes {
            relays.insert(r.clone(), RelayModel::default());
        }
        Harness {
            core: SyncCore::new(settings, own, 7),
            now: Millis::from_secs(1_700_000_000),
            relays,
            checks,
            trace: Vec::new(),
        }
    }

    fn fail<T>(&self, msg: String) -> Result<T, String> {
        let tail: Vec<&String> = self.trace.iter().rev().take(12).collect();
        Err(format!("{msg}\nrecent steps (newest first):\n{tail:#?}"))
    }

    fn model(&mut self, url: &RelayUrl) -> &mut RelayModel {
        self.relays.entry(url.clone()).or_default()
    }

    fn relay_id(&self, url: &RelayUrl) -> Option<RelayId> {
        self.core.relay_id(url)
    }

    fn repo_text(&self, r: RepoId) -> String {
        self.core
            .symbols
            .repo_ref(r)
            .map(|x| x.as_str().to_string())
            .unwrap_or_default()
    }

    fn root_text(&self, r: RootId) -> String {
        self.core
            .symbols
            .root_event(r)
            .map(|e| e.to_hex())
            .unwrap_or_default()
    }

    /// Re-reads the pending and confirmed items of every relay from the core.
    fn snapshot_from_core(&mut self) {
        let urls: Vec<RelayUrl> = self.relays.keys().cloned().collect();
        for url in urls {
            let id = self.relay_id(&url);
            let confirmed: BTreeSet<String> = id
                .and_then(|id| self.core.relays.get(&id))
                .map(|s| {
                    s.repos
                        .iter()
                        .map(|r| self.repo_text(*r))
                        .chain(s.root_events.iter().map(|r| self.root_text(*r)))
                        .collect()
                })
                .unwrap_or_default();
            let catching_up: BTreeSet<String> = id
                .and_then(|id| self.core.pending.get(&id))
                .map(|p| {
                    p.batches
                        .values()
                        .filter(|b| b.kind == BatchKind::CatchUp)
                        .flat_map(|b| {
                            b.items
                                .repos
                                .iter()
                                .map(|r| self.repo_text(*r))
                                .chain(b.items.root_events.iter().map(|r| self.root_text(*r)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let batches: BTreeMap<BatchId, BTreeSet<String>> = id
                .and_then(|id| self.core.pending.get(&id))
                .map(|p| {
                    p.batches
                        .iter()
                        .map(|(b, batch)| {
                            let items = batch
                                .items
                                .repos
                                .iter()
                                .map(|r| self.repo_text(*r))
                                .chain(batch.items.root_events.iter().map(|r| self.root_text(*r)))
                                .collect();
                            (*b, items)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let m = self.model(&url);
            m.confirmed = confirmed;
            m.catching_up = catching_up;
            m.pending.retain(|b, named| match batches.get(b) {
                Some(items) => {
                    named.retain(|x| items.contains(x));
                    true
                }
                None => false,
            });
        }
    }

    /// Feeds one input and executes the commands; returns them.
    fn step(&mut self, input: Input) -> Result<Vec<Command>, String> {
        self.snapshot_from_core();
        match &input {
            Input::Connected { relay, limits, .. } => {
                let m = self.model(relay);
                m.conn = Conn::Up;
                m.advertised = limits.map(RelayLimits::sanitized);
            }
            Input::ConnectFailed { relay } => self.model(relay).conn = Conn::Down,
            Input::Disconnected { relay } => {
                let m = self.model(relay);
                m.conn = Conn::Down;
                m.subs.clear();
            }
            Input::NegentropyDone { relay, sub, .. } | Input::Closed { relay, sub, .. } => {
                self.model(relay).subs.remove(sub);
            }
            // A relay that does not understand NEG-OPEN has no session open for it.
            Input::Notice { relay, message }
                if classify_relay_message(message) == RelayMessageClass::NegentropyUnsupported =>
            {
                self.model(relay)
                    .subs
                    .retain(|_, s| !matches!(s.kind, SubKind::Neg(_)));
            }
            _ => {}
        }
        let label = format!("t={} {:?}", self.now, input_label(&input));
        let cmds = self.core.handle(self.now, input);
        self.trace.push(format!(
            "{label} -> {:?}",
            cmds.iter().map(command_label).collect::<Vec<_>>()
        ));
        for c in &cmds {
            self.execute(c)?;
        }
        self.after_step()?;
        Ok(cmds)
    }

    fn limits_of(&self, url: &RelayUrl) -> Option<RelayLimits> {
        let id = self.relay_id(url)?;
        self.core.relays.get(&id).map(|s| s.limits)
    }

    fn open_sub(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        kind: SubKind,
        filters: Vec<Filter>,
    ) -> Result<(), String> {
        let Some(limits) = self.limits_of(relay) else {
            return self.fail(format!("{sub} opened on unmanaged relay {relay}"));
        };
        let checks = self.checks;
        let m = self.model(relay);
        if m.conn != Conn::Up {
            let conn = m.conn;
            return self.fail(format!("{sub} opened on {relay} while {conn:?}"));
        }
        if m.subs.contains_key(sub) {
            return self.fail(format!("{sub} opened twice on {relay}"));
        }
        if checks.no_rerequest {
            if let SubKind::Historic(b) | SubKind::Neg(b) = kind {
                let mut named: BTreeSet<String> = BTreeSet::new();
                for f in filters.iter().filter(|f| f.since.is_none()) {
                    named.extend(named_items(f).cloned());
                }
                for x in &named {
                    if m.confirmed.contains(x) {
                        return self.fail(format!(
                            "batch {b:?} ({sub}) re-requests confirmed item {x} on {relay}"
                        ));
                    }
                    if let Some(other) = m
                        .pending
                        .iter()
                        .find(|(o, items)| **o != b && items.contains(x))
                        .map(|(o, _)| *o)
                    {
                        return self.fail(format!(
                            "batch {b:?} ({sub}) re-requests {x}, pending in {other:?} on {relay}"
                        ));
                    }
                }
                let m = self.model(relay);
                m.pending.entry(b).or_default().extend(named);
                // Catch-up items are held too, even though their filters carry `since`.
                for f in filters.iter().filter(|f| f.since.is_some()) {
                    m.pending
                        .entry(b)
                        .or_default()
                        .extend(named_items(f).cloned());
                }
            }
        }
        let m = self.model(relay);
        m.subs.insert(sub.clone(), OpenSub { kind, filters });
        let open = m.subs.len();
        // The core's limits in force, and never above what the relay advertised.
        let limits = match m.advertised {
            Some(a) => RelayLimits {
                max_subscriptions: limits.max_subscriptions.min(a.max_subscriptions),
                max_filters: limits.max_filters.min(a.max_filters),
                max_limit: limits.max_limit.min(a.max_limit),
            },
            None => limits,
        };
        if checks.budget {
            let nfilters = m.subs[sub].filters.len();
            if open > limits.max_subscriptions as usize {
                return self.fail(format!(
                    "{relay}: {open} subscriptions open after {sub}, budget {}",
                    limits.max_subscriptions
                ));
            }
            if nfilters > limits.max_filters as usize {
                return self.fail(format!(
                    "{relay}: {sub} carries {nfilters} filters, max {}",
                    limits.max_filters
                ));
            }
        }
        Ok(())
    }

    fn execute(&mut self, c: &Command) -> Result<(), String> {
        match c {
            Command::Connect { relay } => {
                let m = self.model(relay);
                if m.conn != Conn::Down {
                    let conn = m.conn;
                    return self.fail(format!("Connect to {relay} while {conn:?}"));
                }
                m.conn = Conn::Connecting;
            }
            Command::Disconnect { relay, .. } => {
                let m = self.model(relay);
                m.conn = Conn::Down;
                m.subs.clear();
                m.pending.clear();
                m.confirmed.clear();
                m.catching_up.clear();
            }
            Command::ClearPending { relay, closed } => {
                let m = self.model(relay);
                for s in closed {
                    m.subs.remove(s);
                }
                m.pending.clear();
                // An interrupted catch-up demotes its items: they are fetched whole again.
                let demoted = std::mem::take(&mut m.catching_up);
                m.confirmed.retain(|x| !demoted.contains(x));
                if std::mem::take(&mut m.quick_reconnect) {
                    m.catching_up = m.confirmed.clone();
                }
            }
            Command::ClearConfirmed { relay } => {
                let m = self.model(relay);
                m.confirmed.clear();
                m.catching_up.clear();
            }
            Command::UnsubscribeAll { relay } => self.model(relay).subs.clear(),
            Command::Unsubscribe { relay, sub } => {
                self.model(relay).subs.remove(sub);
            }
            Command::Subscribe {
                relay,
                sub,
                filters,
                purpose,
            } => {
                let kind = match purpose {
                    SubPurpose::Live => {
                        // `limit: 0`, or (replacing closed live REQs) no limit and a `since`
                        // to bridge the gap between the CLOSE and the new REQ.
                        let live_shape = |f: &nostr::Filter| {
                            f.limit == Some(0) || (f.limit.is_none() && f.since.is_some())
                        };
                        if !filters.iter().all(live_shape) {
                            return self.fail(format!("live {sub} has a filter without limit 0"));
                        }
                        SubKind::Live
                    }
                    SubPurpose::Historic(b) => SubKind::Historic(*b),
                };
                self.open_sub(relay, sub, kind, filters.clone())?;
            }
            Command::Negentropy {
                relay,
                sub,
                batch,
                filter,
            } => self.open_sub(relay, sub, SubKind::Neg(*batch), vec![filter.clone()])?,
            Command::Metric {
                relay,
                event: MetricEvent::QuickReconnect,
            } => self.model(relay).quick_reconnect = true,
            Command::Discovered { .. } | Command::Metric { .. } => {}
        }
        Ok(())
    }

    fn after_step(&mut self) -> Result<(), String> {
        if self.checks.budget {
            for (url, m) in &self.relays {
                let core_open = self.core.relay_summary(url).map_or(0, |s| s.subscriptions);
                if core_open != m.subs.len() {
                    return self.fail(format!(
                        "{url}: the core counts {core_open} open subscriptions, the shell {}",
                        m.subs.len()
                    ));
                }
                let core_status = self
                    .relay_id(url)
                    .and_then(|id| self.core.relays.get(&id))
                    .map_or(ConnectionStatus::Disconnected, |s| s.connection_status);
                let expected = match m.conn {
                    Conn::Down => ConnectionStatus::Disconnected,
                    Conn::Connecting => ConnectionStatus::Connecting,
                    Conn::Up => ConnectionStatus::Connected,
                };
                if core_status != expected {
                    return self.fail(format!(
                        "{url}: core status {core_status:?}, shell {:?}",
                        m.conn
                    ));
                }
            }
        }
        if self.checks.no_rerequest {
            for (id, p) in &self.core.pending {
                let (repos, roots) = (&p.repos, &p.roots);
                if let Some((r, n)) = repos.iter().find(|(_, n)| **n > 1) {
                    return self.fail(format!(
                        "relay {id:?}: repo {} held by {n} batches",
                        self.repo_text(*r)
                    ));
                }
                if let Some((r, n)) = roots.iter().find(|(_, n)| **n > 1) {
                    return self.fail(format!(
                        "relay {id:?}: root {} held by {n} batches",
                        self.root_text(*r)
                    ));
                }
                let Some(state) = self.core.relays.get(id) else {
                    continue;
                };
                for b in p.batches.values().filter(|b| b.kind == BatchKind::NewItems) {
                    if let Some(r) = b.items.repos.iter().find(|r| state.repos.contains(r)) {
                        return self.fail(format!(
                            "relay {id:?}: new-items batch {:?} holds confirmed repo {}",
                            b.batch_id,
                            self.repo_text(*r)
                        ));
                    }
                    if let Some(r) = b
                        .items
                        .root_events
                        .iter()
                        .find(|r| state.root_events.contains(r))
                    {
                        return self.fail(format!(
                            "relay {id:?}: new-items batch {:?} holds confirmed root {}",
                            b.batch_id,
                            self.root_text(*r)
                        ));
                    }
                }
            }
        }
        if self.checks.targets {
            let derived = derive_relay_targets(&self.core.index);
            if derived != self.core.targets {
                return self.fail(format!(
                    "incremental targets {:?} differ from derived {:?}",
                    self.core.targets, derived
                ));
            }
        }
        Ok(())
    }

    /// Open subscriptions of the given kinds, across relays, in a stable order.
    fn open_subs(&self, pred: impl Fn(&OpenSub) -> bool) -> Vec<(RelayUrl, SubscriptionId)> {
        self.relays
            .iter()
            .flat_map(|(url, m)| {
                m.subs
                    .iter()
                    .filter(|(_, s)| pred(s))
                    .map(move |(id, _)| (url.clone(), id.clone()))
            })
            .collect()
    }

    fn relays_in(&self, conn: Conn) -> Vec<RelayUrl> {
        self.relays
            .iter()
            .filter(|(_, m)| m.conn == conn)
            .map(|(u, _)| u.clone())
            .collect()
    }

    fn page_reports(
        &self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        pages: &[PageKind],
    ) -> Vec<PageReport> {
        let Some(open) = self.relays.get(relay).and_then(|m| m.subs.get(sub)) else {
            return Vec::new();
        };
        if open.kind == SubKind::Live {
            return Vec::new();
        }
        let now_secs = self.now.as_secs() as i64;
        open.filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let limit = f.limit.unwrap_or(500).max(1) as u32;
                let base = f.until.map_or(now_secs, |u| u.as_secs() as i64);
                let oldest = |back: i64| Some(Timestamp::from_secs((base - back).max(0) as u64));
                match pages[i % pages.len()] {
                    PageKind::Empty => PageReport::default(),
                    // Below the page limit whenever the limit allows a short page.
                    PageKind::Short(n, back) => PageReport {
                        received: 1 + n % (limit - 1).max(1),
                        oldest: oldest(back),
                    },
                    PageKind::Full(back) => PageReport {
                        received: limit,
                        oldest: oldest(back),
                    },
                    PageKind::Any(n, back) => PageReport {
                        received: n,
                        oldest: if n == 0 { None } else { oldest(back) },
                    },
                }
            })
            .collect()
    }

    fn run_op(&mut self, op: &Op) -> Result<(), String> {
        let pool = &*POOL;
        match op {
            Op::Announce {
                repo,
                version,
                subset,
                lists_us,
            } => {
                let ev = pool.announcement(*repo, *version, *subset, *lists_us);
                self.step(Input::OwnEvent(Box::new(ev)))?;
            }
            Op::Root(i) => {
                self.step(Input::OwnEvent(Box::new(pool.roots[*i].clone())))?;
            }
            Op::Manage {
                relay,
                bootstrap,
                suspended,
                limits,
            } => {
                self.step(Input::ManageRelay {
                    url: pool.remotes[*relay].clone(),
                    bootstrap: *bootstrap,
                    suspended: *suspended,
                    limits: *limits,
                })?;
            }
            Op::Unmanage(relay) => {
                self.step(Input::UnmanageRelay {
                    url: pool.remotes[*relay].clone(),
                })?;
            }
            Op::ConnectOk {
                pick,
                limits,
                nip77,
            } => {
                let c = self.relays_in(Conn::Connecting);
                if !c.is_empty() {
                    self.step(Input::Connected {
                        relay: c[pick % c.len()].clone(),
                        limits: *limits,
                        nip77: *nip77,
                    })?;
                }
            }
            Op::ConnectFail(pick) => {
                let c = self.relays_in(Conn::Connecting);
                if !c.is_empty() {
                    self.step(Input::ConnectFailed {
                        relay: c[pick % c.len()].clone(),
                    })?;
                }
            }
            Op::Drop(pick) => {
                let c = self.relays_in(Conn::Up);
                if !c.is_empty() {
                    self.step(Input::Disconnected {
                        relay: c[pick % c.len()].clone(),
                    })?;
                }
            }
            Op::Eose { pick, pages } => {
                let subs = self.open_subs(|s| !matches!(s.kind, SubKind::Neg(_)));
                if !subs.is_empty() {
                    let (relay, sub) = subs[pick % subs.len()].clone();
                    let pages = self.page_reports(&relay, &sub, pages);
                    self.step(Input::Eose { relay, sub, pages })?;
                }
            }
            Op::Neg { pick, outcome } => {
                let subs = self.open_subs(|s| matches!(s.kind, SubKind::Neg(_)));
                if !subs.is_empty() {
                    let (relay, sub) = subs[pick % subs.len()].clone();
                    self.step(Input::NegentropyDone {
                        relay,
                        sub,
                        outcome: *outcome,
                    })?;
                }
            }
            Op::Closed { pick, msg } => {
                let subs = self.open_subs(|_| true);
                if !subs.is_empty() {
                    let (relay, sub) = subs[pick % subs.len()].clone();
                    self.step(Input::Closed {
                        relay,
                        sub,
                        message: CLOSED_MESSAGES[*msg].to_string(),
                    })?;
                }
            }
            Op::Notice { relay, msg } => {
                let url = pool.remotes[*relay].clone();
                if self.relays.get(&url).is_some_and(|m| m.conn == Conn::Up) {
                    self.step(Input::Notice {
                        relay: url,
                        message: NOTICE_MESSAGES[*msg].to_string(),
                    })?;
                }
            }
            Op::Tick(ms) => {
                self.now = Millis(self.now.0 + ms);
                self.step(Input::Tick)?;
            }
        }
        Ok(())
    }

    fn run(&mut self, ops: &[Op]) -> Result<(), String> {
        for op in ops {
            self.run_op(op)?;
        }
        Ok(())
    }

    /// Whether a relay should be connected: managed, not suspended or reaped, and wanted.
    fn wanted(&self, url: &RelayUrl) -> bool {
        let Some(id) = self.relay_id(url) else {
            return false;
        };
        let Some(s) = self.core.relays.get(&id) else {
            return false;
        };
        s.managed
            && !s.suspended
            && !s.reaped
            && (s.is_bootstrap || self.core.targets.get(id).is_some())
    }

    fn settled(&self) -> bool {
        let historic = self.open_subs(|s| s.kind != SubKind::Live);
        if !historic.is_empty() {
            return false;
        }
        self.core.relays.iter().all(|(id, s)| {
            let busy = self.core.pending.get(id).is_some_and(|p| !p.is_empty())
                || s.health.in_cooldown(self.now)
                || !s.health.may_connect(self.now);
            let unconnected = self.wanted(&s.url) && !s.is_connected();
            !busy && !unconnected && s.connection_status != ConnectionStatus::Connecting
        })
    }

    /// Answers everything (connects, short-page EOSE, negentropy Done) and lets time pass
    /// until nothing is in flight. Returns the number of rounds taken.
    fn quiesce(&mut self) -> Result<usize, String> {
        self.now = self.now + Duration::from_millis(200);
        self.step(Input::Tick)?;
        for round in 0..200 {
            let mut acted = false;
            for relay in self.relays_in(Conn::Connecting) {
                acted = true;
                self.step(Input::Connected {
                    relay,
                    limits: None,
                    nip77: None,
                })?;
            }
            for (relay, sub) in self.open_subs(|s| s.kind != SubKind::Live) {
                let Some(open) = self.relays.get(&relay).and_then(|m| m.subs.get(&sub)) else {
                    continue;
                };
                acted = true;
                let input = match open.kind {
                    SubKind::Neg(_) => Input::NegentropyDone {
                        relay,
                        sub,
                        outcome: NegentropyOutcome::Done,
                    },
                    _ => Input::Eose {
                        relay,
                        sub,
                        pages: vec![PageReport::default(); open.filters.len()],
                    },
                };
                self.step(input)?;
            }
            if acted {
                continue;
            }
            let next_health = self
                .core
                .relays
                .values()
                .flat_map(|s| [s.health.next_retry, s.health.cooldown_until])
                .flatten()
                .filter(|t| *t > self.now)
                .min();
            self.now = next_health.unwrap_or(self.now + Duration::from_secs(1));
            let cmds = self.step(Input::Tick)?;
            if !cmds.iter().any(effective) && self.settled() {
                return Ok(round);
            }
        }
        let why: Vec<String> = self
            .core
            .relays
            .iter()
            .map(|(id, s)| {
                let p = self.core.pending.get(id);
                format!(
                    "{}: status {:?}, wanted {}, batches {}, queued {}, active {}, limits {:?}, health {:?}",
                    s.url,
                    s.connection_status,
                    self.wanted(&s.url),
                    p.map_or(0, |p| p.batches.len()),
                    p.map_or(0, |p| p.queue.len()),
                    p.map_or(0, |p| p.active.len()),
                    s.limits,
                    s.health
                )
            })
            .collect();
        self.fail(format!("no quiescence within 200 rounds: {why:#?}"))
    }

    /// Property 2 at quiescence.
    fn check_synced(&self) -> Result<(), String> {
        for (url, m) in &self.relays {
            if m.conn != Conn::Up || !self.limits_of(url).is_some_and(feasible) {
                continue;
            }
            let Some(s) = self.core.relay_summary(url) else {
                return self.fail(format!("{url} is connected but unknown to the core"));
            };
            if s.confirmed_repos != s.desired_repos
                || s.confirmed_root_events != s.desired_root_events
                || !s.synced
            {
                return self.fail(format!("{url} not synced at quiescence: {s:#?}"));
            }
        }
        Ok(())
    }

    /// Property 3 at quiescence: the live filters cover the target exactly.
    fn check_live_coverage(&self) -> Result<(), String> {
        for (url, m) in &self.relays {
            if m.conn != Conn::Up || !self.limits_of(url).is_some_and(feasible) {
                continue;
            }
            let Some(id) = self.relay_id(url) else {
                continue;
            };
            let mut by_tag: BTreeMap<char, BTreeSet<String>> = BTreeMap::new();
            let mut layer1 = false;
            for sub in m.subs.values().filter(|s| s.kind == SubKind::Live) {
                for f in &sub.filters {
                    let kinds: Option<Vec<u16>> = f
                        .kinds
                        .as_ref()
                        .map(|k| k.iter().map(|k| k.as_u16()).collect());
                    if kinds.as_deref() == Some(&[30617, 30618][..]) {
                        layer1 = true;
                    }
                    for (tag, values) in &f.generic_tags {
                        by_tag
                            .entry(tag.as_char())
                            .or_default()
                            .extend(values.iter().cloned());
                    }
                }
            }
            if !layer1 {
                return self.fail(format!("{url}: no live layer-1 filter at quiescence"));
            }
            let (repos, roots): (BTreeSet<String>, BTreeSet<String>) =
                match self.core.targets.get(id) {
                    Some(t) => (
                        t.repos.iter().map(|r| self.repo_text(*r)).collect(),
                        t.roots.keys().map(|r| self.root_text(*r)).collect(),
                    ),
                    None => Default::default(),
                };
            let empty = BTreeSet::new();
            let tag = |c: char| by_tag.get(&c).unwrap_or(&empty);
            for r in &repos {
                for c in ['a', 'A', 'q'] {
                    if !tag(c).contains(r) {
                        return self.fail(format!("{url}: repo {r} not covered live in #{c}"));
                    }
                }
            }
            for r in &roots {
                for c in ['e', 'E', 'q'] {
                    if !tag(c).contains(r) {
                        return self.fail(format!("{url}: root {r} not covered live in #{c}"));
                    }
                }
            }
            // Nothing that left the target stays subscribed.
            let wanted: BTreeSet<&String> = repos.iter().chain(&roots).collect();
            if let Some(x) = by_tag.values().flatten().find(|x| !wanted.contains(x)) {
                return self.fail(format!(
                    "{url}: live filters still name {x}, not in the target"
                ));
            }
        }
        Ok(())
    }
}

fn input_label(input: &Input) -> String {
    match input {
        Input::OwnEvent(e) => format!(
            "OwnEvent(kind {}, {})",
            e.kind.as_u16(),
            &e.id.to_hex()[..8]
        ),
        other => format!("{other:?}"),
    }
}

fn command_label(c: &Command) -> String {
    match c {
        Command::Subscribe {
            relay,
            sub,
            filters,
            purpose,
        } => format!(
            "Subscribe({relay}, {sub}, {purpose:?}, {} filters{})",
            filters.len(),
            if filters.iter().any(|f| f.since.is_some()) {
                ", since"
            } else {
                ""
            }
        ),
        Command::Negentropy {
            relay, sub, batch, ..
        } => format!("Negentropy({relay}, {sub}, {batch:?})"),
        other => format!("{other:?}"),
    }
}

/// 128 cases per engine property (about a second in debug) unless `PROPTEST_CASES` says
/// otherwise; failures are not persisted, the regressions below replay what was found.
fn config() -> ProptestConfig {
    cases(128)
}

fn cases(default: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let from_env = std::env::var_os("PROPTEST_CASES").is_some();
    ProptestConfig {
        cases: if from_env { base.cases } else { default },
        failure_persistence: None,
        ..base
    }
}

// ---------------------------------------------------------------------------------------------
// Properties 1–4: the engine through the model shell.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// 1. A new historic batch never names an item already pending or confirmed on its relay.
    #[test]
    fn compute_actions_never_rerequests_held_items(ops in ops_strategy(), tuning in tuning_strategy()) {
        let mut h = Harness::tuned(Checks { no_rerequest: true, ..Checks::default() }, tuning);
        h.run(&ops).map_err(TestCaseError::fail)?;
        h.quiesce().map_err(TestCaseError::fail)?;
    }

    /// 2. Once every batch confirms, every connected relay is synced: confirmed == desired.
    #[test]
    fn quiescence_confirms_every_target(ops in ops_strategy(), tuning in tuning_strategy()) {
        let mut h = Harness::tuned(Checks::default(), tuning);
        h.run(&ops).map_err(TestCaseError::fail)?;
        h.quiesce().map_err(TestCaseError::fail)?;
        h.check_synced().map_err(TestCaseError::fail)?;
    }

    /// 3. At quiescence the live filters cover every target item in all three tag variants.
    #[test]
    fn live_filters_cover_every_target_item(ops in ops_strategy(), tuning in tuning_strategy()) {
        let mut h = Harness::tuned(Checks::default(), tuning);
        h.run(&ops).map_err(TestCaseError::fail)?;
        h.quiesce().map_err(TestCaseError::fail)?;
        h.check_live_coverage().map_err(TestCaseError::fail)?;
    }

    /// 4. No relay ever has more subscriptions open than its budget, nor a REQ more filters
    /// than its `max_filters`; the shell and the core agree on what is open.
    #[test]
    fn no_plan_exceeds_the_relay_budget(ops in ops_strategy(), tuning in tuning_strategy()) {
        let mut h = Harness::tuned(Checks { budget: true, ..Checks::default() }, tuning);
        h.run(&ops).map_err(TestCaseError::fail)?;
        h.quiesce().map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Property 5: pagination always ends.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(512))]

    /// 5. Arbitrary page reports: the walk ends within the page budget and the number of
    /// distinct seconds, and `until` strictly decreases between pages.
    #[test]
    fn pagination_always_ends(
        page_limit in 1u32..30,
        max_pages in 1u32..500,
        since in prop::option::of(0u64..100),
        until in prop::option::of(0u64..300),
        reports in prop::collection::vec((0u32..60, prop::option::of(0u64..320)), 1..50),
    ) {
        let mut base = Filter::new().kind(Kind::Custom(1));
        if let Some(s) = since {
            base = base.since(Timestamp::from_secs(s));
        }
        if let Some(u) = until {
            base = base.until(Timestamp::from_secs(u));
        }
        let mut cursor = PageCursor::new(base.clone(), page_limit, max_pages);
        let first = cursor.current();
        prop_assert_eq!(first.until, base.until);
        prop_assert_eq!(first.limit, Some(page_limit as usize));
        let mut prev_until = first.until;
        // Every step lowers `until` strictly and stays at or above `since` (or zero).
        let span = until.unwrap_or(320) - since.unwrap_or(0).min(until.unwrap_or(320)) + 1;
        let bound = (max_pages as u64).min(span + 2);
        let mut steps = 0u64;
        loop {
            let (received, oldest) = reports[steps as usize % reports.len()];
            steps += 1;
            prop_assert!(steps <= bound, "{} pages, bound {}", steps, bound);
            let step = cursor.advance(PageReport { received, oldest: oldest.map(Timestamp::from_secs) });
            prop_assert_eq!(u64::from(cursor.pages()), steps);
            match step {
                PageStep::Done => break,
                PageStep::Next(f) => {
                    prop_assert_eq!(&f, &cursor.current());
                    prop_assert_eq!(f.limit, Some(page_limit as usize));
                    prop_assert_eq!(f.since, base.since);
                    prop_assert_eq!(&f.kinds, &base.kinds);
                    let u = f.until.expect("a next page has an until");
                    if let Some(p) = prev_until {
                        prop_assert!(u < p, "until {:?} did not decrease from {:?}", u, p);
                    }
                    if let Some(s) = base.since {
                        prop_assert!(u >= s, "until {:?} below since {:?}", u, s);
                    }
                    prev_until = Some(u);
                }
            }
        }
    }

    /// 5b. Against a relay that serves pages honestly, a walk that reports no truncated run
    /// has seen every event between `since` and the starting `until`.
    #[test]
    fn pagination_misses_nothing_without_truncation(
        page_limit in 1u32..8,
        since in prop::option::of(0u64..30),
        until in prop::option::of(0u64..80),
        stamps in prop::collection::vec(0u64..60, 0..60),
    ) {
        let mut base = Filter::new();
        if let Some(s) = since {
            base = base.since(Timestamp::from_secs(s));
        }
        if let Some(u) = until {
            base = base.until(Timestamp::from_secs(u));
        }
        let in_range = |ts: u64, f: &Filter| {
            f.until.is_none_or(|u| ts <= u.as_secs()) && f.since.is_none_or(|s| ts >= s.as_secs())
        };
        let mut cursor = PageCursor::new(base.clone(), page_limit, 100_000);
        let mut f = cursor.current();
        let mut seen: BTreeSet<usize> = BTreeSet::new();
        for _ in 0..10_000 {
            // Newest first, ties by lowest index, at most `limit`.
            let mut matching: Vec<usize> = (0..stamps.len()).filter(|i| in_range(stamps[*i], &f)).collect();
            matching.sort_by(|a, b| stamps[*b].cmp(&stamps[*a]).then(a.cmp(b)));
            matching.truncate(f.limit.unwrap_or(usize::MAX));
            seen.extend(&matching);
            let report = PageReport {
                received: matching.len() as u32,
                oldest: matching.last().map(|i| Timestamp::from_secs(stamps[*i])),
            };
            match cursor.advance(report) {
                PageStep::Done => break,
                PageStep::Next(next) => f = next,
            }
        }
        prop_assert!(cursor.pages() < 10_000, "the walk did not end");
        if cursor.truncated_runs() == 0 {
            for (i, ts) in stamps.iter().enumerate() {
                if in_range(*ts, &base) {
                    prop_assert!(seen.contains(&i), "event {} at {} was never served", i, ts);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property 6: the incremental path equals the full diff.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum IndexOp {
    Announce {
        repo: usize,
        version: usize,
        subset: usize,
        lists_us: bool,
    },
    Root(usize),
}

fn index_op_strategy() -> impl Strategy<Value = IndexOp> {
    let subsets = POOL.subsets.len();
    prop_oneof![
        2 => (0..ANNOUNCED, 0..VERSIONS, 0..subsets, prop::bool::weighted(0.85)).prop_map(
            |(repo, version, subset, lists_us)| IndexOp::Announce { repo, version, subset, lists_us }
        ),
        1 => (0..ROOTS).prop_map(IndexOp::Root),
    ]
}

fn empty_state(symbols: &Symbols, id: RelayId) -> RelayState {
    let url = symbols.relay_url(id).cloned().expect("interned relay");
    RelayState::new(url, RelayLimits::default())
}

proptest! {
    #![proptest_config(cases(256))]

    /// 6a. After any index updates, the delta diff over the accumulated deltas equals the full
    /// diff, both from empty confirmed state and from a state synced at a random midpoint; and
    /// the incrementally kept targets equal `derive_relay_targets` after every update.
    #[test]
    fn delta_diff_equals_full_diff(
        ops in prop::collection::vec(index_op_strategy(), 1..40),
        split in any::<prop::sample::Index>(),
        archive in prop::bool::weighted(0.2),
    ) {
        let pool = &*POOL;
        let own = OwnRelay::new([pool.own.clone()]);
        let scope = if archive { Scope::All } else { Scope::ListingUs };
        let mut symbols = Symbols::default();
        let mut index = RepoSyncIndex::default();
        let mut targets = RelayTargets::default();
        let mut all: HashMap<RelayId, TargetDelta> = HashMap::new();
        let mut since_split: HashMap<RelayId, TargetDelta> = HashMap::new();
        let split = split.index(ops.len());
        let mut at_split = RelayTargets::default();
        for (i, op) in ops.iter().enumerate() {
            if i == split {
                at_split = targets.clone();
                since_split.clear();
            }
            let mut changes = TargetChanges::new();
            match op {
                IndexOp::Announce { repo, version, subset, lists_us } => {
                    let ev = pool.announcement(*repo, *version, *subset, *lists_us);
                    let ann = parse_announcement(&ev, &own, ParseLimits::default()).expect("parses");
                    index.apply_announcement(&mut symbols, &ann, scope, &mut targets, &mut changes);
                }
                IndexOp::Root(r) => {
                    let root = parse_root_event(&pool.roots[*r]).expect("parses");
                    index.apply_root(&mut symbols, &root, &mut targets, &mut changes);
                }
            }
            for (relay, delta) in changes {
                all.entry(relay).or_default().extend(delta.clone());
                since_split.entry(relay).or_default().extend(delta);
            }
            prop_assert_eq!(&derive_relay_targets(&index), &targets);
        }
        let relays = (0..symbols.relays.len()).map(|i| RelayId(i as u32));
        let none = TargetDelta::default();
        for id in relays {
            let fresh = empty_state(&symbols, id);
            let full = compute_relay_actions(id, targets.get(id), None, &fresh);
            let delta = compute_relay_delta_actions(id, all.get(&id).unwrap_or(&none), targets.get(id), None, &fresh);
            prop_assert_eq!(&delta, &full, "relay {:?} from empty state", id);

            let mut synced = empty_state(&symbols, id);
            if let Some(t) = at_split.get(id) {
                synced.repos = t.repos.iter().copied().collect();
                synced.root_events = t.roots.keys().copied().collect();
            }
            let full = compute_relay_actions(id, targets.get(id), None, &synced);
            let delta = compute_relay_delta_actions(
                id, since_split.get(&id).unwrap_or(&none), targets.get(id), None, &synced,
            );
            prop_assert_eq!(&delta, &full, "relay {:?} from the state synced at op {}", id, split);
        }
    }

    /// 6b. Through the engine, with everything else going on, the incremental targets equal
    /// `derive_relay_targets(&core.index)` after every step.
    #[test]
    fn engine_targets_equal_derived_targets(ops in ops_strategy(), tuning in tuning_strategy()) {
        let mut h = Harness::tuned(Checks { targets: true, ..Checks::default() }, tuning);
        h.run(&ops).map_err(TestCaseError::fail)?;
        h.quiesce().map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: the minimal cases the properties found, replayed deterministically.
// ---------------------------------------------------------------------------------------------

fn lim(max_subscriptions: u32, max_filters: u32) -> Option<RelayLimits> {
    Some(RelayLimits {
        max_subscriptions,
        max_filters,
        max_limit: 10,
    })
}

fn manage(relay: usize, limits: Option<RelayLimits>) -> Op {
    Op::Manage {
        relay,
        bootstrap: false,
        suspended: false,
        limits,
    }
}

fn announce(repo: usize, version: usize, subset: usize, lists_us: bool) -> Op {
    Op::Announce {
        repo,
        version,
        subset,
        lists_us,
    }
}

fn connect(limits: Option<RelayLimits>, nip77: Option<bool>) -> Op {
    Op::ConnectOk {
        pick: 0,
        limits,
        nip77,
    }
}

fn replay(ops: &[Op], checks: Checks) -> Harness {
    let mut h = Harness::new(checks);
    h.run(ops).unwrap_or_else(|e| panic!("{e}"));
    h.quiesce().unwrap_or_else(|e| panic!("{e}"));
    h
}

/// Only the layer-1 live REQ is open and the new items do not fit beside it: the core must
/// consolidate (packing L1 with them) instead of dropping the items with BudgetTooSmall.
#[test]
fn regression_items_packed_with_layer1_when_they_do_not_fit_beside_it() {
    let ops = [
        Op::Root(1),
        announce(1, 0, 1, true),
        manage(1, None),
        Op::Tick(150),
        connect(lim(3, 4), None),
    ];
    let h = replay(&ops, Checks::default());
    h.check_synced().unwrap_or_else(|e| panic!("{e}"));
    h.check_live_coverage().unwrap_or_else(|e| panic!("{e}"));
}

/// New operator limits below what is open: queued historic parts must not wait for ever.
#[test]
fn regression_lowered_override_does_not_starve_historic_parts() {
    let ops = [
        Op::Root(6),
        announce(1, 0, 8, true),
        Op::Tick(150),
        manage(0, None),
        connect(lim(9, 1), None),
        manage(0, lim(3, 1)),
    ];
    replay(&ops, Checks::default());
}

/// A re-sent ManageRelay must not lift the limits the relay advertised in NIP-11.
#[test]
fn regression_override_does_not_exceed_advertised_limits() {
    let ops = [
        announce(0, 0, 2, true),
        Op::Tick(150),
        manage(0, None),
        connect(lim(10, 1), None),
        manage(0, lim(10, 4)),
        announce(1, 0, 0, true),
        Op::Tick(150),
    ];
    replay(
        &ops,
        Checks {
            budget: true,
            ..Checks::default()
        },
    );
}

/// Parts queued (or pages continued) under older limits must not be sent before the
/// consolidation that re-plans them.
#[test]
fn regression_no_part_sent_under_stale_limits() {
    let ops = [
        manage(3, lim(3, 7)),
        Op::Root(2),
        announce(0, 0, 7, true),
        Op::Tick(150),
        connect(None, Some(false)),
        Op::Tick(0),
        announce(1, 0, 7, true),
        Op::Tick(150),
        Op::Tick(31_000),
        Op::Tick(5_000),
        announce(0, 0, 0, false),
        Op::Tick(31_000),
        Op::Root(1),
        manage(3, lim(5, 1)),
        Op::Tick(31_000),
    ];
    let checks = Checks {
        budget: true,
        ..Checks::default()
    };
    replay(&ops, checks);
}

/// The same for the next page of a part in flight when the limits shrink under it.
#[test]
fn regression_no_next_page_under_stale_limits() {
    let checks = Checks {
        budget: true,
        ..Checks::default()
    };
    let ops = [
        manage(2, None),
        Op::Root(6),
        announce(2, 0, 3, true),
        Op::Tick(150),
        announce(1, 0, 3, true),
        connect(None, Some(false)),
        Op::Tick(31_000),
        manage(2, lim(3, 1)),
        Op::Eose {
            pick: 0,
            pages: vec![PageKind::Short(0, 0)],
        },
    ];
    replay(&ops, checks);
}

/// After the budget is lowered by a refusal, the historic parts still open count too: new
/// live REQs must fit beside them.
#[test]
fn regression_live_budget_counts_open_historic_parts() {
    let ops = [
        manage(3, None),
        announce(2, 0, 7, true),
        Op::Tick(150),
        connect(None, None),
        Op::Neg {
            pick: 0,
            outcome: NegentropyOutcome::Unsupported,
        },
        Op::Closed { pick: 3, msg: 1 },
        announce(0, 0, 7, true),
        Op::Tick(200),
    ];
    replay(
        &ops,
        Checks {
            budget: true,
            ..Checks::default()
        },
    );
}

/// An item whose batch failed is covered live but neither pending nor confirmed; when it
/// leaves the target its live filters must be closed too.
#[test]
fn regression_failed_item_leaving_target_is_unsubscribed() {
    let ops = [
        Op::Manage {
            relay: 2,
            bootstrap: true,
            suspended: false,
            limits: None,
        },
        connect(None, Some(false)),
        Op::Eose {
            pick: 0,
            pages: vec![PageKind::Empty],
        },
        announce(0, 1, 3, true),
        Op::Tick(150),
        Op::Tick(31_000),
        announce(0, 2, 3, false),
        Op::Tick(150),
        Op::Tick(5_000),
    ];
    let h = replay(&ops, Checks::default());
    h.check_live_coverage().unwrap_or_else(|e| panic!("{e}"));
}

/// Removing an item re-plans the live REQs that covered it; when the new plan needs more
/// REQs than are free, the core consolidates instead of exceeding the budget.
#[test]
fn regression_removal_replan_stays_within_budget() {
    let ops = [
        announce(0, 0, 0, true),
        Op::Root(3),
        announce(3, 0, 0, true),
        Op::Tick(150),
        manage(0, None),
        announce(3, 1, 1, true),
        connect(lim(3, 5), None),
        Op::Tick(200),
    ];
    let h = replay(
        &ops,
        Checks {
            budget: true,
            no_rerequest: true,
            ..Checks::default()
        },
    );
    h.check_live_coverage().unwrap_or_else(|e| panic!("{e}"));
}

/// A quick reconnect under a small budget packs layer 1 with the confirmed items, so they
/// stay covered live.
#[test]
fn regression_quick_reconnect_packs_layer1_with_confirmed_items() {
    let mut h = Harness::new(Checks::default());
    let first = [
        announce(1, 0, 1, true),
        Op::Root(1),
        manage(1, None),
        Op::Tick(150),
        connect(None, None),
    ];
    h.run(&first).unwrap_or_else(|e| panic!("{e}"));
    h.quiesce().unwrap_or_else(|e| panic!("{e}"));
    let second = [
        Op::Drop(0),
        manage(1, lim(3, 4)),
        Op::Tick(5_000),
        connect(None, None),
    ];
    h.run(&second).unwrap_or_else(|e| panic!("{e}"));
    h.quiesce().unwrap_or_else(|e| panic!("{e}"));
    h.check_synced().unwrap_or_else(|e| panic!("{e}"));
    h.check_live_coverage().unwrap_or_else(|e| panic!("{e}"));
}

/// A removal that consolidates starts the new items itself: the additions computed in the
/// same pass must not start them a second time.
#[test]
fn regression_no_item_in_two_batches_after_removal_consolidates() {
    let ops = [
        announce(3, 0, 3, true),
        Op::Root(0),
        announce(0, 0, 3, true),
        Op::Manage {
            relay: 2,
            bootstrap: true,
            suspended: false,
            limits: lim(4, 4),
        },
        Op::Unmanage(0),
        announce(0, 0, 3, false),
        Op::ConnectFail(0),
        Op::Tick(5_000),
        announce(3, 0, 0, true),
        connect(None, None),
        announce(1, 0, 3, true),
        Op::Notice { relay: 0, msg: 0 },
    ];
    replay(
        &ops,
        Checks {
            no_rerequest: true,
            ..Checks::default()
        },
    );
}
