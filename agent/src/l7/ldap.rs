//! The `ldap` provider's directory: a user's Basic credential checked by a search for the
//! user's entry (as the search account, on one connection kept open and shared) and a bind as
//! that entry with the password (on a connection of its own, closed after), then the user's
//! groups. Successful logins are remembered for the policy's `cacheSeconds`; a directory that
//! does not answer within the timeout, or fails, refuses the request (503) unless the
//! credential is remembered: never a pass. Connections are TLS only (`ldaps://` or StartTLS),
//! with rustls.
//!
//! `ldap3` is the maintained async LDAP client for tokio; its entry parser panics on malformed
//! replies, so each login runs in a task of its own and a panic there is a refusal.

use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};
use rampart_l7::basic::{BasicCredential, VerifiedCache};
use tokio::sync::{Mutex, Semaphore};

use crate::policy::http::LdapProviderModel;
use crate::policy::http::LdapTransport;

/// Logins past the cache in flight at once, per directory: a flood of wrong passwords
/// waits here instead of opening connections to the directory without bound.
pub const MAX_CONCURRENT_BINDS: usize = 16;
/// Remembered logins per directory.
pub const MAX_CACHED_LOGINS: usize = 10_000;
/// Groups read per user.
pub const MAX_GROUPS: i32 = 1000;
/// User names longer than this are refused without asking the directory.
pub const MAX_USER_BYTES: usize = 256;

/// A user the directory authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub dn: String,
    /// The user's name as the directory holds it (`userAttribute`).
    pub name: String,
    pub groups: Vec<String>,
}

/// What a login came to.
#[derive(Debug, Clone)]
pub enum Login {
    Authenticated(Arc<DirectoryUser>),
    /// No such user, more than one entry for the name, or a wrong password.
    Refused,
    /// The directory did not answer in time, or failed.
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
enum DirectoryError {
    #[error("{0}")]
    Ldap(#[from] ldap3::LdapError),
    #[error("{what}: result code {rc} ({text})")]
    Result {
        what: &'static str,
        rc: u32,
        text: String,
    },
}

/// One `ldap` provider's directory: its TLS settings, the search connection, the remembered
/// logins.
pub struct Directory {
    pub model: Arc<LdapProviderModel>,
    pub fingerprint: [u8; 32],
    tls: Arc<rustls::ClientConfig>,
    search: Mutex<Option<Ldap>>,
    cache: VerifiedCache<Arc<DirectoryUser>>,
    binds: Semaphore,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Directory({})", self.model.url)
    }
}

/// A salt for the logins' cache keys, random per process.
static CACHE_SALT: LazyLock<[u8; 32]> = LazyLock::new(|| {
    let mut salt = [0u8; 32];
    // Without the kernel's CSPRNG the keys are still hashes of the credential; the salt only
    // makes them useless outside this process.
    let _ = getrandom::fill(&mut salt);
    salt
});

pub fn cache_salt() -> [u8; 32] {
    *CACHE_SALT
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Directory {
    pub fn new(model: Arc<LdapProviderModel>) -> Directory {
        let fingerprint = model.fingerprint();
        let tls = Arc::new(super::tls_client::config(model.ca_pem.as_deref()));
        let capacity =
            std::num::NonZeroUsize::new(MAX_CACHED_LOGINS).unwrap_or(std::num::NonZeroUsize::MIN);
        Directory {
            cache: VerifiedCache::new(capacity, model.cache_s, cache_salt()),
            model,
            fingerprint,
            tls,
            search: Mutex::new(None),
            binds: Semaphore::new(MAX_CONCURRENT_BINDS),
        }
    }

    /// Checks `credential`: remembered, or asked of the directory within the timeout.
    pub async fn login(self: &Arc<Self>, credential: &BasicCredential) -> Login {
        // An empty password makes a bind "unauthenticated" (RFC 4513 §5.1.2), which servers
        // answer with success for any DN.
        if credential.password.is_empty()
            || credential.user.len() > MAX_USER_BYTES
            || credential.user.contains('\0')
        {
            return Login::Refused;
        }
        if let Some(user) = self.cache.get(credential, now_s()) {
            return Login::Authenticated(user);
        }
        let timeout = self.model.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, self.binds.acquire()).await else {
            tracing::warn!(provider = %self.model.name, "ldap: every bind slot busy past the timeout");
            return Login::Unavailable;
        };
        let this = Arc::clone(self);
        let owned = credential.clone();
        let task = tokio::spawn(async move {
            tokio::time::timeout_at(deadline, this.ask_directory(&owned)).await
        });
        let outcome = match task.await {
            Ok(Ok(Ok(outcome))) => outcome,
            Ok(Ok(Err(e))) => {
                tracing::warn!(provider = %self.model.name, url = %self.model.url, error = %e, "ldap: directory failed");
                self.forget_search_connection().await;
                Login::Unavailable
            }
            Ok(Err(_elapsed)) => {
                tracing::warn!(provider = %self.model.name, url = %self.model.url, ?timeout, "ldap: directory did not answer in time");
                self.forget_search_connection().await;
                Login::Unavailable
            }
            Err(e) => {
                tracing::warn!(provider = %self.model.name, error = %e, "ldap: login task failed");
                Login::Unavailable
            }
        };
        if let Login::Authenticated(user) = &outcome {
            self.cache.insert(credential, now_s(), Arc::clone(user));
        }
        outcome
    }

    async fn forget_search_connection(&self) {
        if let Some(mut ldap) = self.search.lock().await.take() {
            let _ = ldap.unbind().await;
        }
    }

    fn settings(&self) -> LdapConnSettings {
        LdapConnSettings::new()
            .set_conn_timeout(self.model.timeout)
            .set_config(Arc::clone(&self.tls))
            .set_starttls(self.model.transport == LdapTransport::StartTls)
    }

    async fn connect(&self) -> Result<Ldap, DirectoryError> {
        let (conn, mut ldap) =
            LdapConnAsync::with_settings(self.settings(), &self.model.url).await?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.model.timeout);
        Ok(ldap)
    }

