//! Index-scale fixture shared by `benches/core_index.rs` and `examples/index_rss.rs`.
//!
//! Builds the repo index without signing anything: `Announcement` and `RootEvent` values are
//! constructed directly and fed through `RepoSyncIndex::apply_announcement` / `apply_root`,
//! exactly the calls the self-subscriber makes after parsing.

// Each consumer uses a different subset of the helpers.
#![allow(dead_code)]

use grasp_sync::core::ids::RelayId;
use grasp_sync::core::nip34::{Announcement, RejectCounts, RepoRef, RootEvent};
use grasp_sync::core::relay_index::{ConnectionStatus, RelayState, RelaySyncIndex};
use grasp_sync::core::repo_index::{RelayTargets, RepoSyncIndex, Symbols, TargetChanges};
use grasp_sync::core::settings::{RelayLimits, Scope};
use grasp_sync::core::url::RelayUrl;
use nostr::{EventId, Timestamp};

/// Shape of the fixture.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Repositories with an announcement.
    pub repos: usize,
    /// Distinct relays.
    pub relays: usize,
    /// Relays listed by each announcement.
    pub relays_per_repo: usize,
    /// Root events per repository.
    pub roots_per_repo: usize,
}

impl Scale {
    /// The project's target scale: 100k repos, 1M root events, 2k relays, 5 relays per repo.
    pub const FULL: Scale = Scale {
        repos: 100_000,
        relays: 2_000,
        relays_per_repo: 5,
        roots_per_repo: 10,
    };

    /// The same shape at 1/`n` of the repos and relays (≈250 repos per relay either way).
    pub const fn divided(self, n: usize) -> Scale {
        Scale {
            repos: self.repos / n,
            relays: self.relays / n,
            relays_per_repo: self.relays_per_repo,
            roots_per_repo: self.roots_per_repo,
        }
    }

    /// Total root events.
    pub fn root_events(&self) -> usize {
        self.repos * self.roots_per_repo
    }
}

/// A small deterministic LCG (Knuth's MMIX constants); the high bits are used.
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Lcg(seed)
    }

    /// Next value in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// A 32-byte id that looks random (splitmix64 of a tag and a counter), so hash maps see
/// realistic keys.
pub fn fake_event_id(tag: u64, n: u64) -> EventId {
    let mut bytes = [0u8; 32];
    let mut x = tag.rotate_left(32) ^ n;
    for chunk in bytes.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    EventId::from_byte_array(bytes)
}

const TAG_ANNOUNCEMENT: u64 = 1;
const TAG_ROOT: u64 = 2;
const TAG_EXTRA_ROOT: u64 = 3;

/// The ref of fixture repo `i` (64-hex pubkey, short identifier).
pub fn repo_ref(i: usize) -> RepoRef {
    let pubkey = format!(
        "{:016x}{:016x}{:016x}{:016x}",
        i,
        !i,
        i ^ 0x5555,
        i.wrapping_mul(31)
    );
    RepoRef::new(&pubkey, &format!("repo-{i}"))
}

/// The URL of fixture relay `i`.
pub fn relay_url(i: usize) -> RelayUrl {
    RelayUrl::parse(&format!("wss://relay-{i}.example.com")).expect("valid relay URL")
}

/// The repo index with its interners and incrementally maintained relay targets.
pub struct Fixture {
    /// The shape it was built with.
    pub scale: Scale,
    /// Interners.
    pub symbols: Symbols,
    /// Repo → needs.
    pub index: RepoSyncIndex,
    /// Relay → needs, maintained by the `apply_*` calls.
    pub targets: RelayTargets,
    /// Relay ids in fixture order.
    pub relay_ids: Vec<RelayId>,
    next_extra_root: u64,
}

impl Fixture {
    /// Builds the index: every announcement first, then every root event.
    pub fn build(scale: Scale) -> Fixture {
        let urls: Vec<RelayUrl> = (0..scale.relays).map(relay_url).collect();
        let mut symbols = Symbols::default();
        let relay_ids: Vec<RelayId> = urls.iter().map(|u| symbols.relay(u)).collect();
        let mut index = RepoSyncIndex::default();
        let mut targets = RelayTargets::default();
        let mut changes = TargetChanges::new();
        let mut rng = Lcg::new(0x6772_6173_702d_3032);
        let created_at = Timestamp::from_secs(1_700_000_000);
        let mut refs = Vec::with_capacity(scale.repos);
        for i in 0..scale.repos {
            let mut relays: Vec<RelayUrl> = Vec::with_capacity(scale.relays_per_repo);
            while relays.len() < scale.relays_per_repo.min(scale.relays) {
                let url = &urls[rng.below(scale.relays)];
                if !relays.contains(url) {
                    relays.push(url.clone());
                }
            }
            let ann = Announcement {
                repo: repo_ref(i),
                id: fake_event_id(TAG_ANNOUNCEMENT, i as u64),
                created_at,
                relays,
                lists_own_relay: true,
                rejects: RejectCounts::new(),
            };
            index.apply_announcement(
                &mut symbols,
                &ann,
                Scope::ListingUs,
                &mut targets,
                &mut changes,
            );
            changes.clear();
            refs.push(ann.repo);
        }
        let mut n = 0u64;
        for repo in &refs {
            for _ in 0..scale.roots_per_repo {
                let root = RootEvent {
                    id: fake_event_id(TAG_ROOT, n),
                    repos: vec![repo.clone()],
                    rejects: RejectCounts::new(),
                };
                n += 1;
                index.apply_root(&mut symbols, &root, &mut targets, &mut changes);
                changes.clear();
            }
        }
        Fixture {
            scale,
            symbols,
            index,
            targets,
            relay_ids,
            next_extra_root: 0,
        }
    }

    /// A root event never seen before, for an existing repo picked by `rng`.
    pub fn new_root_event(&mut self, rng: &mut Lcg) -> RootEvent {
        let repo = rng.below(self.scale.repos);
        self.next_extra_root += 1;
        RootEvent {
            id: fake_event_id(TAG_EXTRA_ROOT, self.next_extra_root),
            repos: vec![repo_ref(repo)],
            rejects: RejectCounts::new(),
        }
    }

    /// Every relay connected, with nothing confirmed: the first sync after a start.
    pub fn relays_connected_empty(&self) -> RelaySyncIndex {
        self.relay_ids
            .iter()
            .map(|id| {
                let url = self.symbols.relay_url(*id).expect("interned").clone();
                let mut state = RelayState::new(url, RelayLimits::default());
                state.managed = true;
                state.connection_status = ConnectionStatus::Connected;
                (*id, state)
            })
            .collect()
    }

    /// Every relay connected and having confirmed its whole target: the steady state.
    pub fn relays_confirmed_full(&self) -> RelaySyncIndex {
        let mut relays = self.relays_connected_empty();
        for (id, state) in relays.iter_mut() {
            if let Some(t) = self.targets.get(*id) {
                state.repos = t.repos.iter().copied().collect();
                state.root_events = t.roots.keys().copied().collect();
                state.layer1_confirmed = true;
            }
        }
        relays
    }

    /// Entries in the relay targets: (repo entries, root entries).
    pub fn target_entries(&self) -> (usize, usize) {
        self.targets
            .by_relay
            .values()
            .fold((0, 0), |(a, b), t| (a + t.repos.len(), b + t.roots.len()))
    }
}
