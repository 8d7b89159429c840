//! `coordination.k8s.io/v1` Lease helpers: the controller's leader election, each worker's own
//! liveness Lease, and the list of live workers.
//!
//! The decisions (is a Lease held, may I take it, who is live) are pure functions of the
//! Lease and `now`, unit-tested here; the API calls around them are thin. Writes to a Lease
//! someone else may hold use `replace` with the `resourceVersion` that was read, so two
//! candidates racing for an expired Lease cannot both win (the loser gets a 409 Conflict).
//!
//! Expiry compares the holder's `renewTime` (its clock) with ours, so it assumes clocks agree
//! to well within the Lease duration (NTP); the defaults are 15 s held, renewed every 5 s.

use super::consts::{LEASE_DURATION, ROLE_LABEL, ROLE_WORKER};
use crate::core::Millis;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

/// A Lease operation failed.
#[derive(Debug, Error)]
pub enum LeaseError {
    /// The API call failed (other than a lost race, which is not an error).
    #[error("lease {name}: {source}")]
    Api {
        /// Lease name.
        name: String,
        /// The client error.
        source: kube::Error,
    },
}

/// The time a [`MicroTime`] names.
pub fn micro_to_millis(t: &MicroTime) -> Millis {
    Millis(u64::try_from(t.0.as_millisecond()).unwrap_or(0))
}

/// A [`MicroTime`] for `now` (the epoch if out of range, which only a broken clock gives).
pub fn millis_to_micro(now: Millis) -> MicroTime {
    let ms = i64::try_from(now.0).unwrap_or(i64::MAX);
    MicroTime(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// When a Lease stops being held: last renewal (or acquisition) plus its duration. `None`
/// when it has no holder or no times (never held, or released).
pub fn expires_at(spec: &LeaseSpec) -> Option<Millis> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let secs = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
    Some(micro_to_millis(last) + Duration::from_secs(secs))
}

/// The holder of a Lease at `now`, if it is held and unexpired.
pub fn holder_at(lease: &Lease, now: Millis) -> Option<&str> {
    let spec = lease.spec.as_ref()?;
    let until = expires_at(spec)?;
    if now < until {
        spec.holder_identity.as_deref()
    } else {
        None
    }
}

/// What a leader-election candidate does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderDecision {
    /// No Lease yet: create it, held by us.
    Create,
    /// Free (released or expired): take it over (a new transition).
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Someone else holds it until then.
    Wait {
        /// The holder.
        holder: String,
        /// When it expires unless renewed.
        until: Millis,
    },
}

/// Decides, from the Lease as read, what `identity` does at `now`.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Millis) -> LeaderDecision {
    let Some(lease) = lease else {
        return LeaderDecision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    match (spec.holder_identity.as_deref(), expires_at(&spec)) {
        (Some(h), Some(_)) if h == identity => LeaderDecision::Renew,
        (Some(h), Some(until)) if now < until => LeaderDecision::Wait {
            holder: h.to_string(),
            until,
        },
        _ => LeaderDecision::Acquire,
    }
}

/// The spec `identity` writes: a fresh acquisition (`acquireTime` = now, one more transition)
/// or a renewal (only `renewTime` moves).
pub fn held_spec(
    previous: Option<&LeaseSpec>,
    identity: &str,
    now: Millis,
    duration: Duration,
    renewal: bool,
) -> LeaseSpec {
    let t = millis_to_micro(now);
    let prev = previous.cloned().unwrap_or_default();
    let transitions = prev.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if renewal {
            prev.acquire_time.clone().or_else(|| Some(t.clone()))
        } else {
            Some(t.clone())
        },
        renew_time: Some(t),
        lease_transitions: Some(if renewal || previous.is_none() {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..prev
    }
}

/// The spec of a released Lease: no holder, so the next candidate acquires at once.
pub fn released_spec(previous: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        ..previous.clone()
    }
}

/// Names of the live workers among `leases`: worker-role Leases held by a holder whose name is
/// the Lease's, unexpired at `now`. Sorted.
pub fn live_workers_at(leases: &[Lease], now: Millis) -> Vec<String> {
    let mut live: Vec<String> = leases
        .iter()
        .filter(|l| {
            l.metadata
                .labels
                .as_ref()
                .and_then(|m| m.get(ROLE_LABEL))
                .is_some_and(|r| r == ROLE_WORKER)
        })
        .filter_map(|l| {
            let name = l.metadata.name.as_deref()?;
            (holder_at(l, now)? == name).then(|| name.to_string())
        })
        .collect();
    live.sort();
    live.dedup();
    live
}

/// When each live worker's Lease expires (for scheduling the next look).
pub fn worker_expiries(leases: &[Lease], now: Millis) -> BTreeMap<String, Millis> {
    leases
        .iter()
        .filter_map(|l| {
            let name = l.metadata.name.clone()?;
            let until = expires_at(l.spec.as_ref()?)?;
            (now < until).then_some((name, until))
        })
        .collect()
}

