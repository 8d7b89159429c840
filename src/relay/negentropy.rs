//! One NIP-77 reconciliation as the initiator, without I/O: built from our relay's item set for
//! the filter, it turns each NEG-MSG into the next message, collects the ids we lack, then
//! plans their download (REQs of several id filters) and checks that every requested id
//! arrived.

use negentropy::NegentropyStorageBase;
use nostr::{EventId, Filter, Timestamp};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// Largest negentropy frame we send (hex doubles it on the wire).
pub const FRAME_LIMIT: u64 = 16_384;

/// Why a reconciliation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegError {
    /// The protocol library refused a message.
    #[error("negentropy: {0}")]
    Protocol(String),
    /// The relay sent text that is not hex.
    #[error("negentropy message is not hex")]
    NotHex,
}

/// What to do after a NEG-MSG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegStep {
    /// Send this NEG-MSG (hex).
    Send(String),
    /// Reconciliation finished: send NEG-CLOSE and fetch `need`.
    Finished,
}

/// Our relay's items for one filter, sorted and sealed once. Sessions reconciling the same
/// filter share one (every relay's layer-1 session reconciles every announcement on our relay,
/// so a worker would otherwise hold one copy of that set per session).
#[derive(Clone, Debug)]
pub struct LocalItems(Arc<negentropy::NegentropyStorageVector>);

impl LocalItems {
    /// Sorts and seals `items` (duplicates collapse).
    pub fn build(
        items: impl IntoIterator<Item = (EventId, Timestamp)>,
    ) -> Result<LocalItems, NegError> {
        let items = items.into_iter();
        let mut storage = negentropy::NegentropyStorageVector::with_capacity(items.size_hint().0);
        for (id, at) in items {
            storage
                .insert(at.as_secs(), negentropy::Id::from_byte_array(id.to_bytes()))
                .map_err(protocol)?;
        }
        storage.seal().map_err(protocol)?;
        Ok(LocalItems(Arc::new(storage)))
    }

    /// Distinct items held.
    pub fn len(&self) -> usize {
        self.0.size().unwrap_or(0)
    }

    /// Whether it holds no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items as `(id, created_at)`, in negentropy order (time, then id).
    pub fn to_vec(&self) -> Vec<(EventId, Timestamp)> {
        let mut out = Vec::with_capacity(self.len());
        // Iterating a sealed vector within its bounds cannot fail.
        let _ = self.0.iterate(0, self.len(), &mut |item, _| {
            out.push((
                EventId::from_byte_array(*item.id.as_bytes()),
                Timestamp::from_secs(item.timestamp),
            ));
            Ok(true)
        });
        out
    }
}

impl NegentropyStorageBase for LocalItems {
    fn size(&self) -> Result<usize, negentropy::Error> {
        self.0.size()
    }

    fn get_item(&self, i: usize) -> Result<Option<negentropy::Item>, negentropy::Error> {
        self.0.get_item(i)
    }

    fn iterate(
        &self,
        begin: usize,
        end: usize,
        cb: &mut dyn FnMut(negentropy::Item, usize) -> Result<bool, negentropy::Error>,
    ) -> Result<(), negentropy::Error> {
        self.0.iterate(begin, end, cb)
    }

    fn find_lower_bound(&self, first: usize, last: usize, value: &negentropy::Bound) -> usize {
        self.0.find_lower_bound(first, last, value)
    }

    // `fingerprint` is the trait's default, as for the vector.
}

/// The initiator's side of one session.
pub struct Reconciler {
    neg: negentropy::Negentropy<'static, LocalItems>,
    need: Vec<EventId>,
    /// Whether any NEG-MSG arrived (a relay without NIP-77 never answers).
    pub replied: bool,
    /// Bytes exchanged, both directions.
    pub bytes: u64,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("need", &self.need.len())
            .finish()
    }
}

fn protocol(e: negentropy::Error) -> NegError {
    NegError::Protocol(e.to_string())
}

