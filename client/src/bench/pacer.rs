//! Waiting until an instant with microsecond precision, for senders that pace their messages
//! evenly. tokio's timer has a granularity of 1 ms, so a sender that sleeps with it between
//! messages sent more often than once per millisecond would send them in bursts of one
//! millisecond's worth. On Linux the pacer waits on a timerfd through the runtime's I/O
//! driver instead (still one thread, no spinning); elsewhere it falls back to tokio's timer.

use std::io;
use std::time::Instant;

/// Waits until given instants; one per sender.
pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl Pacer {
    /// A pacer; on Linux this opens a timerfd (`CLOCK_MONOTONIC`, the clock of `Instant`).
    pub fn new() -> io::Result<Pacer> {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // SAFETY: the `OwnedFd` is a valid timerfd that the `AsyncFd` owns until it is
            // dropped; nothing else closes or replaces it.
            let timer = unsafe { tokio::io::unix::AsyncFd::register(fd)? };
            Ok(Pacer { timer })
        }
        #[cfg(not(target_os = "linux"))]
        Ok(Pacer {})
    }

    /// Returns at `at` (at once if it has passed).
    pub async fn until(&mut self, at: Instant) -> io::Result<()> {
        let Some(wait) = at.checked_duration_since(Instant::now()).filter(|w| !w.is_zero()) else {
            return Ok(());
        };
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
            let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
            let value = Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            let spec = Itimerspec { it_interval: zero, it_value: value };
            timerfd_settime(self.timer.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            loop {
                let mut ready = self.timer.readable().await?;
                let mut expirations = [0u8; 8];
                match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    // Not expired yet (a spurious wake-up): wait again.
                    Err(_would_block) => continue,
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            tokio::time::sleep(wait).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Waits 200 times 100 µs apart: every wait returns at or after its instant, and the
    /// whole run takes at least 20 ms (tokio's 1 ms timer would have needed 200 ms or burst).
    #[tokio::test]
    async fn waits_until_each_instant_and_not_before() {
        let mut pacer = Pacer::new().unwrap();
        let start = Instant::now();
        for k in 1..=200u32 {
            let at = start + Duration::from_micros(100) * k;
            pacer.until(at).await.unwrap();
            assert!(Instant::now() >= at, "wait {k} returned early");
        }
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_passed_instant_returns_at_once() {
        let mut pacer = Pacer::new().unwrap();
        let past = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), pacer.until(past)).await.unwrap().unwrap();
    }
}
