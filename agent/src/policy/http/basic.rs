//! `basicAuth` and `ldap` providers: HTTP Basic credentials (RFC 7617), checked against an
//! htpasswd file from a Secret or by an LDAP bind. Validation into their models; the Secrets
//! they name are read once every object is (`resolve_secrets`).

use std::sync::Arc;
use std::time::Duration;

use crate::policy::spec::compact::Spanned;
use hyper::header::HeaderName;
use rampart_l7::basic::htpasswd::Htpasswd;

use super::super::diag::{Diagnostic, Origin};
use super::super::secret::{LABEL_HINT, SecretModel};
use super::super::spec::http::{BasicAuthSpec, LdapSpec, SecretRefSpec};
use super::HttpValidator;

/// The Secret entry an htpasswd file is read from unless `key` names another.
pub const DEFAULT_HTPASSWD_KEY: &str = "htpasswd";
pub const DEFAULT_REALM: &str = "rampart";
/// How long an LDAP bind that succeeded is remembered, unless `cacheSeconds` says otherwise.
pub const DEFAULT_LDAP_CACHE_S: u64 = 60;
pub const MAX_LDAP_CACHE_S: u64 = 600;
pub const DEFAULT_LDAP_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_LDAP_TIMEOUT: Duration = Duration::from_secs(30);

/// `basicAuth`: users from an htpasswd file.
#[derive(Debug, Clone)]
pub struct BasicProviderModel {
    pub name: String,
    pub secret: (String, String),
    pub key: String,
    pub realm: String,
    pub user_header: Option<HeaderName>,
    pub forward_credentials: bool,
    /// Filled from the Secret once every object is read.
    pub users: Arc<Htpasswd>,
    /// SHA-256 of the file: a policy set that keeps it keeps the provider's memory of
    /// verified credentials.
    pub fingerprint: [u8; 32],
    pub origin: Origin,
}

/// How the connection to the LDAP server is secured (plain LDAP is never used: the users'
/// passwords cross it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LdapTransport {
    /// `ldaps://`.
    Ldaps,
    /// `ldap://` upgraded by StartTLS before anything else is sent.
    StartTls,
}

/// `ldap`: a directory that checks the password by a bind.
#[derive(Clone)]
pub struct LdapProviderModel {
    pub name: String,
    /// As written (`ldaps://host:port` or `ldap://host:port`).
    pub url: String,
    pub transport: LdapTransport,
    /// The server's name as its certificate must show it.
    pub host: String,
    pub ca_secret: Option<(String, String)>,
    /// PEM of the CAs from `caSecretRef` (filled once every object is read).
    pub ca_pem: Option<Vec<u8>>,
    pub bind_secret: Option<(String, String)>,
    /// The search account (filled from `bindSecretRef`; `None`: anonymous search).
    pub bind: Option<BindAccount>,
    pub user_base: String,
    pub user_filter: String,
    /// The attribute that holds the user's name (the principal's `sub`).
    pub user_attribute: String,
    pub group_base: Option<String>,
    pub group_filter: String,
    pub group_attribute: String,
    pub cache_s: u64,
    pub timeout: Duration,
    pub realm: String,
    pub user_header: Option<HeaderName>,
    pub groups_header: Option<HeaderName>,
    pub forward_credentials: bool,
    pub origin: Origin,
}

impl std::fmt::Debug for LdapProviderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapProviderModel")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("user_base", &self.user_base)
            .field("user_filter", &self.user_filter)
            .finish_non_exhaustive()
    }
}

impl LdapProviderModel {
    /// What the directory's connections and memory depend on: a policy set that keeps it keeps
    /// the provider's connection and remembered binds.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for part in [
            self.url.as_bytes(),
            &[self.transport as u8],
            self.ca_pem.as_deref().unwrap_or_default(),
            self.bind.as_ref().map_or(&[][..], |b| b.dn.as_bytes()),
            self.bind
                .as_ref()
                .map_or(&[][..], |b| b.password.as_bytes()),
            self.user_base.as_bytes(),
            self.user_filter.as_bytes(),
            self.user_attribute.as_bytes(),
            self.group_base.as_deref().unwrap_or_default().as_bytes(),
            self.group_filter.as_bytes(),
            self.group_attribute.as_bytes(),
            &self.cache_s.to_be_bytes(),
            &self.timeout.as_millis().to_be_bytes(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }
}

