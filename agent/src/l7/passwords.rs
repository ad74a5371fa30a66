//! The `basicAuth` provider's live state: its users, and the credentials that verified lately.
//! A bcrypt or SHA-crypt check costs milliseconds of CPU by design, so checks run on the
//! blocking pool, at most [`max_concurrent_checks`] at once for the whole agent: a flood of
//! wrong passwords waits for a slot (and is refused, 503, past [`CHECK_WAIT`]) instead of
//! taking every core from the proxy.

use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rampart_l7::basic::htpasswd::Htpasswd;
use rampart_l7::basic::{BasicCredential, VerifiedCache};
use tokio::sync::Semaphore;

/// How long a verified credential is remembered (a changed file is a new policy set, and a
/// new memory).
pub const REMEMBER_S: u64 = 300;
pub const MAX_REMEMBERED: usize = 10_000;
/// How long a request waits for a check slot.
pub const CHECK_WAIT: Duration = Duration::from_secs(2);

/// Half the cores (at least one): checks never take the whole node.
pub fn max_concurrent_checks() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

static CHECK_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(max_concurrent_checks()));

/// What a check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Valid,
    Invalid,
    /// No check slot within [`CHECK_WAIT`].
    Busy,
}

#[derive(Debug)]
pub struct PasswordFile {
    pub users: Arc<Htpasswd>,
    pub fingerprint: [u8; 32],
    remembered: VerifiedCache<()>,
}

impl PasswordFile {
    pub fn new(users: Arc<Htpasswd>, fingerprint: [u8; 32]) -> PasswordFile {
        let capacity = NonZeroUsize::new(MAX_REMEMBERED).unwrap_or(NonZeroUsize::MIN);
        PasswordFile {
            users,
            fingerprint,
            remembered: VerifiedCache::new(capacity, REMEMBER_S, super::ldap::cache_salt()),
        }
    }

    pub async fn check(&self, credential: &BasicCredential) -> Checked {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.remembered.get(credential, now).is_some() {
            return Checked::Valid;
        }
        let Ok(Ok(_slot)) = tokio::time::timeout(CHECK_WAIT, CHECK_SLOTS.acquire()).await else {
            return Checked::Busy;
        };
        let users = Arc::clone(&self.users);
        let owned = credential.clone();
        let valid = tokio::task::spawn_blocking(move || users.verify(&owned.user, &owned.password))
            .await
            .unwrap_or(false);
        if valid {
            self.remembered.insert(credential, now, ());
            Checked::Valid
        } else {
            Checked::Invalid
        }
    }
}