impl Reconciler {
    /// Starts from our relay's items and returns the initial message (hex) for NEG-OPEN.
    pub fn start(local: LocalItems) -> Result<(Reconciler, String), NegError> {
        let mut neg = negentropy::Negentropy::owned(local, FRAME_LIMIT).map_err(protocol)?;
        let init = hex::encode(neg.initiate().map_err(protocol)?);
        let bytes = init.len() as u64;
        Ok((
            Reconciler {
                neg,
                need: Vec::new(),
                replied: false,
                bytes,
            },
            init,
        ))
    }

    /// Consumes a NEG-MSG.
    pub fn on_message(&mut self, hex_msg: &str) -> Result<NegStep, NegError> {
        self.replied = true;
        self.bytes += hex_msg.len() as u64;
        let query = hex::decode(hex_msg).map_err(|_| NegError::NotHex)?;
        let mut have = Vec::new();
        let mut need = Vec::new();
        let next = self
            .neg
            .reconcile_with_ids(&query, &mut have, &mut need)
            .map_err(protocol)?;
        self.need.extend(
            need.into_iter()
                .map(|id| EventId::from_byte_array(id.to_bytes())),
        );
        Ok(match next {
            Some(msg) => {
                let text = hex::encode(msg);
                self.bytes += text.len() as u64;
                NegStep::Send(text)
            }
            None => NegStep::Finished,
        })
    }

    /// The ids our relay lacks, de-duplicated, to be downloaded in REQs of `per_req` filters of
    /// at most `per_filter` ids each.
    pub fn into_fetch(self, per_filter: usize, per_req: usize) -> Fetch {
        let mut seen = HashSet::new();
        let ids: Vec<EventId> = self
            .need
            .into_iter()
            .filter(|id| seen.insert(*id))
            .collect();
        Fetch::new(ids, per_filter, per_req)
    }
}

/// Downloading the missing ids, one REQ at a time. A REQ carries several filters of ids (all
/// within one subscription, so the relay's subscription budget is untouched): fewer round
/// trips, and fewer passes over the store for a relay that scans per filter.
#[derive(Debug, Clone)]
pub struct Fetch {
    queue: VecDeque<EventId>,
    awaiting: HashSet<EventId>,
    /// The filters of the REQ in flight (arrivals are matched against them).
    current: Vec<Filter>,
    retried: bool,
    per_filter: usize,
    per_req: usize,
    /// Ids requested in all.
    pub total: usize,
}

/// What to do after a REQ's EOSE.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchStep {
    /// Request these filters next (one REQ).
    Request(Vec<Filter>),
    /// Every id arrived.
    Done,
    /// Ids still missing after a retry.
    Missing(usize),
}

/// Most ids one download filter carries (relays cap `limit`; ours is the id count).
pub const MAX_FILTER_IDS: usize = 500;

impl Fetch {
    fn new(ids: Vec<EventId>, per_filter: usize, per_req: usize) -> Self {
        Fetch {
            total: ids.len(),
            queue: ids.into(),
            awaiting: HashSet::new(),
            current: Vec::new(),
            retried: false,
            per_filter: per_filter.clamp(1, MAX_FILTER_IDS),
            per_req: per_req.max(1),
        }
    }

    fn filters(&self, ids: &[EventId]) -> Vec<Filter> {
        ids.chunks(self.per_filter)
            .map(|c| Filter::new().ids(c.iter().copied()).limit(c.len()))
            .collect()
    }

    /// The first request, or `Done` when nothing is missing.
    pub fn begin(&mut self) -> FetchStep {
        self.next_req()
    }

    fn request(&mut self, ids: Vec<EventId>) -> FetchStep {
        self.current = self.filters(&ids);
        self.awaiting = ids.into_iter().collect();
        FetchStep::Request(self.current.clone())
    }

    fn next_req(&mut self) -> FetchStep {
        if self.queue.is_empty() {
            self.current.clear();
            return FetchStep::Done;
        }
        let n = self.queue.len().min(self.per_filter * self.per_req);
        let ids: Vec<EventId> = self.queue.drain(..n).collect();
        self.retried = false;
        self.request(ids)
    }

    /// The filters of the REQ in flight (for matching arrivals).
    pub fn current_filters(&self) -> &[Filter] {
        &self.current
    }

