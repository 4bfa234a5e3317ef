//! A token bucket for frequency limits.

use tokio::time::Instant;

/// Allows `rate` events per second with bursts of up to `max(rate, 1)`; a rate of 0 allows all.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second.
    pub fn new(rate: f64) -> Self {
        Self::with_burst(rate, 1.0)
    }

    /// A full bucket refilling at `rate` per second that holds at least `burst` tokens.
    pub fn with_burst(rate: f64, burst: f64) -> Self {
        let capacity = rate.max(burst).max(1.0);
        Self { rate, capacity, tokens: capacity, last: Instant::now() }
    }

    /// Whether the bucket is full again (or unlimited): it then behaves as a new one, so a
    /// holder may forget it.
    pub fn is_full(&mut self) -> bool {
        self.ready();
        self.rate <= 0.0 || self.tokens >= self.capacity
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        let ready = self.ready();
        if ready {
            self.take();
        }
        ready
    }

    /// Whether a token is available now (without taking it).
    pub fn ready(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.last = now;
        self.tokens >= 1.0
    }

    /// Takes a token that [`TokenBucket::ready`] said was there (or, for an event another
    /// cluster node let through, one that may not be: the bucket then owes at most one
    /// burst, and refills from there).
    pub fn take(&mut self) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens - 1.0).max(-self.capacity);
        }
    }

    /// How many tokens can be taken now (`usize::MAX` when unlimited).
    pub fn available(&mut self) -> usize {
        if self.rate <= 0.0 {
            return usize::MAX;
        }
        self.ready();
        self.tokens.max(0.0) as usize
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_burst_then_refills_at_rate() {
        let mut bucket = TokenBucket::new(2.0);
        assert!(bucket.try_take());
        assert!(bucket.try_take());
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.try_take());
        assert!(!bucket.try_take());
    }

    #[tokio::test(start_paused = true)]
    async fn ready_does_not_take() {
        let mut bucket = TokenBucket::new(1.0);
        assert!(bucket.ready());
        assert!(bucket.ready());
        bucket.take();
        assert!(!bucket.ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_bucket_holds_its_burst_and_refills_at_its_rate() {
        let mut bucket = TokenBucket::with_burst(1.0, 5.0);
        assert!((0..5).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
        assert!(!bucket.is_full());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(bucket.try_take());
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(bucket.is_full());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited() {
        let mut bucket = TokenBucket::new(0.0);
        assert!((0..10_000).all(|_| bucket.try_take()));
    }
}