/// The account the user search binds as (never printed).
#[derive(Clone)]
pub struct BindAccount {
    pub dn: String,
    pub password: String,
}

impl std::fmt::Debug for BindAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BindAccount({})", self.dn)
    }
}

impl HttpValidator<'_> {
    pub(super) fn secret_ref(
        &mut self,
        at: &Spanned<SecretRefSpec>,
        field: &str,
    ) -> Option<(String, String)> {
        let r = &at.value;
        if crate::dns_name::is_dns_label(&r.namespace) && crate::dns_name::is_dns_subdomain(&r.name)
        {
            Some((r.namespace.clone(), r.name.clone()))
        } else {
            self.error(at, format!("{field}: namespace and name of a Secret"));
            None
        }
    }

    fn header(&mut self, at: Option<&Spanned<String>>) -> Option<Option<HeaderName>> {
        match at {
            None => Some(None),
            Some(h) => match HeaderName::from_bytes(h.value.as_bytes()) {
                Ok(name) => Some(Some(name)),
                Err(_) => {
                    self.error(h, "not a valid header name");
                    None
                }
            },
        }
    }

    fn realm(&mut self, at: Option<&Spanned<String>>) -> Option<String> {
        match at {
            None => Some(DEFAULT_REALM.to_owned()),
            Some(r)
                if !r.value.is_empty()
                    && r.value.len() <= 128
                    && r.value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                    && !r.value.contains(['"', '\\']) =>
            {
                Some(r.value.clone())
            }
            Some(r) => {
                self.error(
                    r,
                    "realm: 1 to 128 printable ASCII characters, without quotes or backslashes",
                );
                None
            }
        }
    }

    pub(super) fn basic_auth(
        &mut self,
        name: &str,
        spec: &Spanned<BasicAuthSpec>,
    ) -> Option<BasicProviderModel> {
        let raw = &spec.value;
        let secret = self.secret_ref(&raw.secret_ref, "basicAuth.secretRef");
        let realm = self.realm(raw.realm.as_ref());
        let user_header = self.header(raw.user_header.as_ref());
        Some(BasicProviderModel {
            name: name.to_owned(),
            secret: secret?,
            key: raw
                .key
                .clone()
                .unwrap_or_else(|| DEFAULT_HTPASSWD_KEY.to_owned()),
            realm: realm?,
            user_header: user_header?,
            forward_credentials: raw.forward_credentials,
            users: Arc::new(Htpasswd::default()),
            fingerprint: [0; 32],
            origin: self.so.at(&raw.secret_ref),
        })
    }

    pub(super) fn ldap(
        &mut self,
        name: &str,
        spec: &Spanned<LdapSpec>,
    ) -> Option<LdapProviderModel> {
        let raw = &spec.value;
        let url = raw.url.value.trim();
        let (transport, rest) = match (url.split_once("://"), raw.start_tls) {
            (Some(("ldaps", rest)), false) => (Some(LdapTransport::Ldaps), rest),
            (Some(("ldap", rest)), true) => (Some(LdapTransport::StartTls), rest),
            (Some(("ldaps", rest)), true) => {
                self.error(
                    &raw.url,
                    "ldap.url: ldaps:// is TLS already; startTls is for ldap://",
                );
                (None, rest)
            }
            (Some(("ldap", rest)), false) => {
                self.error(
                    &raw.url,
                    "ldap.url: plain ldap:// would carry users' passwords in clear text; use ldaps:// or startTls: true",
                );
                (None, rest)
            }
            _ => {
                self.error(
                    &raw.url,
                    "ldap.url: ldaps://host[:port] or ldap://host[:port]",
                );
                (None, "")
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let host = ldap_host(authority);
        if transport.is_some() && host.is_none() {
            self.error(
                &raw.url,
                "ldap.url: a host and optional port, with no path, user or query",
            );
        }
        let ca_secret = match &raw.ca_secret_ref {
            Some(r) => Some(self.secret_ref(r, "ldap.caSecretRef")?),
            None => None,
        };
        let bind_secret = match &raw.bind_secret_ref {
            Some(r) => Some(self.secret_ref(r, "ldap.bindSecretRef")?),
            None => None,
        };
        if !raw.user_base.value.contains('=') || raw.user_base.value.contains(['(', ')']) {
            self.error(
                &raw.user_base,
                "ldap.userBase: a DN such as ou=people,dc=example,dc=com",
            );
        }
        let user_filter = self.ldap_filter(
            raw.user_filter.as_ref(),
            "(uid={user})",
            &["{user}"],
            "userFilter",
        );
        let group_filter = self.ldap_filter(
            raw.group_filter.as_ref(),
            "(member={dn})",
            &["{dn}", "{user}"],
            "groupFilter",
        );
        let cache_s = match &raw.cache_seconds {
            None => DEFAULT_LDAP_CACHE_S,
            Some(c) if c.value <= MAX_LDAP_CACHE_S => c.value,
            Some(c) => {
                self.error(c, format!("ldap.cacheSeconds: at most {MAX_LDAP_CACHE_S}"));
                DEFAULT_LDAP_CACHE_S
            }
        };
        let timeout = match &raw.timeout {
            None => Some(DEFAULT_LDAP_TIMEOUT),
            Some(t) => match super::parse_duration(&t.value) {
                Some(d) if !d.is_zero() && d <= MAX_LDAP_TIMEOUT => Some(d),
                _ => {
                    self.error(t, "ldap.timeout: a duration from 1ms to 30s, such as 5s");
                    None
                }
            },
        };
        let realm = self.realm(raw.realm.as_ref());
        let user_header = self.header(raw.user_header.as_ref());
        let groups_header = self.header(raw.groups_header.as_ref());
        Some(LdapProviderModel {
            name: name.to_owned(),
            url: url.to_owned(),
            transport: transport?,
            host: host?,
            ca_secret,
            ca_pem: None,
            bind_secret,
            bind: None,
            user_base: raw.user_base.value.trim().to_owned(),
            user_filter: user_filter?,
            user_attribute: raw
                .user_attribute
                .clone()
                .unwrap_or_else(|| "uid".to_owned()),
            group_base: raw.group_base.clone(),
            group_filter: group_filter?,
            group_attribute: raw
                .group_attribute
                .clone()
                .unwrap_or_else(|| "cn".to_owned()),
            cache_s,
            timeout: timeout?,
            realm: realm?,
            user_header: user_header?,
            groups_header: groups_header?,
            forward_credentials: raw.forward_credentials,
            origin: self.so.at(spec),
        })
    }

    /// A filter with placeholders: it must parse as an LDAP filter (RFC 4515) once they are
    /// filled, and name the first of them.
    fn ldap_filter(
        &mut self,
        at: Option<&Spanned<String>>,
        default: &str,
        placeholders: &[&str],
        field: &str,
    ) -> Option<String> {
        let Some(at) = at else {
            return Some(default.to_owned());
        };
        let filter = at.value.trim();
        let mut filled = filter.to_owned();
        for p in placeholders {
            filled = filled.replace(p, "x");
        }
        if !filter.contains(placeholders[0]) {
            self.error(
                at,
                format!("ldap.{field}: must contain {}", placeholders[0]),
            );
            None
        } else if ldap3::parse_filter(&filled).is_err() {
            self.error(
                at,
                format!("ldap.{field}: not an LDAP filter (RFC 4515), such as {default}"),
            );
            None
        } else {
            Some(filter.to_owned())
        }
    }
}

/// The host of `host[:port]` (a DNS name, an IPv4 address or a bracketed IPv6 address).
fn ldap_host(authority: &str) -> Option<String> {
    if authority.is_empty() || authority.contains(['/', '?', '@', '#']) {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            host.parse::<std::net::Ipv6Addr>().ok()?;
            (host, rest.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return None;
    }
    let name_ok = host.parse::<std::net::IpAddr>().is_ok()
        || crate::dns_name::is_dns_subdomain(&host.to_ascii_lowercase());
    name_ok.then(|| host.to_owned())
}

/// Fills the `basicAuth` and `ldap` providers from the Secrets they name; a missing Secret or
/// entry, or an htpasswd line that cannot be used, is an error at the provider (naming the
/// Secret, the entry and the line; never a hash or password).
pub fn resolve_secrets(
    provider: &mut super::ProviderModel,
    secrets: &std::collections::BTreeMap<(String, String), SecretModel>,
    diags: &mut Vec<Diagnostic>,
) {
    let missing = |origin: &Origin, field: &str, (ns, name): &(String, String)| {
        Diagnostic::error(
            origin.clone(),
            format!("{field}: no Secret {ns}/{name} in the policy set ({LABEL_HINT})"),
        )
    };
    match provider {
        super::ProviderModel::Basic(p) => {
            let (ns, name) = &p.secret;
            let Some(secret) = secrets.get(&p.secret) else {
                diags.push(missing(&p.origin, "basicAuth.secretRef", &p.secret));
                return;
            };
            let Some(text) = secret
                .entries
                .get(&p.key)
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
            else {
                diags.push(Diagnostic::error(
                    p.origin.clone(),
                    format!(
                        "Secret {ns}/{name}: no text entry {:?} (an htpasswd file)",
                        p.key
                    ),
                ));
                return;
            };
            match Htpasswd::parse(text) {
                Ok(users) if users.is_empty() => diags.push(Diagnostic::error(
                    p.origin.clone(),
                    format!("Secret {ns}/{name}, {}: no users", p.key),
                )),
                Ok(users) => {
                    use sha2::Digest as _;
                    p.fingerprint = sha2::Sha256::digest(text.as_bytes()).into();
                    p.users = Arc::new(users);
                }
                Err(errors) => {
                    for e in errors {
                        diags.push(Diagnostic::error(
                            p.origin.clone(),
                            format!("Secret {ns}/{name}, {}: {e}", p.key),
                        ));
                    }
                }
            }
        }
        super::ProviderModel::Ldap(model) => {
            let p = Arc::make_mut(model);
            if let Some(ca) = &p.ca_secret {
                match crate::policy::secret::ca_bundle(secrets, ca, "ldap.caSecretRef", &p.origin) {
                    Ok(pem) => p.ca_pem = Some(pem),
                    Err(e) => diags.push(e),
                }
            }
            if let Some(bind) = &p.bind_secret {
                let Some(secret) = secrets.get(bind) else {
                    diags.push(missing(&p.origin, "ldap.bindSecretRef", bind));
                    return;
                };
                let text = |key: &str| {
                    secret
                        .entries
                        .get(key)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(|v| v.trim().to_owned())
                        .filter(|v| !v.is_empty())
                };
                match (text("bindDN"), text("password")) {
                    (Some(dn), Some(password)) => p.bind = Some(BindAccount { dn, password }),
                    _ => diags.push(Diagnostic::error(
                        p.origin.clone(),
                        format!(
                            "Secret {}/{}: entries bindDN and password, both non-empty text",
                            bind.0, bind.1
                        ),
                    )),
                }
            }
        }
        super::ProviderModel::Oidc(model) => super::oidc::resolve_secret(model, secrets, diags),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ldap_hosts_are_names_or_addresses_with_an_optional_port() {
        assert_eq!(
            super::ldap_host("ldap.example.com:636").as_deref(),
            Some("ldap.example.com")
        );
        assert_eq!(super::ldap_host("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(
            super::ldap_host("[fd00::1]:389").as_deref(),
            Some("fd00::1")
        );
        for bad in [
            "",
            "user@host",
            "host/dc=x",
            "host:0",
            "host:99999",
            "ho st",
            "[zz]:1",
        ] {
            assert_eq!(super::ldap_host(bad), None, "{bad}");
        }
    }
}
