//! Failed-authentication limit per client: a token bucket in memory, one per client
//! address (an IPv6 client is keyed by its /64, which one host usually owns whole). Every
//! authenticated call takes one attempt before it is forwarded and gives it back unless its
//! credential was refused, so concurrent guesses cannot overrun the limit; attempts refill
//! at the configured rate. A client with no attempts left is answered 429 before anything
//! reaches the control plane, whatever token it sends, so a guessing run costs the control
//! plane nothing.
//!
//! The table is bounded in time and in size (issue 9, attack path 7): a bucket full again is
//! forgotten, a few per call in the order the clients came (no call scans the table), and at
//! most [`MAX_CLIENTS`] clients are tracked; clients arriving while it is full share one
//! overflow bucket with the same limit. That is the safe side of the choice: many addresses
//! never buy a guesser more attempts than one, and a table filled by an attacker leaves new
//! clients a shared limit rather than a refusal; clients already tracked are not affected.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients tracked at most (about 100 bytes each). Past it, new clients share one bucket.
const MAX_CLIENTS: usize = 65_536;
/// Queue entries looked at per call: each call adds at most one, so the queue never falls
/// behind, and no call does more than this much eviction work.
const EVICT_PER_CALL: usize = 4;

#[derive(Debug)]
pub struct FailedAuthLimiter {
    /// Attempts a client may fail in a burst.
    capacity: f64,
    /// Attempts given back per second.
    refill_per_second: f64,
    /// Time in which any bucket, however empty, is full again: a bucket untouched that long
    /// is the same as no bucket and is forgotten.
    refill_window: Duration,
    max_clients: usize,
    table: Mutex<Table>,
}

/// The buckets and their eviction order.
///
/// Every tracked client has exactly one entry in `order`, stamped with a time at which its
/// bucket was last seen; stamps never decrease from front to back. Each call looks at the
/// front: an entry older than the refill window whose bucket was not touched since is
/// forgotten, one whose bucket was touched goes to the back with a fresh stamp. So eviction
/// is O(1) per call, and `order` is never longer than `buckets`.
#[derive(Debug)]
struct Table {
    buckets: HashMap<IpAddr, Bucket>,
    order: VecDeque<(Instant, IpAddr)>,
    /// Shared by every client that arrives while `buckets` is full: the total rate of
    /// failed attempts stays bounded whatever the number of addresses a guesser uses, and
    /// an attacker filling the table costs a new client at most this shared limit (a
    /// refusal of every unknown client would cost it everything). Known clients keep their
    /// own buckets.
    overflow: Bucket,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    attempts: f64,
    updated: Instant,
}

impl FailedAuthLimiter {
    /// `per_minute` failed attempts, as a burst and as the refill rate.
    pub fn new(per_minute: u32) -> Self {
        Self::with_max_clients(per_minute, MAX_CLIENTS)
    }

