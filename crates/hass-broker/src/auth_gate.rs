//! Where a CONNECT's password is checked: on the blocking pool, a few at a
//! time, so a PBKDF2 hash never stalls the runtime that serves every other
//! client; and slower for an address that keeps getting it wrong, so a
//! guesser gets few tries and costs the broker little.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::auth::{AccessPolicy, AuthDecision};

/// Failures from one address that go unpunished: a typo, a rotated password
/// a client has not picked up yet.
const FREE_FAILURES: u32 = 3;
/// Each failure past the free ones doubles the wait, up to this.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// An address that has not failed for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Addresses remembered at most; past it the oldest are forgotten.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Checks credentials for every listener.
#[derive(Debug)]
pub struct AuthGate {
    hashing: Semaphore,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// What a check decided, and how long the address was made to wait first.
#[derive(Debug)]
pub struct Checked {
    pub decision: AuthDecision,
    pub delayed: Duration,
}

impl AuthGate {
    /// At most `concurrent` hashes at once (half the cores leaves the rest
    /// to the clients that are logged in).
    pub fn new(concurrent: usize) -> Self {
        Self {
            hashing: Semaphore::new(concurrent.max(1)),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Half the machine's cores, at least one.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cores / 2)
    }

    /// Decides on `username` and `password` from `peer` under `policy`.
    pub async fn check(
        &self,
        policy: Arc<AccessPolicy>,
        peer: IpAddr,
        username: Option<String>,
        password: Option<Vec<u8>>,
    ) -> Checked {
        let delayed = self.delay_for(peer);
        if !delayed.is_zero() {
            tokio::time::sleep(delayed).await;
        }
        let decision = match self.hashing.acquire().await {
            Ok(_permit) => tokio::task::spawn_blocking(move || {
                policy
                    .authenticator
                    .decide(username.as_deref(), password.as_deref())
            })
            .await
            .unwrap_or(AuthDecision::BadCredentials),
            // Closed only if the broker were tearing the gate down.
            Err(_) => AuthDecision::BadCredentials,
        };
        self.record(peer, &decision);
        Checked { decision, delayed }
    }

    fn delay_for(&self, peer: IpAddr) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures
            .get(&peer)
            .filter(|f| f.last.elapsed() < FORGET_AFTER)
            .map_or(Duration::ZERO, |f| delay_after(f.count))
    }

    fn record(&self, peer: IpAddr, decision: &AuthDecision) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let AuthDecision::Allowed(_) = decision {
            failures.remove(&peer);
            return;
        }
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&peer) {
            failures.retain(|_, f| f.last.elapsed() < FORGET_AFTER);
            if failures.len() >= MAX_ADDRESSES {
                failures.clear();
            }
        }
        let now = Instant::now();
        let entry = failures.entry(peer).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }
}

/// The wait before the next check after `count` failures in a row.
fn delay_after(count: u32) -> Duration {
    let over = count.saturating_sub(FREE_FAILURES);
    if over == 0 {
        return Duration::ZERO;
    }
    let millis = 100u64.saturating_mul(1 << over.min(16).saturating_sub(1));
    Duration::from_millis(millis).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authenticator, PasswordFile};

    #[test]
    fn the_wait_doubles_after_the_free_failures_and_is_capped() {
        let waits: Vec<u64> = (0..12).map(|n| delay_after(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [0, 0, 0, 0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000]
        );
    }

    #[tokio::test]
    async fn failures_slow_their_address_only_and_a_success_forgives() {
        let gate = AuthGate::new(1);
        // "secret" under `$6$` with salt "salt".
        let policy = Arc::new(AccessPolicy {
            authenticator: Authenticator {
                passwords: Some(
                    PasswordFile::parse(
                        "ha:$6$c2FsdA==$E491yrR9AdCoE7rbOPYS3EZgSuZpVE65AD9xko08s6floNesY/Zpe9zMVvLix4S2FiQSJ99RIkNvhHomNO9uLw==\n",
                        "pw",
                    )
                    .expect("file"),
                ),
                allow_anonymous: false,
            },
            acl: None,
        });
        let guesser: IpAddr = [10, 0, 0, 9].into();
        let other: IpAddr = [10, 0, 0, 1].into();
        let wrong = || Some(b"guess".to_vec());
        for _ in 0..4 {
            gate.check(policy.clone(), guesser, Some("ha".into()), wrong())
                .await;
        }
        let fifth = gate
            .check(policy.clone(), guesser, Some("ha".into()), wrong())
            .await;
        assert_eq!(fifth.delayed, Duration::from_millis(100));
        let elsewhere = gate
            .check(policy.clone(), other, Some("ha".into()), wrong())
            .await;
        assert_eq!(elsewhere.delayed, Duration::ZERO);
        let right = gate
            .check(
                policy.clone(),
                guesser,
                Some("ha".into()),
                Some(b"secret".to_vec()),
            )
            .await;
        assert_eq!(right.decision, AuthDecision::Allowed(Some("ha".into())));
        let after = gate
            .check(policy, guesser, Some("ha".into()), wrong())
            .await;
        assert_eq!(after.delayed, Duration::ZERO, "a success forgives");
    }
}