fn api_err(name: &str) -> impl FnOnce(kube::Error) -> LeaseError + '_ {
    move |source| LeaseError::Api {
        name: name.to_string(),
        source,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether this candidate leads after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderState {
    /// We hold the Lease until then.
    Leading {
        /// Expiry of our hold.
        until: Millis,
    },
    /// Someone else does (or a race was lost this round).
    Following {
        /// The holder, when known.
        holder: Option<String>,
    },
}

/// Leader election on one Lease.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

impl LeaderElector {
    /// A candidate `identity` for Lease `name` (in the namespace of `api`).
    pub fn new(api: Api<Lease>, name: &str, identity: &str) -> Self {
        LeaderElector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration: LEASE_DURATION,
        }
    }

    /// Overrides the Lease duration (default [`LEASE_DURATION`]).
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: create, acquire, renew or wait, as [`decide`] says. A lost race (409, or
    /// the Lease created under us) is `Following`, not an error.
    pub async fn try_acquire_or_renew(&self, now: Millis) -> Result<LeaderState, LeaseError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(api_err(&self.name))?;
        let until = now + self.duration;
        match decide(current.as_ref(), &self.identity, now) {
            LeaderDecision::Wait { holder, .. } => Ok(LeaderState::Following {
                holder: Some(holder),
            }),
            LeaderDecision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(held_spec(None, &self.identity, now, self.duration, false)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(LeaderState::Leading { until }),
                    Err(e) if is_conflict(&e) => Ok(LeaderState::Following { holder: None }),
                    Err(e) => Err(api_err(&self.name)(e)),
                }
            }
            decision @ (LeaderDecision::Acquire | LeaderDecision::Renew) => {
                let Some(mut lease) = current else {
                    return Ok(LeaderState::Following { holder: None });
                };
                let renewal = decision == LeaderDecision::Renew;
                lease.spec = Some(held_spec(
                    lease.spec.as_ref(),
                    &self.identity,
                    now,
                    self.duration,
                    renewal,
                ));
                // `lease` carries the resourceVersion we read: a concurrent writer makes this
                // a 409 instead of two leaders.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(LeaderState::Leading { until }),
                    Err(e) if is_conflict(&e) => Ok(LeaderState::Following { holder: None }),
                    Err(e) => Err(api_err(&self.name)(e)),
                }
            }
        }
    }

    /// Gives the Lease up (on shutdown) if we hold it, so a standby takes over at once.
    pub async fn release(&self) -> Result<(), LeaseError> {
        release_if_held(&self.api, &self.name, &self.identity).await
    }
}

async fn release_if_held(api: &Api<Lease>, name: &str, identity: &str) -> Result<(), LeaseError> {
    let Some(mut lease) = api.get_opt(name).await.map_err(api_err(name))? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_ref() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(());
    }
    lease.spec = Some(released_spec(spec));
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        // Someone else wrote it meanwhile: it is not ours to release any more.
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(api_err(name)(e)),
    }
}

/// A worker's own liveness Lease: named after the worker, labelled
/// `sync.grasp.dev/role=worker`, held by the worker itself. The worker renews it every
/// [`super::consts::LEASE_RENEW_INTERVAL`]; if it cannot renew for a whole
/// [`LEASE_DURATION`], the controller moves its relays, so the worker must close its sessions
/// by then.
#[derive(Clone)]
pub struct WorkerLease {
    api: Api<Lease>,
    name: String,
    duration: Duration,
}

impl std::fmt::Debug for WorkerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLease")
            .field("name", &self.name)
            .finish()
    }
}

/// The worker Lease object for `name` as it is created.
pub fn worker_lease(name: &str, now: Millis, duration: Duration) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                ROLE_LABEL.to_string(),
                ROLE_WORKER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(held_spec(None, name, now, duration, false)),
    }
}

impl WorkerLease {
    /// The Lease of worker `name` (in the namespace of `api`).
    pub fn new(api: Api<Lease>, name: &str) -> Self {
        WorkerLease {
            api,
            name: name.to_string(),
            duration: LEASE_DURATION,
        }
    }

