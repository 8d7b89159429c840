//! Filter building for the three layers, and packing filters into REQs within a budget.
//!
//! - L1: kinds 30617 and 30618, global.
//! - L2: per chunk of repo refs, one filter each for `#a`, `#A` and `#q`.
//! - L3: per chunk of root event ids, one filter each for `#e`, `#E` and `#q`.
//!
//! L2 and L3 filters carry no kinds: anything that tags a repo or root is wanted.

use super::nip34::{KIND_REPO_ANNOUNCEMENT, KIND_REPO_STATE};
use nostr::{Alphabet, Filter, Kind, SingleLetterTag, Timestamp};

/// Which tag a layer-2/3 filter matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TagVariant {
    /// `#a` (L2) or `#e` (L3).
    Lower,
    /// `#A` (L2) or `#E` (L3), NIP-22 root scope.
    Upper,
    /// `#q`, quotes.
    Quote,
}

/// All three variants, in emission order.
pub const TAG_VARIANTS: [TagVariant; 3] = [TagVariant::Lower, TagVariant::Upper, TagVariant::Quote];

fn tag_for(layer_letter: Alphabet, variant: TagVariant) -> SingleLetterTag {
    match variant {
        TagVariant::Lower => SingleLetterTag::lowercase(layer_letter),
        TagVariant::Upper => SingleLetterTag::uppercase(layer_letter),
        TagVariant::Quote => SingleLetterTag::lowercase(Alphabet::Q),
    }
}

/// L1: announcements and repo state, optionally since a time.
pub fn build_announcement_filter(since: Option<Timestamp>) -> Filter {
    let f = Filter::new().kinds([
        Kind::Custom(KIND_REPO_ANNOUNCEMENT),
        Kind::Custom(KIND_REPO_STATE),
    ]);
    match since {
        Some(s) => f.since(s),
        None => f,
    }
}

fn tag_filter<S: AsRef<str>>(
    letter: Alphabet,
    variant: TagVariant,
    values: &[S],
    since: Option<Timestamp>,
) -> Filter {
    let f = Filter::new().custom_tags(
        tag_for(letter, variant),
        values.iter().map(|v| v.as_ref().to_string()),
    );
    match since {
        Some(s) => f.since(s),
        None => f,
    }
}

/// L2 filters for one chunk of repo refs, restricted to `variants`.
pub fn repo_chunk_filters<S: AsRef<str>>(
    refs: &[S],
    variants: &[TagVariant],
    since: Option<Timestamp>,
) -> Vec<Filter> {
    variants
        .iter()
        .map(|v| tag_filter(Alphabet::A, *v, refs, since))
        .collect()
}

/// L3 filters for one chunk of root event ids (hex), restricted to `variants`.
pub fn root_chunk_filters<S: AsRef<str>>(
    ids: &[S],
    variants: &[TagVariant],
    since: Option<Timestamp>,
) -> Vec<Filter> {
    variants
        .iter()
        .map(|v| tag_filter(Alphabet::E, *v, ids, since))
        .collect()
}

/// L2: `#a`, `#A`, `#q` per chunk of at most `chunk` repo refs.
pub fn build_repo_tag_filters<S: AsRef<str>>(
    refs: &[S],
    chunk: usize,
    since: Option<Timestamp>,
) -> Vec<Filter> {
    refs.chunks(chunk.max(1))
        .flat_map(|c| repo_chunk_filters(c, &TAG_VARIANTS, since))
        .collect()
}

/// L3: `#e`, `#E`, `#q` per chunk of at most `chunk` root event ids (hex).
pub fn build_root_event_tag_filters<S: AsRef<str>>(
    ids: &[S],
    chunk: usize,
    since: Option<Timestamp>,
) -> Vec<Filter> {
    ids.chunks(chunk.max(1))
        .flat_map(|c| root_chunk_filters(c, &TAG_VARIANTS, since))
        .collect()
}

/// L2 followed by L3.
pub fn build_layer2_and_layer3_filters<R: AsRef<str>, E: AsRef<str>>(
    refs: &[R],
    root_ids: &[E],
    chunk: usize,
    since: Option<Timestamp>,
) -> Vec<Filter> {
    let mut out = build_repo_tag_filters(refs, chunk, since);
    out.extend(build_root_event_tag_filters(root_ids, chunk, since));
    out
}

/// The same filters with `limit: 0`: live only, no stored events.
pub fn as_live(filters: Vec<Filter>) -> Vec<Filter> {
    filters.into_iter().map(|f| f.limit(0)).collect()
}

/// Packs filters into REQs of at most `max_filters` each: the fewest REQs possible.
pub fn pack_filters(filters: Vec<Filter>, max_filters: usize) -> Vec<Vec<Filter>> {
    let max = max_filters.max(1);
    let mut out: Vec<Vec<Filter>> = Vec::with_capacity(filters.len().div_ceil(max));
    for f in filters {
        match out.last_mut() {
            Some(req) if req.len() < max => req.push(f),
            _ => out.push(vec![f]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer1_is_announcements_and_state() {
        let f = build_announcement_filter(None);
        let kinds: Vec<u16> = f.kinds.expect("kinds").iter().map(|k| k.as_u16()).collect();
        assert_eq!(kinds, [30617, 30618]);
        assert_eq!(
            build_announcement_filter(Some(Timestamp::from_secs(9))).since,
            Some(Timestamp::from_secs(9))
        );
    }

    #[test]
    fn layer2_and_3_use_three_tags_per_chunk_and_no_kinds() {
        let refs: Vec<String> = (0..250)
            .map(|i| format!("30617:{}:r{i}", "a".repeat(64)))
            .collect();
        let l2 = build_repo_tag_filters(&refs, 100, None);
        assert_eq!(l2.len(), 9);
        let json = serde_json::to_string(&l2[..3]).expect("json");
        assert!(json.contains("\"#a\"") && json.contains("\"#A\"") && json.contains("\"#q\""));
        assert!(l2.iter().all(|f| f.kinds.is_none()));
        let ids = vec!["b".repeat(64)];
        let l3 = build_root_event_tag_filters(&ids, 100, Some(Timestamp::from_secs(5)));
        let json = serde_json::to_string(&l3).expect("json");
        assert!(json.contains("\"#e\"") && json.contains("\"#E\"") && json.contains("\"#q\""));
        assert!(l3.iter().all(|f| f.since == Some(Timestamp::from_secs(5))));
    }

    #[test]
    fn live_filters_have_limit_zero() {
        let live = as_live(build_repo_tag_filters(&["x"], 100, None));
        assert!(live.iter().all(|f| f.limit == Some(0)));
    }

    #[test]
    fn packing_uses_the_fewest_reqs() {
        let filters = build_repo_tag_filters(
            &(0..1000).map(|i| i.to_string()).collect::<Vec<_>>(),
            100,
            None,
        );
        let packed = pack_filters(filters, 7);
        assert_eq!(packed.len(), 30usize.div_ceil(7));
        assert!(packed.iter().all(|r| r.len() <= 7));
    }
}
