//! What the consumer knows about one partition: its checkpoint, its event-time watermark and the
//! event_ids it saw recently. Pure and synchronous, so the rules are unit-tested here.
//!
//! The watermark is the highest event_time seen minus the allowed lateness; it only moves forward.
//! An event older than it is late. The watermark also bounds dedup memory: an id older than the
//! watermark can only come back as a late duplicate, which the primary key catches anyway.

use chrono::{DateTime, TimeDelta, Utc};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// A message of the partition's log this consumer stands on, by offset and hash, checked now and
/// then to be still there: a topic deleted and made again under a running consumer, and longer
/// than where it stood, is told by nothing else (no error, no rebalance, no reset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub offset: i64,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct PartitionState {
    /// First offset not yet covered by a Postgres commit; `None` when nothing was ever written.
    pub next_offset: Option<i64>,
    pub max_event_time: Option<DateTime<Utc>>,
    /// Fingerprints of recent ids (64-bit foldhash, seeded at random per process, so nobody who
    /// writes files can aim at them) with their event times in microseconds: 16 bytes an id, no
    /// allocation. Two ids sharing a fingerprint cost nothing but a question: the database
    /// confirms every id this window flags before a row is counted a duplicate.
    recent: HashMap<u64, i64, foldhash::fast::RandomState>,
    fingerprint: foldhash::fast::RandomState,
    capacity: usize,
    /// The message last checked to be in the log, and when.
    anchor: Option<(Anchor, Instant)>,
    /// The last message written (the checkpoint's), the next anchor once the current one holds.
    latest: Option<Anchor>,
}

impl PartitionState {
    pub fn new(
        next_offset: Option<i64>,
        max_event_time: Option<DateTime<Utc>>,
        capacity: usize,
    ) -> Self {
        PartitionState {
            next_offset,
            max_event_time,
            recent: HashMap::default(),
            fingerprint: foldhash::fast::RandomState::default(),
            capacity: capacity.max(1),
            anchor: None,
            latest: None,
        }
    }

    /// The checkpoint's last message (written, or loaded and checked against the log): the
    /// anchor where there is none yet, the next one otherwise.
    pub fn wrote(&mut self, last: Anchor) {
        if self.anchor.is_none() {
            self.anchor = Some((last.clone(), Instant::now()));
        }
        self.latest = Some(last);
    }

    /// The anchor to check now, if it was last checked `every` ago or more (it counts as checked
    /// from now, whatever the check finds).
    pub fn anchor_due(&mut self, every: Duration) -> Option<Anchor> {
        let (anchor, checked) = self.anchor.as_mut()?;
        if checked.elapsed() < every {
            return None;
        }
        *checked = Instant::now();
        Some(anchor.clone())
    }

    /// The anchor was found in the log: the last message written, before the check, is in the
    /// same log, and becomes the anchor.
    pub fn anchor_held(&mut self) {
        if let (Some((anchor, _)), Some(latest)) = (self.anchor.as_mut(), self.latest.as_ref()) {
            *anchor = latest.clone();
        }
    }

    /// Whether the message at `offset` is already in Postgres (a replay).
    pub fn already_written(&self, offset: i64) -> bool {
        self.next_offset.is_some_and(|next| offset < next)
    }

    pub fn watermark(&self, lateness: TimeDelta) -> Option<DateTime<Utc>> {
        self.max_event_time.map(|max| {
            max.checked_sub_signed(lateness)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        })
    }

    /// Classifies `event_time` against the watermark as it stood, then moves the watermark.
    pub fn observe(&mut self, event_time: DateTime<Utc>, lateness: TimeDelta) -> bool {
        let late = self
            .watermark(lateness)
            .is_some_and(|watermark| event_time < watermark);
        if self.max_event_time.is_none_or(|max| event_time > max) {
            self.max_event_time = Some(event_time);
        }
        late
    }

    /// Remembers `event_id`; returns true when it was seen recently (a duplicate).
    pub fn seen_before(
        &mut self,
        event_id: &str,
        event_time: DateTime<Utc>,
        lateness: TimeDelta,
    ) -> bool {
        let fingerprint = self.fingerprint.hash_one(event_id);
        if self.recent.contains_key(&fingerprint) {
            return true;
        }
        if self.recent.len() >= self.capacity {
            self.evict(lateness);
        }
        self.recent
            .insert(fingerprint, event_time.timestamp_micros());
        false
    }

