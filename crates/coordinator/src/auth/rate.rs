//! The per-token limit on tasks per minute.
//!
//! Each key (a token name, or a source IP without authentication) has a
//! bucket of `limit` tasks that refills continuously at `limit` per minute,
//! so a burst of `limit` tasks is allowed and then about one every
//! `60 / limit` seconds. Buckets live in this coordinator's memory: with
//! several coordinators each applies the limit on its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tasks: f64,
    updated: Instant,
}

/// Buckets kept before full ones are dropped; a full bucket behaves the
/// same as no bucket, so dropping it loses nothing.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// Takes one task from `key`'s bucket. Returns `Err` with the wait
    /// until the next task is allowed when the bucket is empty.
    pub fn take(&self, key: &str, limit_per_minute: u32) -> Result<(), Duration> {
        self.take_at(key, limit_per_minute, Instant::now())
    }

    fn take_at(&self, key: &str, limit_per_minute: u32, now: Instant) -> Result<(), Duration> {
        let limit = f64::from(limit_per_minute);
        let per_second = limit / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());

        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, bucket| refilled(bucket, per_second, limit, now) < limit);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tasks: limit,
            updated: now,
        });
        bucket.tasks = refilled(bucket, per_second, limit, now);
        bucket.updated = now;

        if bucket.tasks >= 1.0 {
            bucket.tasks -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tasks) / per_second))
        }
    }
}

fn refilled(bucket: &Bucket, per_second: f64, limit: f64, now: Instant) -> f64 {
    let elapsed = now.duration_since(bucket.updated).as_secs_f64();
    (bucket.tasks + elapsed * per_second).min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_up_to_limit_then_wait() {
        let limiter = RateLimiter::default();
        let start = Instant::now();

        for _ in 0..3 {
            assert!(limiter.take_at("ops", 3, start).is_ok());
        }
        let wait = limiter.take_at("ops", 3, start).unwrap_err();

        assert_eq!(wait.as_secs(), 20);
    }

    #[test]
    fn bucket_refills_over_time() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..3 {
            limiter.take_at("ops", 3, start).unwrap();
        }

        assert!(
            limiter
                .take_at("ops", 3, start + Duration::from_secs(21))
                .is_ok()
        );
        assert!(
            limiter
                .take_at("ops", 3, start + Duration::from_secs(22))
                .is_err()
        );
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        limiter.take_at("a", 1, start).unwrap();

        assert!(limiter.take_at("a", 1, start).is_err());
        assert!(limiter.take_at("b", 1, start).is_ok());
    }
}
