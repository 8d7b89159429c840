//! Interned identifiers: relays, repos and root events become dense `u32` ids.
//!
//! At 100k repos, 1M root events and 2k relays the relay → root target sets hold millions of
//! entries; 4-byte ids instead of 32-byte event ids keep the whole index in a few hundred MB.

use std::collections::HashMap;
use std::hash::Hash;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub u32);
    };
}

id_type!(
    /// A relay, interned from its normalised URL.
    RelayId
);
id_type!(
    /// A repository, interned from its `30617:<pubkey>:<d>` ref.
    RepoId
);
id_type!(
    /// A root event, interned from its event id.
    RootId
);

/// Append-only interner: ids are stable for the life of the core.
#[derive(Debug, Clone)]
pub struct Interner<K> {
    ids: HashMap<K, u32>,
    keys: Vec<K>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Interner {
            ids: HashMap::new(),
            keys: Vec::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Interner<K> {
    /// An interner with room for `n` keys.
    pub fn with_capacity(n: usize) -> Self {
        Interner {
            ids: HashMap::with_capacity(n),
            keys: Vec::with_capacity(n),
        }
    }

    /// The id of `key`, assigning the next one if it is new.
    pub fn intern(&mut self, key: &K) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        self.ids.insert(key.clone(), id);
        self.keys.push(key.clone());
        id
    }

    /// The id of `key`, if interned.
    pub fn get(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// The key of `id`. Ids come only from this interner, so a miss is a caller bug; it
    /// returns `None` rather than panicking.
    pub fn resolve(&self, id: u32) -> Option<&K> {
        self.keys.get(id as usize)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
