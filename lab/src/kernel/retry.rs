//! Retrying until a deadline: the one backoff loop of cnilab. Waiting for a
//! lock, for processes to exit, for agents to be ready, for routes to
//! converge and for a scenario's expectation all poll with a pause that
//! doubles from `first` up to `max`, and give up at a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// A deadline and a growing pause between attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    deadline: Instant,
    pause: Duration,
    max: Duration,
}

impl Backoff {
    /// Attempts for `within` from now, pausing `first`, then twice as long
    /// each time, at most `max`.
    pub fn new(within: Duration, first: Duration, max: Duration) -> Self {
        Backoff {
            deadline: Instant::now() + within,
            pause: first,
            max,
        }
    }

    /// When it gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn next_pause(&mut self) -> Duration {
        let p = self.pause;
        self.pause = (self.pause * 2).min(self.max);
        p
    }

    /// Sleeps the thread for the next pause.
    pub fn sleep(&mut self) {
        std::thread::sleep(self.next_pause());
    }

    /// Sleeps the task for the next pause (for async code: no thread is held).
    pub async fn sleep_async(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }
}

/// Calls `attempt` until it gives `Some`, pausing between attempts; `None`
/// when the deadline passed first. The last attempt is made at or after
/// the deadline, so a condition that holds by then is seen.
pub fn until<T>(mut backoff: Backoff, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(v) = attempt() {
            return Some(v);
        }
        if backoff.expired() {
            return None;
        }
        backoff.sleep();
    }
}

/// [`until`] for async attempts that can fail: an error ends it at once.
pub async fn until_async<T, E, F, Fut>(mut backoff: Backoff, mut attempt: F) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    loop {
        if let Some(v) = attempt().await? {
            return Ok(Some(v));
        }
        if backoff.expired() {
            return Ok(None);
        }
        backoff.sleep_async().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_max() {
        let mut b = Backoff::new(
            Duration::from_secs(1),
            Duration::from_millis(2),
            Duration::from_millis(5),
        );
        let p: Vec<u128> = (0..4).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(p, [2, 4, 5, 5]);
    }

    #[test]
    fn until_returns_the_first_success_or_none_at_the_deadline() {
        let mut n = 0;
        let b = Backoff::new(
            Duration::from_secs(5),
            Duration::from_millis(1),
            Duration::from_millis(1),
        );
        assert_eq!(
            until(b, || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        let b = Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(1),
            Duration::from_millis(5),
        );
        let started = Instant::now();
        assert_eq!(until(b, || None::<()>), None);
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn until_async_ends_at_the_first_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut n = 0;
        let b = Backoff::new(
            Duration::from_secs(5),
            Duration::from_millis(1),
            Duration::from_millis(1),
        );
        let r: Result<Option<()>, String> = rt.block_on(until_async(b, || {
            n += 1;
            let now = n;
            async move { if now == 2 { Err("broken".to_string()) } else { Ok(None) } }
        }));
        assert_eq!((r, n), (Err("broken".to_string()), 2));
    }
}
