//! Fresh barrage only: the relay's clock as this client sees it, the age rule, and the
//! datagram buffer it implies. Pure state with injected times (unit-tested below).

use std::collections::VecDeque;
use std::time::Duration;

use crate::protocol::MAX_DATAGRAM_BUDGET;
use crate::transport::DATAGRAM_RECEIVE_BUFFER;

/// Default for [`super::ClientConfig::barrage_max_age`]: as long as barrage is held for its
/// sender's name ([`super::Event::Barrages`]); a live comment older than that is no longer
/// live.
pub const DEFAULT_BARRAGE_MAX_AGE: Duration = Duration::from_millis(500);

/// One bucket of the windowed minimum of [`RelayClock`].
const BUCKET_MS: u64 = 10_000;
/// Buckets [`RelayClock`] keeps: its minimum covers the last 50 to 60 s.
const BUCKETS: u64 = 6;

/// The most barrage a connection receives per second at the relay's default limits, to size
/// the datagram buffer: 20 messages per second in each of at most 5 rooms, each datagram at
/// most [`MAX_DATAGRAM_BUDGET`] bytes (115 kB/s).
const BARRAGE_BYTES_PER_SECOND: u64 = 20 * 5 * MAX_DATAGRAM_BUDGET as u64;
/// The smallest datagram buffer: a burst of 16 full-size barrage datagrams, with the
/// bookkeeping quinn counts for each (32 bytes; quinn closes the connection on a datagram
/// larger than the whole buffer).
const MIN_DATAGRAM_BUFFER: usize = 16 * (MAX_DATAGRAM_BUDGET + 64);
/// The largest datagram buffer (a max age of about 9 s or more).
const MAX_DATAGRAM_BUFFER: usize = 1024 * 1024;

/// The offset of the relay's clock from this client's, estimated from the relay's
/// timestamps.
///
/// Every barrage carries `sent_at_ms`, the relay's clock when it accepted the message. When
/// the datagram is read, `local − sent_at_ms` is a sample, where `local` is this client's
/// monotonic clock in milliseconds (unaffected by changes of the system time): it is the
/// offset between the two clocks plus the message's delay on the way. The smallest recent
/// sample is the offset plus the smallest delay, so the age it gives a message, `local_now −
/// sent_at_ms − offset`, is how much longer than the fastest recent message it has been on
/// its way: the time it spent in queues and buffers, which is what the age rule is about. It
/// needs no synchronised clocks, and it underestimates the true age by the smallest one-way
/// delay (well under a millisecond on a LAN, tens of milliseconds across continents).
///
/// "Recent" is a sliding window of about a minute (six buckets of 10 s): long enough that the
/// late messages a stalled client reads all at once do not raise the minimum, short enough
/// that a drift of the relay's clock against this one (NTP slews a clock by at most 0.5 ms/s)
/// is followed. A relay clock that steps forward is followed at once; one that steps back by
/// more than the max age makes barrage look too old (and dropped) for up to a minute. Each
/// connection starts a new estimate ([`RelayClock::reset`]): another relay has another clock.
#[derive(Debug, Default)]
pub(crate) struct RelayClock {
    /// The smallest sample of each recent bucket (bucket number, sample), oldest first.
    buckets: VecDeque<(u64, i64)>,
}

impl RelayClock {
    /// Takes the sample of a barrage sent at `sent_at_ms` (relay clock) and read at
    /// `local_ms` (this client's clock).
    pub(crate) fn sample(&mut self, local_ms: u64, sent_at_ms: u64) {
        let sample = difference(local_ms, sent_at_ms);
        let bucket = local_ms / BUCKET_MS;
        match self.buckets.back_mut() {
            Some((last, smallest)) if *last == bucket => *smallest = (*smallest).min(sample),
            _ => self.buckets.push_back((bucket, sample)),
        }
        while self.buckets.front().is_some_and(|(oldest, _)| oldest + BUCKETS <= bucket) {
            self.buckets.pop_front();
        }
    }

    /// The estimated offset (this client's clock minus the relay's, plus the smallest
    /// recent delay), in milliseconds; `None` before the first sample.
    pub(crate) fn offset(&self) -> Option<i64> {
        self.buckets.iter().map(|(_, sample)| *sample).min()
    }

    /// How old a barrage sent at `sent_at_ms` is at `local_ms`, by the estimate; `None`
    /// before the first sample.
    pub(crate) fn age(&self, local_ms: u64, sent_at_ms: u64) -> Option<Duration> {
        let offset = self.offset()?;
        let age = difference(local_ms, sent_at_ms).saturating_sub(offset);
        Some(Duration::from_millis(u64::try_from(age).unwrap_or(0)))
    }

    /// Whether a barrage sent at `sent_at_ms` is older than `max_age` at `local_ms`. Without
    /// any sample (the connection's first barrage is sampled before it is judged) nothing is.
    pub(crate) fn is_stale(&self, max_age: Duration, local_ms: u64, sent_at_ms: u64) -> bool {
        self.age(local_ms, sent_at_ms).is_some_and(|age| age > max_age)
    }

    /// Forgets every sample (a new connection, maybe to another relay).
    pub(crate) fn reset(&mut self) {
        self.buckets.clear();
    }
}

/// `local_ms − sent_at_ms`, saturating (a hostile relay may send any `sent_at_ms`).
fn difference(local_ms: u64, sent_at_ms: u64) -> i64 {
    let local = i64::try_from(local_ms).unwrap_or(i64::MAX);
    let sent = i64::try_from(sent_at_ms).unwrap_or(i64::MAX);
    local.saturating_sub(sent)
}