    /// An event with this id arrived on the REQ's subscription; true if it was still awaited.
    pub fn arrived(&mut self, id: &EventId) -> bool {
        self.awaiting.remove(id)
    }

    /// The REQ's EOSE: ask again once for stragglers, then move on.
    pub fn on_eose(&mut self) -> FetchStep {
        if self.awaiting.is_empty() {
            return self.next_req();
        }
        if !self.retried {
            self.retried = true;
            let ids: Vec<EventId> = self.awaiting.iter().copied().collect();
            return self.request(ids);
        }
        FetchStep::Missing(self.awaiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> EventId {
        EventId::from_byte_array([n; 32])
    }

    /// Runs the responder side with the real library to check the initiator end to end.
    fn reconcile(local: &[(EventId, Timestamp)], remote: &[(EventId, Timestamp)]) -> Vec<EventId> {
        let mut storage = negentropy::NegentropyStorageVector::new();
        for (i, t) in remote {
            storage
                .insert(t.as_secs(), negentropy::Id::from_byte_array(i.to_bytes()))
                .expect("insert");
        }
        storage.seal().expect("seal");
        let mut server = negentropy::Negentropy::owned(storage, 0).expect("server");
        let local = LocalItems::build(local.iter().copied()).expect("local items");
        let (mut client, init) = Reconciler::start(local).expect("start");
        let mut msg = init;
        for _ in 0..50 {
            let reply = server
                .reconcile(&hex::decode(&msg).expect("hex"))
                .expect("reconcile");
            match client.on_message(&hex::encode(reply)).expect("step") {
                NegStep::Send(next) => msg = next,
                NegStep::Finished => {
                    let mut f = client.into_fetch(100, 2);
                    let mut ids = Vec::new();
                    let mut step = f.begin();
                    while let FetchStep::Request(filters) = step {
                        assert!(filters.len() <= 2);
                        assert!(filters
                            .iter()
                            .all(|f| f.ids.as_ref().map_or(0, |i| i.len()) <= 100));
                        let chunk: Vec<EventId> = filters
                            .iter()
                            .flat_map(|f| f.ids.iter().flatten().copied())
                            .collect();
                        ids.extend(chunk.iter().copied());
                        for i in &chunk {
                            f.arrived(i);
                        }
                        step = f.on_eose();
                    }
                    assert_eq!(step, FetchStep::Done);
                    return ids;
                }
            }
        }
        panic!("did not finish");
    }

    #[test]
    fn finds_exactly_the_missing_ids() {
        let t = Timestamp::from_secs(1_700_000_000);
        let remote: Vec<_> = (0..250).map(|n| (id(n), t)).collect();
        let local: Vec<_> = remote
            .iter()
            .copied()
            .filter(|(i, _)| i.as_bytes()[0] % 5 != 0)
            .collect();
        let mut missing = reconcile(&local, &remote);
        missing.sort();
        let mut want: Vec<_> = (0..250).filter(|n| n % 5 == 0).map(id).collect();
        want.sort();
        assert_eq!(missing, want);
    }

    #[test]
    fn fetch_retries_once_then_reports_missing() {
        let mut f = Fetch::new((0..150).map(id).collect(), 60, 2);
        let FetchStep::Request(first) = f.begin() else {
            panic!("request")
        };
        let sizes: Vec<usize> = first
            .iter()
            .map(|f| f.ids.as_ref().map_or(0, |s| s.len()))
            .collect();
        assert_eq!(sizes, vec![60, 60]);
        for n in 0..119 {
            assert!(f.arrived(&id(n)));
        }
        assert!(!f.arrived(&id(140)), "not in this REQ");
        let FetchStep::Request(retry) = f.on_eose() else {
            panic!("retry")
        };
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].ids.as_ref().map(|s| s.len()), Some(1));
        assert_eq!(f.on_eose(), FetchStep::Missing(1));
    }

    #[test]
    fn not_hex_is_an_error() {
        let (mut r, _) =
            Reconciler::start(LocalItems::build([]).expect("empty set")).expect("start");
        assert_eq!(r.on_message("zz"), Err(NegError::NotHex));
    }
}
