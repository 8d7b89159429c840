//! A bounded set of recently forwarded event ids.
//!
//! nostr-sdk's per-client dedup silently drops re-deliveries; ours is explicit, counted, and
//! bounded in memory: the oldest ids are evicted first.

use nostr::EventId;
use std::collections::{HashSet, VecDeque};

/// Recently seen event ids, at most `capacity` of them.
#[derive(Debug, Clone)]
pub struct RecentIds {
    capacity: usize,
    set: HashSet<EventId>,
    order: VecDeque<EventId>,
}

impl RecentIds {
    /// A set holding at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecentIds {
            capacity,
            set: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
        }
    }

    /// Whether the id was seen recently.
    pub fn contains(&self, id: &EventId) -> bool {
        self.set.contains(id)
    }

    /// Records an id; returns false if it was already there.
    pub fn insert(&mut self, id: EventId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Forgets an id, so that a later delivery is forwarded again (used when our relay
    /// failed to store it).
    pub fn forget(&mut self, id: &EventId) {
        if self.set.remove(id) {
            self.order.retain(|x| x != id);
        }
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> EventId {
        EventId::from_byte_array([n; 32])
    }

    #[test]
    fn detects_duplicates_and_evicts_oldest() {
        let mut r = RecentIds::new(2);
        assert!(r.insert(id(1)));
        assert!(!r.insert(id(1)));
        assert!(r.insert(id(2)));
        assert!(r.insert(id(3)));
        assert_eq!(r.len(), 2);
        assert!(!r.contains(&id(1)));
        assert!(r.insert(id(1)));
    }

    #[test]
    fn forget_allows_a_retry() {
        let mut r = RecentIds::new(10);
        r.insert(id(7));
        r.forget(&id(7));
        assert!(r.insert(id(7)));
    }
}
