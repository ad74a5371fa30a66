//! `extAuthz`: an external authorization service in Envoy's protocol (HTTP or gRPC
//! `envoy.service.auth.v3.Authorization/Check`), so servers written for Envoy (OPA's Envoy
//! plugin, commercial ones) plug in unchanged.

use std::time::Duration;

use crate::policy::spec::compact::Spanned;
use hyper::header::HeaderName;

use super::super::diag::{Diagnostic, Origin};
use super::super::secret::SecretModel;
use super::super::spec::http::ExtAuthzSpec;
use super::HttpValidator;

/// Envoy's default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The service's base URI (scheme, authority, path prefix without a trailing `/`).
    Http { base: String },
    /// The server's `http[s]://host:port`.
    Grpc { base: String },
}

impl Transport {
    /// Whether the authorizer is reached over TLS (`https://`).
    pub fn tls(&self) -> bool {
        let (Transport::Http { base } | Transport::Grpc { base }) = self;
        base.starts_with("https://")
    }
}

#[derive(Debug, Clone)]
pub struct ExtAuthzModel {
    pub transport: Transport,
    pub timeout: Duration,
    /// An authorizer that fails lets the request through (never the default).
    pub failure_allows: bool,
    pub headers_to_send: Vec<HeaderName>,
    pub headers_to_upstream: Vec<HeaderName>,
    pub headers_to_client: Vec<HeaderName>,
    /// `caSecretRef`, and the PEM of its `ca.crt` once resolved (`resolve_secret`).
    pub ca_secret: Option<(String, String)>,
    pub ca_pem: Option<Vec<u8>>,
    pub origin: Origin,
}

impl HttpValidator<'_> {
    pub(super) fn ext_authz(&mut self, spec: &Spanned<ExtAuthzSpec>) -> Option<ExtAuthzModel> {
        let raw = &spec.value;
        let transport = match (&raw.http, &raw.grpc) {
            (Some(url), None) => Transport::Http {
                base: self.authorizer_url(url, true)?,
            },
            (None, Some(url)) => Transport::Grpc {
                base: self.authorizer_url(url, false)?,
            },
            _ => {
                self.error(spec, "extAuthz: exactly one of http, grpc");
                return None;
            }
        };
        let timeout = match &raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => match super::parse_duration(&t.value) {
                Some(d) if !d.is_zero() && d <= MAX_TIMEOUT => d,
                _ => {
                    self.error(
                        t,
                        "extAuthz.timeout: a duration from 1ms to 10s, such as 200ms",
                    );
                    return None;
                }
            },
        };
        let failure_allows = match raw.failure_mode.as_ref().map(|m| m.value.as_str()) {
            None | Some("Deny") => false,
            Some("Allow") => true,
            Some(other) => {
                if let Some(at) = &raw.failure_mode {
                    self.error(at, format!("extAuthz.failureMode {other:?}: Deny or Allow"));
                }
                return None;
            }
        };
        let mut names = |list: &Option<Vec<String>>, field: &str| -> Option<Vec<HeaderName>> {
            let mut out = Vec::new();
            for name in list.iter().flatten() {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => out.push(h),
                    Err(_) => {
                        self.error(
                            spec,
                            format!("extAuthz.{field}: {name:?} is not a header name"),
                        );
                        return None;
                    }
                }
            }
            Some(out)
        };
        let headers_to_send = names(&raw.headers_to_send, "headersToSend")?;
        let headers_to_upstream = names(&raw.headers_to_upstream, "headersToUpstream")?;
        let headers_to_client = names(&raw.headers_to_client, "headersToClient")?;
        let ca_secret = match &raw.ca_secret_ref {
            None => None,
            Some(r) if !transport.tls() => {
                self.error(r, "extAuthz.caSecretRef: only for an https:// authorizer");
                return None;
            }
            Some(r) => Some(self.secret_ref(r, "extAuthz.caSecretRef")?),
        };
        Some(ExtAuthzModel {
            transport,
            timeout,
            failure_allows,
            headers_to_send,
            headers_to_upstream,
            headers_to_client,
            ca_secret,
            ca_pem: None,
            origin: self.so.at(spec),
        })
    }

    /// `http[s]://host:port[/prefix]` (a prefix only for the HTTP protocol).
    fn authorizer_url(&mut self, url: &Spanned<String>, prefix_allowed: bool) -> Option<String> {
        let text = url.value.trim().trim_end_matches('/');
        let parsed = text.parse::<hyper::Uri>().ok();
        let ok = parsed.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && u.query().is_none()
                && (prefix_allowed || u.path() == "/" || u.path().is_empty())
                && !text.contains('@')
        });
        if ok {
            Some(text.to_owned())
        } else if prefix_allowed {
            self.error(url, "extAuthz.http: http[s]://host[:port][/path-prefix]");
            None
        } else {
            self.error(
                url,
                "extAuthz.grpc: http://host[:port] (HTTP/2 without TLS) or https://host[:port]",
            );
            None
        }
    }
}

/// Fills `caSecretRef`'s CAs from its Secret; a missing Secret or `ca.crt`, or one without a
/// PEM certificate, is an error at the `extAuthz` section.
pub fn resolve_secret(
    model: &mut ExtAuthzModel,
    secrets: &std::collections::BTreeMap<(String, String), SecretModel>,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(ca) = &model.ca_secret else {
        return;
    };
    match super::super::secret::ca_bundle(secrets, ca, "extAuthz.caSecretRef", &model.origin) {
        Ok(pem) => model.ca_pem = Some(pem),
        Err(e) => diags.push(e),
    }
}