    fn with_max_clients(per_minute: u32, max_clients: usize) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        let now = Instant::now();
        FailedAuthLimiter {
            capacity: per_minute,
            refill_per_second: per_minute / 60.0,
            refill_window: Duration::from_secs(60),
            max_clients,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                order: VecDeque::new(),
                overflow: Bucket {
                    attempts: per_minute,
                    updated: now,
                },
            }),
        }
    }

    /// Takes one attempt from `ip`; `Err(retry_after)` when it has none left.
    pub fn acquire(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut table = self.table.lock().expect("limiter lock");
        self.evict(&mut table, now);
        let Table {
            buckets,
            order,
            overflow,
        } = &mut *table;
        let key = key(ip);
        let bucket = if let Some(bucket) = buckets.get_mut(&key) {
            bucket
        } else if buckets.len() < self.max_clients {
            order.push_back((now, key));
            buckets.entry(key).or_insert(Bucket {
                attempts: self.capacity,
                updated: now,
            })
        } else {
            overflow
        };
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

    /// Gives back the attempt of a call whose credential was not refused. A client without
    /// a bucket of its own was charged to the shared one (or is full again already).
    pub fn refund(&self, ip: IpAddr, now: Instant) {
        let mut table = self.table.lock().expect("limiter lock");
        let Table {
            buckets, overflow, ..
        } = &mut *table;
        let bucket = buckets.get_mut(&key(ip)).unwrap_or(overflow);
        self.refill(bucket, now);
        bucket.attempts = (bucket.attempts + 1.0).min(self.capacity);
    }

    /// Forgets, at most [`EVICT_PER_CALL`] at a time, the buckets that are full again.
    fn evict(&self, table: &mut Table, now: Instant) {
        for _ in 0..EVICT_PER_CALL {
            let Some(&(stamp, key)) = table.order.front() else {
                return;
            };
            if now.saturating_duration_since(stamp) < self.refill_window {
                return;
            }
            table.order.pop_front();
            match table.buckets.get(&key) {
                Some(b) if now.saturating_duration_since(b.updated) >= self.refill_window => {
                    table.buckets.remove(&key);
                }
                // Used since it was stamped: look again one window from now.
                Some(_) => table.order.push_back((now, key)),
                None => {}
            }
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.attempts = (bucket.attempts + elapsed * self.refill_per_second).min(self.capacity);
        bucket.updated = bucket.updated.max(now);
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

    fn tracked(limiter: &FailedAuthLimiter) -> (usize, usize) {
        let table = limiter.table.lock().unwrap();
        (table.buckets.len(), table.order.len())
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    #[test]
    fn full_buckets_are_forgotten_a_few_per_call_never_by_a_scan() {
        let limiter = FailedAuthLimiter::with_max_clients(20, 1000);
        let t0 = Instant::now();
        for i in 0..500 {
            limiter.acquire(client(i), t0).unwrap();
        }
        assert_eq!(tracked(&limiter), (500, 500));

        // Within the window every bucket may still be short of attempts: all kept.
        let t1 = t0 + Duration::from_secs(59);
        limiter.acquire(client(0), t1).unwrap();
        assert_eq!(tracked(&limiter).0, 500);

        // Once full again they go, a bounded number per call (one call does not pay for
        // the whole table) until none is left but the ones in use.
        let t2 = t0 + Duration::from_secs(61);
        let known = "192.0.2.1".parse().unwrap();
        limiter.acquire(known, t2).unwrap();
        // (Client 0, used at t1, was one of the entries looked at: it went to the back.)
        assert_eq!(tracked(&limiter).0, 500 - (EVICT_PER_CALL - 1) + 1);
        for _ in 0..200 {
            limiter.acquire(known, t2).ok();
        }
        // Client 0 was used at t1 and stays (its bucket is not full yet); the known one too.
        assert_eq!(tracked(&limiter), (2, 2));
        let t3 = t2 + Duration::from_secs(60);
        limiter.refund(known, t3);
        limiter.acquire(known, t3).unwrap();
        assert_eq!(
            tracked(&limiter),
            (1, 1),
            "client 0 is forgotten a window after its use"
        );
    }

    #[test]
    fn a_bucket_still_refilling_is_never_forgotten() {
        let limiter = FailedAuthLimiter::with_max_clients(20, 1000);
        let t0 = Instant::now();
        let guesser = "192.0.2.1".parse().unwrap();
        for _ in 0..20 {
            limiter.acquire(guesser, t0).unwrap();
        }
        // Used again just before its stamp expires: it goes to the back, not away.
        let t1 = t0 + Duration::from_secs(57);
        for _ in 0..19 {
            limiter.acquire(guesser, t1).unwrap();
        }
        let t2 = t0 + Duration::from_secs(61);
        for i in 0..100 {
            let _ = limiter.acquire(client(i), t2);
        }
        // 4 s later it has one attempt back (the 19 refilled by t1 were spent), not 20.
        assert!(limiter.acquire(guesser, t2).is_ok());
        assert!(limiter.acquire(guesser, t2).is_err());
    }

    #[test]
    fn past_the_cap_new_clients_share_one_bucket_and_known_ones_keep_theirs() {
        let limiter = FailedAuthLimiter::with_max_clients(3, 100);
        let t0 = Instant::now();
        for i in 0..100 {
            limiter.acquire(client(i), t0).unwrap();
        }
        // A flood of new addresses: the table does not grow, and all of them together get
        // the attempts of one client.
        let mut allowed = 0;
        for i in 100..100_000 {
            if limiter.acquire(client(i), t0).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3, "one shared bucket of 3 attempts");
        assert_eq!(tracked(&limiter), (100, 100));
        // A client tracked before the flood still has its own two attempts left.
        assert!(limiter.acquire(client(7), t0).is_ok());
        assert!(limiter.acquire(client(7), t0).is_ok());
        assert!(limiter.acquire(client(7), t0).is_err());
        // A new client whose credential was good gives its attempt back to the shared bucket.
        limiter.refund(client(200_000), t0);
        assert!(limiter.acquire(client(200_001), t0).is_ok());
        assert!(limiter.acquire(client(200_002), t0).is_err());
        // Once the old buckets are full again and forgotten, new clients get their own.
        let later = t0 + Duration::from_secs(61);
        for _ in 0..30 {
            let _ = limiter.acquire(client(5), later);
        }
        assert_eq!(tracked(&limiter), (1, 1));
        for i in 300_000..300_010 {
            limiter.acquire(client(i), later).unwrap();
        }
    }

    #[test]
    fn the_table_never_exceeds_its_cap_as_time_passes() {
        let limiter = FailedAuthLimiter::with_max_clients(20, 1000);
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            let _ = limiter.acquire(client(i), t0 + Duration::from_millis(u64::from(i)));
            if i % 1000 == 0 {
                let (buckets, order) = tracked(&limiter);
                assert!(buckets <= 1000 && order == buckets, "{buckets} {order}");
            }
        }
    }
}