/// The datagram receive buffer for barrage up to `max_age` old: what the relay's default
/// limits let arrive in that time ([`BARRAGE_BYTES_PER_SECOND`]), at least
/// [`MIN_DATAGRAM_BUFFER`] and at most [`MAX_DATAGRAM_BUFFER`]; [`DATAGRAM_RECEIVE_BUFFER`]
/// (64 KiB) without an age rule.
/// QUIC drops the oldest datagram when the buffer is full, so what waits there cannot be
/// much older than `max_age` while barrage arrives at that rate; the age rule, applied when
/// the application reads, catches the rest.
pub(crate) fn datagram_buffer(max_age: Option<Duration>) -> usize {
    let Some(max_age) = max_age else { return DATAGRAM_RECEIVE_BUFFER };
    let bytes = max_age.as_millis().saturating_mul(u128::from(BARRAGE_BYTES_PER_SECOND)) / 1000;
    usize::try_from(bytes).unwrap_or(usize::MAX).clamp(MIN_DATAGRAM_BUFFER, MAX_DATAGRAM_BUFFER)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay's clock runs this far ahead of the client's monotonic clock here.
    const AHEAD: u64 = 1_700_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_offset_is_the_smallest_recent_delay() {
        let mut clock = RelayClock::default();
        assert_eq!((clock.offset(), clock.age(1_000, AHEAD)), (None, None));
        // Delays 30, 12, 50 ms: the offset includes the smallest.
        clock.sample(1_030, AHEAD + 1_000);
        clock.sample(2_012, AHEAD + 2_000);
        clock.sample(3_050, AHEAD + 3_000);
        assert_eq!(clock.offset(), Some(12 - AHEAD as i64));
        // Ages are counted beyond that smallest delay.
        assert_eq!(clock.age(3_050, AHEAD + 3_000), Some(ms(38)));
        assert_eq!(clock.age(4_012, AHEAD + 4_000), Some(ms(0)));
        // A message read later than it arrived ages with the client's clock.
        assert_eq!(clock.age(4_612, AHEAD + 4_000), Some(ms(600)));
        // One "from the future" (the smallest delay went down since) is not negative.
        assert_eq!(clock.age(5_000, AHEAD + 5_000), Some(ms(0)));
    }

    #[test]
    fn the_drop_rule_is_strictly_older_than_the_max_age() {
        let mut clock = RelayClock::default();
        clock.sample(1_000, AHEAD + 1_000);
        let max_age = ms(500);
        assert!(!clock.is_stale(max_age, 1_500, AHEAD + 1_000));
        assert!(clock.is_stale(max_age, 1_501, AHEAD + 1_000));
        // Without a sample nothing can be judged: nothing is dropped.
        assert!(!RelayClock::default().is_stale(max_age, 1_000_000, 0));
    }

    #[test]
    fn a_burst_of_late_messages_does_not_raise_the_estimate() {
        let mut clock = RelayClock::default();
        clock.sample(1_005, AHEAD + 1_000);
        // The client stalled for 3 s: what it reads now was sent up to 3 s ago.
        for sent in (1_000..4_000).step_by(100) {
            clock.sample(4_000, AHEAD + sent);
        }
        assert_eq!(clock.offset(), Some(5 - AHEAD as i64));
        assert!(clock.is_stale(ms(500), 4_000, AHEAD + 2_000));
        assert!(!clock.is_stale(ms(500), 4_000, AHEAD + 3_900));
    }

    #[test]
    fn the_window_follows_a_drifting_or_stepping_relay_clock() {
        let mut clock = RelayClock::default();
        clock.sample(0, AHEAD);
        // The relay's clock falls behind by 100 ms (drift, or a step back): samples grow.
        clock.sample(1_000, AHEAD + 900);
        assert_eq!(clock.offset(), Some(-(AHEAD as i64)), "the old minimum still counts");
        // Within a minute the old samples have left the window.
        clock.sample(60_000, AHEAD + 59_900);
        assert_eq!(clock.offset(), Some(100 - AHEAD as i64));
        assert!(!clock.is_stale(ms(50), 60_000, AHEAD + 59_900));
        // A step forward is followed at once.
        clock.sample(61_000, AHEAD + 62_000);
        assert_eq!(clock.offset(), Some(-1_000 - AHEAD as i64));
        clock.reset();
        assert_eq!(clock.offset(), None);
    }

    #[test]
    fn hostile_timestamps_do_not_overflow() {
        let mut clock = RelayClock::default();
        clock.sample(u64::MAX, 0);
        clock.sample(0, u64::MAX);
        assert!(clock.age(u64::MAX, 0).is_some());
        assert!(clock.age(0, u64::MAX).is_some());
    }

    #[test]
    fn the_datagram_buffer_holds_the_max_age_at_the_default_limits() {
        assert_eq!(datagram_buffer(None), 64 * 1024);
        assert_eq!(datagram_buffer(Some(DEFAULT_BARRAGE_MAX_AGE)), 57_500);
        assert_eq!(datagram_buffer(Some(ms(1))), MIN_DATAGRAM_BUFFER);
        assert_eq!(datagram_buffer(Some(Duration::from_secs(3600))), MAX_DATAGRAM_BUFFER);
    }
}
