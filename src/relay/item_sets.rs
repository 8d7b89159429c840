//! Our relay's item sets (the local side of negentropy), fetched once per filter for all the
//! sessions of a process. Every relay's layer-1 session asks for the same set (every
//! announcement on our relay: the L1 filter has no author), so a worker starting hundreds of
//! sessions would otherwise download every announcement hundreds of times at once. That made
//! a worker's memory and CPU per relay grow with the number of announcements (the scale run's
//! RSS miss, docs/benchmarks.md). Concurrent requests for one filter share one fetch, and its
//! result serves later requests for a short time. A set at most that old is safe: it can only
//! lack events our relay stored since, which negentropy then downloads again (dedup drops
//! them); it never claims an event our relay does not hold.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

type Slot<T> = Arc<tokio::sync::Mutex<Option<(Instant, T)>>>;

/// Filters remembered at once; beyond it, slots nobody waits on are dropped.
const MAX_FILTERS: usize = 256;

/// Shared, single-flight item sets keyed by filter (its JSON). `T` is the set as sessions use
/// it (the sealed negentropy storage; cheap to clone).
#[derive(Clone)]
pub struct SharedItemSets<T> {
    slots: Arc<Mutex<HashMap<String, Slot<T>>>>,
}

impl<T> Default for SharedItemSets<T> {
    fn default() -> Self {
        SharedItemSets {
            slots: Arc::default(),
        }
    }
}

impl<T> std::fmt::Debug for SharedItemSets<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedItemSets")
    }
}

impl<T: Clone> SharedItemSets<T> {
    /// The set for `key`: fetched by `fetch` unless a fetch for it is running (then its
    /// result) or finished less than `fresh_for` ago.
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        key: String,
        fresh_for: Duration,
        fetch: F,
    ) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() >= MAX_FILTERS && !slots.contains_key(&key) {
                // The map holds one reference; a running fetch or a waiter holds another.
                slots.retain(|_, s| Arc::strong_count(s) > 1);
                if slots.len() >= MAX_FILTERS {
                    slots.clear();
                }
            }
            slots.entry(key).or_default().clone()
        };
        let mut held = slot.lock().await;
        if let Some((at, items)) = held.as_ref() {
            if at.elapsed() < fresh_for {
                return Ok(items.clone());
            }
        }
        let items = fetch().await?;
        *held = Some((Instant::now(), items.clone()));
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventId, Timestamp};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn item(n: u8) -> (EventId, Timestamp) {
        (
            EventId::from_byte_array([n; 32]),
            Timestamp::from_secs(u64::from(n)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_fetch_and_a_stale_set_is_fetched_again() {
        let sets = SharedItemSets::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetch = |n: u8| {
            let fetches = fetches.clone();
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, ()>(vec![item(n)])
            }
        };
        let fresh = Duration::from_secs(5);
        let (a, b) = tokio::join!(
            sets.get_or_fetch("l1".into(), fresh, fetch(1)),
            sets.get_or_fetch("l1".into(), fresh, fetch(2)),
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for both");
        assert_eq!(a, Ok(vec![item(1)]));
        assert_eq!(b, a);
        // Another filter is its own set.
        let c = sets.get_or_fetch("l2".into(), fresh, fetch(3)).await;
        assert_eq!(c, Ok(vec![item(3)]));
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // Fresh: served; stale: fetched again.
        tokio::time::advance(Duration::from_secs(4)).await;
        let d = sets.get_or_fetch("l1".into(), fresh, fetch(4)).await;
        assert_eq!(d, Ok(vec![item(1)]));
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = sets.get_or_fetch("l1".into(), fresh, fetch(5)).await;
        assert_eq!(e, Ok(vec![item(5)]));
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_remembered() {
        let sets = SharedItemSets::default();
        let fresh = Duration::from_secs(5);
        let failed = sets
            .get_or_fetch("l1".into(), fresh, || async {
                Err::<Vec<(EventId, Timestamp)>, _>("down")
            })
            .await;
        assert_eq!(failed, Err("down"));
        let ok = sets
            .get_or_fetch("l1".into(), fresh, || async {
                Ok::<_, &str>(vec![item(7)])
            })
            .await;
        assert_eq!(ok, Ok(vec![item(7)]));
    }
}