    /// Overrides the Lease duration (default [`LEASE_DURATION`]).
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Creates the Lease, or renews it (taking it back after a release or a restart: the name
    /// is the worker's own). Returns when the hold expires.
    pub async fn renew(&self, now: Millis) -> Result<Millis, LeaseError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(api_err(&self.name))?;
        match current {
            None => {
                let lease = worker_lease(&self.name, now, self.duration);
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {}
                    // Created concurrently (a previous incarnation): the next round renews.
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(api_err(&self.name)(e)),
                }
            }
            Some(mut lease) => {
                let renewal = lease
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.holder_identity.as_deref() == Some(self.name.as_str()))
                    && holder_at(&lease, now).is_some();
                lease.spec = Some(held_spec(
                    lease.spec.as_ref(),
                    &self.name,
                    now,
                    self.duration,
                    renewal,
                ));
                let labels = lease.metadata.labels.get_or_insert_with(BTreeMap::new);
                labels.insert(ROLE_LABEL.to_string(), ROLE_WORKER.to_string());
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(api_err(&self.name)(e)),
                }
            }
        }
        Ok(now + self.duration)
    }

    /// Releases the Lease on shutdown (after closing every session), so the controller moves
    /// this worker's relays at once instead of after expiry.
    pub async fn release(&self) -> Result<(), LeaseError> {
        release_if_held(&self.api, &self.name, &self.name).await
    }
}

/// Lists the worker Leases in the namespace of `api` and returns the live workers at `now`.
pub async fn live_workers(api: &Api<Lease>, now: Millis) -> Result<Vec<String>, LeaseError> {
    let selector = format!("{ROLE_LABEL}={ROLE_WORKER}");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_err("(worker leases)"))?;
    Ok(live_workers_at(&list.items, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = Millis(1_790_000_000_000);

    fn lease(holder: Option<&str>, renewed: Millis, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(secs),
                renew_time: Some(millis_to_micro(renewed)),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn expiry_is_renewal_plus_duration() {
        let l = lease(Some("a"), T0, 15);
        assert_eq!(holder_at(&l, T0), Some("a"));
        assert_eq!(holder_at(&l, T0 + Duration::from_millis(14_999)), Some("a"));
        assert_eq!(holder_at(&l, T0 + Duration::from_secs(15)), None);
        assert_eq!(holder_at(&lease(None, T0, 15), T0), None);
        assert_eq!(holder_at(&lease(Some(""), T0, 15), T0), None);
        let no_times = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("a".into()),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(holder_at(&no_times, T0), None);
    }

    #[test]
    fn leader_decisions() {
        assert_eq!(decide(None, "me", T0), LeaderDecision::Create);
        let mine = lease(Some("me"), T0, 15);
        assert_eq!(decide(Some(&mine), "me", T0), LeaderDecision::Renew);
        let theirs = lease(Some("other"), T0, 15);
        assert_eq!(
            decide(Some(&theirs), "me", T0 + Duration::from_secs(5)),
            LeaderDecision::Wait {
                holder: "other".into(),
                until: T0 + Duration::from_secs(15)
            }
        );
        assert_eq!(
            decide(Some(&theirs), "me", T0 + Duration::from_secs(15)),
            LeaderDecision::Acquire
        );
        let released = Lease {
            spec: Some(released_spec(theirs.spec.as_ref().expect("spec"))),
            ..theirs.clone()
        };
        assert_eq!(decide(Some(&released), "me", T0), LeaderDecision::Acquire);
        // Our own expired Lease (we stalled) is still ours to renew; the resourceVersion check
        // makes a concurrent takeover win or lose cleanly.
        assert_eq!(
            decide(Some(&mine), "me", T0 + Duration::from_secs(60)),
            LeaderDecision::Renew
        );
    }

    #[test]
    fn held_spec_counts_transitions_and_keeps_acquire_time_on_renewal() {
        let first = held_spec(None, "a", T0, LEASE_DURATION, false);
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
        let t1 = T0 + Duration::from_secs(5);
        let renewed = held_spec(Some(&first), "a", t1, LEASE_DURATION, true);
        assert_eq!(renewed.acquire_time, first.acquire_time);
        assert_eq!(renewed.renew_time, Some(millis_to_micro(t1)));
        assert_eq!(renewed.lease_transitions, Some(0));
        let taken = held_spec(Some(&renewed), "b", t1, LEASE_DURATION, false);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(micro_to_millis(&millis_to_micro(T0)), T0);
    }

    #[test]
    fn live_workers_are_unexpired_self_held_worker_leases() {
        let w = |name: &str, holder: Option<&str>, renewed: Millis| {
            let mut l = worker_lease(name, renewed, LEASE_DURATION);
            if let Some(spec) = l.spec.as_mut() {
                spec.holder_identity = holder.map(str::to_string);
            }
            l
        };
        let mut not_worker = w("x", Some("x"), T0);
        not_worker.metadata.labels = None;
        let leases = vec![
            w("w-b", Some("w-b"), T0),
            w("w-a", Some("w-a"), T0),
            w("w-old", Some("w-old"), T0 - Duration::from_secs(20)),
            w("w-released", None, T0),
            w("w-odd", Some("someone-else"), T0),
            not_worker,
        ];
        assert_eq!(live_workers_at(&leases, T0), vec!["w-a", "w-b"]);
        assert_eq!(
            worker_expiries(&leases, T0).get("w-a"),
            Some(&(T0 + LEASE_DURATION))
        );
    }
}