    pub fn remembered(&self) -> usize {
        self.recent.len()
    }

    fn evict(&mut self, lateness: TimeDelta) {
        if let Some(watermark) = self.watermark(lateness) {
            let watermark = watermark.timestamp_micros();
            self.recent.retain(|_, time| *time >= watermark);
        }
        // Still full of recent ids (a burst within the lateness window): forget half, oldest first.
        // Safe: the primary key, not this set, is the final authority.
        if self.recent.len() >= self.capacity {
            let mut times: Vec<i64> = self.recent.values().copied().collect();
            let middle = times.len() / 2;
            let (_, cut, _) = times.select_nth_unstable(middle);
            let cut = *cut;
            self.recent.retain(|_, time| *time > cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, minute, 0).unwrap()
    }

    const TEN_MINUTES: TimeDelta = TimeDelta::minutes(10);

    #[test]
    fn late_means_older_than_the_highest_time_minus_lateness() {
        let mut state = PartitionState::new(None, None, 10);
        assert!(!state.observe(at(30), TEN_MINUTES));
        assert_eq!(state.watermark(TEN_MINUTES), Some(at(20)));
        assert!(
            !state.observe(at(20), TEN_MINUTES),
            "exactly at the watermark is on time"
        );
        assert!(state.observe(at(19), TEN_MINUTES));
        // An old event never moves the watermark back.
        assert_eq!(state.watermark(TEN_MINUTES), Some(at(20)));
        assert!(!state.observe(at(45), TEN_MINUTES));
        assert!(state.observe(at(30), TEN_MINUTES));
    }

    #[test]
    fn a_restored_watermark_classifies_like_the_first_pass() {
        let mut first = PartitionState::new(None, None, 10);
        first.observe(at(40), TEN_MINUTES);
        let mut restored = PartitionState::new(Some(5), first.max_event_time, 10);
        assert_eq!(
            first.observe(at(25), TEN_MINUTES),
            restored.observe(at(25), TEN_MINUTES)
        );
        assert!(restored.already_written(4));
        assert!(!restored.already_written(5));
    }

    #[test]
    fn duplicates_are_caught_and_memory_stays_bounded() {
        let mut state = PartitionState::new(None, None, 100);
        for i in 0..1_000 {
            let time = at(0) + TimeDelta::seconds(i);
            state.observe(time, TEN_MINUTES);
            assert!(!state.seen_before(&format!("id-{i}"), time, TEN_MINUTES));
            assert!(state.seen_before(&format!("id-{i}"), time, TEN_MINUTES));
            assert!(state.remembered() <= 100);
        }
    }

    #[test]
    fn eviction_drops_ids_older_than_the_watermark_first() {
        let mut state = PartitionState::new(None, None, 3);
        state.seen_before("old", at(0), TEN_MINUTES);
        state.seen_before("a", at(30), TEN_MINUTES);
        state.seen_before("b", at(31), TEN_MINUTES);
        state.observe(at(35), TEN_MINUTES);
        state.seen_before("c", at(32), TEN_MINUTES);
        assert!(state.seen_before("a", at(30), TEN_MINUTES));
        assert!(state.seen_before("b", at(31), TEN_MINUTES));
        assert!(!state.seen_before("old", at(0), TEN_MINUTES));
    }

    #[test]
    fn the_anchor_is_checked_when_due_and_moves_on_only_once_it_held() {
        let mut state = PartitionState::new(Some(10), None, 8);
        let at = |offset: i64| Anchor {
            offset,
            hash: format!("h{offset}"),
        };
        assert_eq!(state.anchor_due(Duration::ZERO), None, "nothing written");
        state.wrote(at(9));
        state.wrote(at(19));
        assert_eq!(state.anchor_due(Duration::from_secs(60)), None, "not due");
        assert_eq!(state.anchor_due(Duration::ZERO), Some(at(9)));
        // Not found held (a broker that did not answer): the same anchor next time.
        assert_eq!(state.anchor_due(Duration::ZERO), Some(at(9)));
        state.anchor_held();
        state.wrote(at(29));
        assert_eq!(state.anchor_due(Duration::ZERO), Some(at(19)));
    }
}
