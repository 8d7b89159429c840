//! Backwards pagination of a REQ historic sync, for relays without NIP-77.
//!
//! Each page asks for `limit` events `until` a timestamp. The cursor counts every event the
//! relay sent (not only the ones our relay accepted, an upstream defect), copes with runs of
//! events sharing one `created_at`, and always ends: every step strictly lowers `until`, and a
//! page budget bounds the whole walk.

use nostr::{Filter, Timestamp};

/// What the shell saw for one filter of a historic page, counted at EOSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageReport {
    /// Every event received for this filter on this page, valid or not.
    pub received: u32,
    /// The oldest `created_at` among them.
    pub oldest: Option<Timestamp>,
}

/// The next move of a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageStep {
    /// The walk is complete.
    Done,
    /// Request this filter next.
    Next(Filter),
}

/// Walks one filter backwards from now (or from its own `until`) to its `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    base: Filter,
    until: Option<Timestamp>,
    page_limit: u32,
    pages: u32,
    max_pages: u32,
    truncated_runs: u32,
    received_total: u64,
}

impl PageCursor {
    /// A cursor over `base` (its `until` is the starting point; its `limit` is replaced).
    pub fn new(base: Filter, page_limit: u32, max_pages: u32) -> Self {
        let until = base.until;
        PageCursor {
            base,
            until,
            page_limit: page_limit.max(1),
            pages: 0,
            max_pages: max_pages.max(1),
            truncated_runs: 0,
            received_total: 0,
        }
    }

    /// The filter of the current page.
    pub fn current(&self) -> Filter {
        let mut f = self.base.clone().limit(self.page_limit as usize);
        f.until = self.until;
        f
    }

    /// Runs of equal `created_at` longer than a page: their excess cannot be reached by REQ.
    pub fn truncated_runs(&self) -> u32 {
        self.truncated_runs
    }

    /// Pages completed so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Events counted over all pages.
    pub fn received_total(&self) -> u64 {
        self.received_total
    }

    /// Consumes the report of the current page and plans the next one.
    ///
    /// The walk ends only on an empty page (a short page is not trusted, since a relay may cap
    /// `limit` below what we asked), at `since`, or at the page budget.
    pub fn advance(&mut self, report: PageReport) -> PageStep {
        self.pages += 1;
        self.received_total += u64::from(report.received);
        let Some(oldest) = report.oldest.filter(|_| report.received > 0) else {
            return PageStep::Done;
        };
        let next_until = match self.until {
            // Inclusive `until`: re-asking from `oldest` re-fetches its run; dedup absorbs it.
            Some(u) if oldest < u => oldest,
            Some(u) => {
                // Nothing older than the boundary came back: either the run at `u` fills the
                // page (count it as truncated) or it is all there is at `u`. Step past it.
                if report.received >= self.page_limit {
                    self.truncated_runs += 1;
                }
                match u.as_secs().checked_sub(1) {
                    Some(s) => Timestamp::from_secs(s),
                    None => return PageStep::Done,
                }
            }
            None => oldest,
        };
        if self.base.since.is_some_and(|since| next_until < since) || self.pages >= self.max_pages {
            return PageStep::Done;
        }
        self.until = Some(next_until);
        PageStep::Next(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves a page like a NIP-01 relay: newest first, ties by lowest id, at most `cap`.
    fn serve(events: &[(u64, u32)], f: &Filter, cap: u32) -> PageReport {
        let mut matching: Vec<&(u64, u32)> = events
            .iter()
            .filter(|(ts, _)| f.until.is_none_or(|u| *ts <= u.as_secs()))
            .filter(|(ts, _)| f.since.is_none_or(|s| *ts >= s.as_secs()))
            .collect();
        matching.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let n = matching
            .len()
            .min(f.limit.unwrap_or(usize::MAX))
            .min(cap as usize);
        PageReport {
            received: n as u32,
            oldest: matching[..n].last().map(|e| Timestamp::from_secs(e.0)),
        }
    }

    fn walk(events: &[(u64, u32)], limit: u32, cap: u32) -> (PageCursor, Vec<Filter>) {
        let mut c = PageCursor::new(Filter::new(), limit, 10_000);
        let mut asked = vec![c.current()];
        loop {
            let report = serve(events, asked.last().expect("page"), cap);
            match c.advance(report) {
                PageStep::Done => return (c, asked),
                PageStep::Next(f) => asked.push(f),
            }
        }
    }

    #[test]
    fn walks_past_a_relay_cap_below_our_limit() {
        let events: Vec<(u64, u32)> = (0..1000).map(|i| (1000 + i as u64, i)).collect();
        let (c, asked) = walk(&events, 500, 100);
        // Every timestamp below the first page was asked for: nothing skipped.
        let lowest = asked.iter().filter_map(|f| f.until).min().expect("paged");
        assert!(lowest.as_secs() <= 1000);
        assert!(c.pages() >= 10);
        assert_eq!(c.truncated_runs(), 0);
    }

    #[test]
    fn equal_timestamp_runs_end_and_are_counted() {
        // 25 events at one second, 5 older ones, page size 10.
        let mut events: Vec<(u64, u32)> = (0..25).map(|i| (100, i)).collect();
        events.extend((0..5).map(|i| (50, 100 + i)));
        let (c, asked) = walk(&events, 10, 10);
        assert_eq!(c.truncated_runs(), 1);
        assert!(asked
            .iter()
            .any(|f| f.until == Some(Timestamp::from_secs(50))));
        assert!(asked.len() < 10);
    }

    #[test]
    fn stops_at_since_and_at_zero() {
        let events: Vec<(u64, u32)> = (0..50).map(|i| (i as u64, i)).collect();
        let mut c = PageCursor::new(Filter::new().since(Timestamp::from_secs(40)), 5, 100);
        let mut f = c.current();
        let mut steps = 0;
        while let PageStep::Next(next) = c.advance(serve(&events, &f, 5)) {
            f = next;
            steps += 1;
            assert!(steps < 100);
        }
        assert!(f.until.is_none_or(|u| u.as_secs() >= 40));
        let (c, _) = walk(&[(0, 1), (0, 2)], 1, 1);
        assert!(c.pages() <= 3);
    }

    #[test]
    fn page_budget_bounds_the_walk() {
        let mut c = PageCursor::new(Filter::new(), 1, 3);
        let mut n = 0;
        let mut until = 1_000_000u64;
        while let PageStep::Next(_) = c.advance(PageReport {
            received: 1,
            oldest: Some(Timestamp::from_secs(until)),
        }) {
            until -= 1;
            n += 1;
        }
        assert_eq!(n, 2);
    }
}
