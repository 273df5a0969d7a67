//! Failed-authentication limit per client: a token bucket in memory, one per client
//! address (an IPv6 client is keyed by its /64, which one host usually owns whole). Every
//! authenticated call takes one attempt before it is forwarded and gives it back unless its
//! credential was refused, so concurrent guesses cannot overrun the limit; attempts refill
//! at the configured rate. A client with no attempts left is answered 429 before anything
//! reaches the control plane, whatever token it sends, so a guessing run costs the control
//! plane nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked clients, buckets that are full again are forgotten.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct FailedAuthLimiter {
    /// Attempts a client may fail in a burst.
    capacity: f64,
    /// Attempts given back per second.
    refill_per_second: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    attempts: f64,
    updated: Instant,
}

impl FailedAuthLimiter {
    /// `per_minute` failed attempts, as a burst and as the refill rate.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        FailedAuthLimiter {
            capacity: per_minute,
            refill_per_second: per_minute / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt from `ip`; `Err(retry_after)` when it has none left.
    pub fn acquire(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() >= PRUNE_ABOVE {
            let capacity = self.capacity;
            let rate = self.refill_per_second;
            buckets.retain(|_, b| {
                b.attempts + now.saturating_duration_since(b.updated).as_secs_f64() * rate
                    < capacity
            });
        }
        let bucket = buckets.entry(key(ip)).or_insert(Bucket {
            attempts: self.capacity,
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.attempts >= 1.0 {
            bucket.attempts -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.attempts) / self.refill_per_second,
            ))
        }
    }

    /// Gives back the attempt of a call whose credential was not refused.
    pub fn refund(&self, ip: IpAddr, now: Instant) {
        if let Some(bucket) = self.buckets.lock().expect("limiter lock").get_mut(&key(ip)) {
            self.refill(bucket, now);
            bucket.attempts = (bucket.attempts + 1.0).min(self.capacity);
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.attempts = (bucket.attempts + elapsed * self.refill_per_second).min(self.capacity);
        bucket.updated = now;
    }
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_for_the_refill() {
        let limiter = FailedAuthLimiter::new(20);
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        // Successful calls give their attempt back.
        for _ in 0..100 {
            limiter.acquire(a, t0).unwrap();
            limiter.refund(a, t0);
        }
        // Refused ones (in flight at once or not) do not.
        for _ in 0..20 {
            limiter.acquire(a, t0).unwrap();
        }
        let wait = limiter.acquire(a, t0).unwrap_err();
        assert_eq!(
            wait.as_secs(),
            3,
            "one attempt back every 3 s at 20 per minute"
        );
        assert!(
            limiter.acquire(b, t0).is_ok(),
            "other clients are not affected"
        );
        assert!(limiter.acquire(a, t0 + Duration::from_secs(3)).is_ok());
        assert!(limiter.acquire(a, t0 + Duration::from_secs(3)).is_err());
        assert!(limiter.acquire(a, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_one_slash_64() {
        let limiter = FailedAuthLimiter::new(1);
        let t0 = Instant::now();
        limiter.acquire("2001:db8::1".parse().unwrap(), t0).unwrap();
        assert!(limiter.acquire("2001:db8::2".parse().unwrap(), t0).is_err());
        assert!(limiter
            .acquire("2001:db8:0:1::1".parse().unwrap(), t0)
            .is_ok());
    }

    #[test]
    fn many_clients_do_not_grow_the_table_forever() {
        let limiter = FailedAuthLimiter::new(20);
        let t0 = Instant::now();
        for i in 0..(PRUNE_ABOVE as u32 + 10) {
            let _ = limiter.acquire(IpAddr::from(i.to_be_bytes()), t0);
        }
        let _ = limiter.acquire("192.0.2.1".parse().unwrap(), t0 + Duration::from_secs(10));
        assert!(limiter.buckets.lock().unwrap().len() < 100);
    }
}