    /// The shared search connection, bound as the search account (opened when missing or
    /// closed).
    async fn search_connection(&self) -> Result<Ldap, DirectoryError> {
        let mut guard = self.search.lock().await;
        if let Some(ldap) = guard.as_mut()
            && !ldap.is_closed()
        {
            return Ok(ldap.clone());
        }
        let mut ldap = self.connect().await?;
        if let Some(bind) = &self.model.bind {
            let result = ldap.simple_bind(&bind.dn, &bind.password).await?;
            if result.rc != 0 {
                return Err(DirectoryError::Result {
                    what: "search account bind",
                    rc: result.rc,
                    text: result.text,
                });
            }
        }
        *guard = Some(ldap.clone());
        Ok(ldap)
    }

    async fn ask_directory(&self, credential: &BasicCredential) -> Result<Login, DirectoryError> {
        let model = &self.model;
        let mut search = self.search_connection().await?;
        let filter = model
            .user_filter
            .replace("{user}", &ldap3::ldap_escape(credential.user.as_str()));
        let ldap3::SearchResult(entries, result) = search
            .with_search_options(SearchOptions::new().sizelimit(2))
            .with_timeout(model.timeout)
            .search(
                &model.user_base,
                Scope::Subtree,
                &filter,
                vec![model.user_attribute.as_str()],
            )
            .await?;
        // 4: sizeLimitExceeded (more than one entry: ambiguous, refused below).
        if result.rc != 0 && result.rc != 4 {
            return Err(DirectoryError::Result {
                what: "user search",
                rc: result.rc,
                text: result.text,
            });
        }
        let (dn, name) = match entries.as_slice() {
            [entry] => {
                let entry = SearchEntry::construct(entry.clone());
                // The name as the directory spells it: `ALICE` and `alice` find the same entry
                // (uid matching ignores case), and must be one user to rules and rate limits.
                let name = entry
                    .attrs
                    .iter()
                    .find(|(attr, _)| attr.eq_ignore_ascii_case(&model.user_attribute))
                    .and_then(|(_, values)| values.first().cloned())
                    .unwrap_or_else(|| credential.user.clone());
                (entry.dn, name)
            }
            [] => {
                tracing::debug!(provider = %model.name, "ldap: no such user");
                return Ok(Login::Refused);
            }
            _ => {
                tracing::warn!(provider = %model.name, "ldap: the user filter matches more than one entry; refused");
                return Ok(Login::Refused);
            }
        };
        let mut user_conn = self.connect().await?;
        let bound = user_conn.simple_bind(&dn, &credential.password).await;
        let _ = user_conn.unbind().await;
        let bound = bound?;
        match bound.rc {
            0 => {}
            // invalidCredentials, inappropriateAuthentication, unwillingToPerform (a locked or
            // disabled account on several servers).
            49 | 48 | 53 => {
                tracing::debug!(provider = %model.name, rc = bound.rc, "ldap: bind refused");
                return Ok(Login::Refused);
            }
            rc => {
                return Err(DirectoryError::Result {
                    what: "user bind",
                    rc,
                    text: bound.text,
                });
            }
        }
        let groups = match &model.group_base {
            None => Vec::new(),
            Some(base) => {
                let filter = model
                    .group_filter
                    .replace("{dn}", &ldap3::ldap_escape(dn.as_str()))
                    .replace("{user}", &ldap3::ldap_escape(credential.user.as_str()));
                let ldap3::SearchResult(entries, result) = search
                    .with_search_options(SearchOptions::new().sizelimit(MAX_GROUPS))
                    .with_timeout(model.timeout)
                    .search(
                        base,
                        Scope::Subtree,
                        &filter,
                        vec![model.group_attribute.as_str()],
                    )
                    .await?;
                if result.rc != 0 && result.rc != 4 {
                    return Err(DirectoryError::Result {
                        what: "group search",
                        rc: result.rc,
                        text: result.text,
                    });
                }
                let mut groups: Vec<String> = entries
                    .into_iter()
                    .map(SearchEntry::construct)
                    .flat_map(|entry| {
                        entry
                            .attrs
                            .into_iter()
                            .filter(|(name, _)| name.eq_ignore_ascii_case(&model.group_attribute))
                            .flat_map(|(_, values)| values)
                    })
                    .collect();
                groups.sort();
                groups.dedup();
                groups
            }
        };
        Ok(Login::Authenticated(Arc::new(DirectoryUser {
            dn,
            name,
            groups,
        })))
    }
}
