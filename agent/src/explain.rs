//! `rampart policy explain`: for a flow (source, destination, protocol, port), the verdict each
//! end's kernel program reaches, the policy rule that decides it and its mode, and whether the
//! port takes only mTLS. Pure: works on a compiled set, the running agent's or one compiled
//! offline from files. The decision is `verdict::decide`, the kernel's lookups in its order.

use std::net::IpAddr;

use ipnet::IpNet;
use rampart_common::policy::Verdict;
use rampart_common::reason::DropReason;
use serde::{Deserialize, Serialize};

use crate::flows::FlowNames;
use crate::flows::record::{DecidedBy, FlowPeer, PolicyRef, protocol_name};
use crate::mesh::table::principal_allowed;
use crate::policy::compile::Compiled;
use crate::policy::verdict::{self, EndDecision};
use crate::spiffe::SpiffeId;

/// The question, as the user typed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainQuery {
    /// A pod (`namespace/name`), an IP address or a CIDR (its first address is used).
    pub from: String,
    pub to: String,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error(
        "{field} {value:?}: not a pod (namespace/name) of the policy set, an IP address or a CIDR"
    )]
    Endpoint { field: &'static str, value: String },
    #[error("from {from} to {to}: one is IPv4 and the other IPv6")]
    MixedFamilies { from: IpAddr, to: IpAddr },
}

/// The decision at one end (the source pod's egress, or the destination pod's ingress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndExplanation {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `allow`, `deny` or `redirect` (allowed, and the mTLS proxy carries it).
    pub verdict: String,
    /// A deny that audit mode lets through (counted, not enforced).
    pub audit: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    pub decided_by: DecidedBy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
}

/// The port's mTLS requirement, when a MeshPolicy makes it mTLS-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtlsExplanation {
    pub policies: Vec<String>,
    /// Whether the source's SPIFFE ID is an allowed principal (false for a non-pod source).
    pub source_allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_spiffe_id: Option<String>,
    /// The MeshPolicy whose `ingress` section takes the flow through the proxy, for a source
    /// outside the cluster (arriving on an uplink) when the port has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_policy: Option<String>,
    /// The HTTP chain the destination's proxy runs on each request of the flow, when a
    /// MeshPolicy has an `http` section for the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpChainExplanation>,
}

/// The filters of a port's HTTP chain, in the order the proxy runs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpChainExplanation {
    /// The MeshPolicy whose `http` section it is.
    pub policy: String,
    /// One entry per filter, e.g. `authentication (jwt corp-idp)`.
    pub filters: Vec<String>,
}

/// What `http` makes the proxy do, filter by filter (authn → authz → rate limits → DLP → WAF).
fn http_chain(policy: &str, http: &crate::policy::http::HttpPolicyModel) -> HttpChainExplanation {
    use crate::policy::http::ProviderModel;
    let mut filters = Vec::new();
    if let Some(authn) = &http.authentication {
        let providers: Vec<String> = authn
            .providers
            .iter()
            .map(|p| match p {
                ProviderModel::Jwt(_) => format!("jwt {}", p.name()),
                ProviderModel::ApiKeys(_) => format!("api keys {}", p.name()),
                ProviderModel::Basic(_) => format!("basic auth {}", p.name()),
                ProviderModel::Ldap(l) => format!("ldap {} ({})", p.name(), l.url),
                ProviderModel::Oidc(o) => format!("oidc login {} ({})", p.name(), o.issuer),
            })
            .collect();
        let join = if authn.require_all { " and " } else { " or " };
        filters.push(format!("authentication ({})", providers.join(join)));
    }
    if !http.rules.is_empty() {
        filters.push(format!(
            "authorization ({} rules: a Deny wins, else an Allow must match)",
            http.rules.len()
        ));
    }
    if !http.rate_limits.is_empty() {
        let buckets: Vec<&str> = http.rate_limits.iter().map(|b| b.name.as_str()).collect();
        let shadow = if http.rate_limit_shadow {
            ", shadow"
        } else {
            ""
        };
        filters.push(format!("rate limits ({}{shadow})", buckets.join(", ")));
    }
    if let Some(dlp) = &http.dlp {
        let mut on = Vec::new();
        if dlp.requests.is_some() {
            on.push("requests");
        }
        if !dlp.set.detectors.is_empty() {
            on.push("responses");
        }
        filters.push(format!("DLP ({})", on.join(", ")));
    }
    if let Some(waf) = &http.waf {
        filters.push(format!(
            "WAF ({}, paranoia level {})",
            if waf.block { "block" } else { "detect" },
            waf.profile.paranoia_level
        ));
    }
    HttpChainExplanation {
        policy: policy.to_owned(),
        filters,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub from: FlowPeer,
    pub to: FlowPeer,
    pub protocol: String,
    /// `allow`, `deny`, or `audit` (a deny audit mode lets through).
    pub verdict: String,
    /// Absent where that end is not a pod this node enforces for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EndExplanation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<EndExplanation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsExplanation>,
}

/// Explains `query` against `compiled`.
pub fn explain(compiled: &Compiled, query: &ExplainQuery) -> Result<Explanation, ExplainError> {
    let src = resolve(compiled, "from", &query.from)?;
    let dst = resolve(compiled, "to", &query.to)?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(ExplainError::MixedFamilies { from: src, to: dst });
    }
    let names = FlowNames::from_compiled(compiled);
    let decision = verdict::decide(&compiled.state, src, dst, query.protocol, query.port);
    let end = |d: Option<EndDecision>| d.map(|d| end_explanation(&names, &d));
    let (egress, ingress) = (end(decision.egress), end(decision.ingress));
    let ends = [&egress, &ingress];
    let verdict = if ends
        .iter()
        .any(|e| e.as_ref().is_some_and(|e| e.verdict == "deny" && !e.audit))
    {
        "deny"
    } else if ends
        .iter()
        .any(|e| e.as_ref().is_some_and(|e| e.verdict == "deny"))
    {
        "audit"
    } else {
        "allow"
    };
    let from = names.peer(Some(src), 0, identity_of(compiled, src));
    let to = names.peer(Some(dst), query.port, identity_of(compiled, dst));
    let mtls = (query.protocol == 6)
        .then(|| {
            compiled
                .mesh
                .iter()
                .find(|r| r.identity == to.identity && r.port == query.port)
        })
        .flatten()
        .map(|route| {
            let spiffe = compiled.workloads.get(src).map(|w| w.spiffe_id.clone());
            let source_allowed = spiffe
                .as_deref()
                .and_then(|s| SpiffeId::parse(s).ok())
                .is_some_and(|id| principal_allowed(route, &id));
            let ingress_policy = route.ingress_policy.clone().filter(|_| spiffe.is_none());
            let http = route
                .http_policy
                .as_deref()
                .zip(route.http.as_deref())
                .map(|(policy, http)| http_chain(policy, http));
            MtlsExplanation {
                policies: route.policies.clone(),
                source_allowed,
                source_spiffe_id: spiffe.map(|id| id.to_string()),
                ingress_policy,
                http,
            }
        });
    Ok(Explanation {
        from,
        to,
        protocol: protocol_name(query.protocol),
        verdict: verdict.to_owned(),
        egress,
        ingress,
        mtls,
    })
}

fn end_explanation(names: &FlowNames, d: &EndDecision) -> EndExplanation {
    let policy = names.policy(d.cookie);
    let decided_by = if policy.is_some() {
        DecidedBy::Rule
    } else if d.reason == DropReason::POLICY_DENIED {
        DecidedBy::DefaultDeny
    } else {
        DecidedBy::DefaultAllow
    };
    EndExplanation {
        direction: d.direction.name().to_owned(),
        verdict: d.verdict.name().to_owned(),
        audit: d.audit && d.verdict == Verdict::DENY,
        drop_reason: (d.reason != DropReason::NONE).then(|| d.reason.name().to_owned()),
        decided_by,
        policy,
    }
}

/// The identity the kernel's ipcache gives `addr` (longest prefix), as `verdict` computes it.
fn identity_of(compiled: &Compiled, addr: IpAddr) -> u32 {
    compiled
        .state
        .ipcache
        .iter()
        .filter(|r| IpNet::new(r.addr, r.prefix_len).is_ok_and(|n| n.contains(&addr)))
        .max_by_key(|r| r.prefix_len)
        .map_or(rampart_common::identity::Identity::WORLD.0, |r| r.identity)
}

fn resolve(compiled: &Compiled, field: &'static str, value: &str) -> Result<IpAddr, ExplainError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.network());
    }
    let mut addrs: Vec<IpAddr> = compiled
        .workloads
        .iter()
        .filter(|w| *w.pod == *value)
        .map(|w| w.addr)
        .collect();
    // A dual-stack pod is explained on its IPv4 address.
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .first()
        .copied()
        .ok_or_else(|| ExplainError::Endpoint {
            field,
            value: value.to_owned(),
        })
}

/// The text `rampart policy explain` prints.
pub fn render(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} -> {}: {}",
        e.protocol,
        e.from,
        e.to,
        e.verdict.to_uppercase()
    );
    for (what, end) in [("egress ", &e.egress), ("ingress", &e.ingress)] {
        let Some(end) = end else {
            let _ = writeln!(out, "  {what}: not a pod this node enforces for");
            continue;
        };
        let by = match (&end.policy, end.decided_by) {
            (Some(p), _) => format!(
                "{} {} rule {} ({}, {})",
                p.name, p.direction, p.rule, p.action, p.mode
            ),
            (None, DecidedBy::DefaultDeny) => {
                "default deny (a policy isolates the pod; no rule allows this)".into()
            }
            (None, _) => "default allow (no policy isolates the pod in this direction)".into(),
        };
        let audit = if end.audit {
            " [audit: not enforced]"
        } else {
            ""
        };
        let _ = writeln!(out, "  {what}: {}{audit} by {by}", end.verdict);
    }
    if let Some(policy) = e.mtls.as_ref().and_then(|m| m.ingress_policy.as_ref()) {
        let _ = writeln!(
            out,
            "  from outside the cluster: through the proxy's ingress (MeshPolicy {policy}) when it arrives on an uplink; plaintext anywhere else is dropped"
        );
    } else if let Some(m) = &e.mtls {
        let _ = writeln!(
            out,
            "  mTLS only ({}): plaintext is dropped; source {} {}",
            m.policies.join(", "),
            m.source_spiffe_id.as_deref().unwrap_or("(not a pod)"),
            if m.source_allowed {
                "is an allowed principal"
            } else {
                "is NOT an allowed principal: the proxy refuses it"
            }
        );
    }
    if let Some(chain) = e.mtls.as_ref().and_then(|m| m.http.as_ref()) {
        let _ = writeln!(
            out,
            "  each HTTP request then passes MeshPolicy {}'s chain: {}",
            chain.policy,
            chain.filters.join(" -> ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::compile_all_local;

    /// The example set in `policies/`, every pod local.
    fn examples() -> Compiled {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let checked = crate::policy::check(crate::policy::source::read_dir(&dir)).expect("valid");
        compile_all_local(&checked.model, "cluster.local")
    }

    fn ask(c: &Compiled, from: &str, to: &str, port: u16) -> Explanation {
        explain(
            c,
            &ExplainQuery {
                from: from.into(),
                to: to.into(),
                protocol: 6,
                port,
            },
        )
        .expect("explained")
    }

    #[test]
    fn names_the_rule_at_each_end() {
        let c = examples();
        let e = ask(&c, "shop/backend", "shop/db", 5432);
        assert_eq!(e.verdict, "allow");
        let ingress = e.ingress.expect("db is local");
        assert_eq!(ingress.decided_by, DecidedBy::Rule);
        assert_eq!(
            ingress.policy.expect("rule").name,
            "NetworkPolicy shop/db-from-backend"
        );

        let e = ask(&c, "shop/frontend", "shop/db", 5432);
        assert_eq!(e.verdict, "deny");
        let ingress = e.ingress.expect("db is local");
        assert_eq!(ingress.policy.expect("deny rule").action, "deny");

        let e = ask(&c, "shop/db", "shop/frontend", 8080);
        assert_eq!(e.verdict, "deny");
        assert_eq!(
            e.egress.expect("db is local").decided_by,
            DecidedBy::DefaultDeny
        );
    }

    #[test]
    fn audit_denies_are_reported_as_audit() {
        let e = ask(&examples(), "shop/frontend", "shop/backend", 8080);
        assert_eq!(e.verdict, "audit");
        assert!(e.ingress.expect("backend is local").audit);
    }

    #[test]
    fn endpoints_are_pods_ips_or_cidrs() {
        let c = examples();
        let by_ip = ask(&c, "10.244.1.11", "10.244.1.0/24", 5432);
        assert_eq!(by_ip.from.pod.as_deref(), Some("shop/backend"));
        let err = explain(
            &c,
            &ExplainQuery {
                from: "shop/nope".into(),
                to: "shop/db".into(),
                protocol: 6,
                port: 1,
            },
        )
        .expect_err("unknown pod");
        assert!(err.to_string().starts_with("from \"shop/nope\""), "{err}");
        let mixed = explain(
            &c,
            &ExplainQuery {
                from: "::1".into(),
                to: "shop/db".into(),
                protocol: 6,
                port: 1,
            },
        );
        assert!(matches!(mixed, Err(ExplainError::MixedFamilies { .. })));
    }

    /// With the MeshPolicies of `policies/mesh/`, explain names the mTLS requirement and the
    /// HTTP chain each request of the flow passes, filter by filter.
    #[test]
    fn names_the_mesh_policy_and_its_http_chain() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let text = ["workloads.yaml", "mesh/backend-api-l7.yaml"]
            .map(|f| std::fs::read_to_string(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
            .join("---\n");
        let checked = crate::policy::check(crate::policy::source::parse_str(
            std::path::Path::new("examples.yaml"),
            &text,
        ))
        .unwrap_or_else(|d| panic!("{d:?}"));
        let c = compile_all_local(&checked.model, "cluster.local");
        let e = ask(&c, "shop/frontend", "shop/backend", 8080);
        let mtls = e.mtls.clone().expect("mTLS-only port");
        assert!(mtls.source_allowed);
        let chain = mtls.http.expect("an http chain");
        assert_eq!(chain.policy, "backend-api-l7");
        assert_eq!(
            chain.filters,
            [
                "authentication (jwt corp-idp)",
                "authorization (3 rules: a Deny wins, else an Allow must match)",
                "rate limits (per-user, whole-api)",
                "DLP (requests, responses)",
                "WAF (block, paranoia level 1)",
            ]
        );
        let text = render(&e);
        assert!(
            text.contains("mTLS only (MeshPolicy backend-api-l7): "),
            "{text}"
        );
        assert!(
            text.contains("MeshPolicy backend-api-l7's chain: authentication (jwt corp-idp) -> "),
            "{text}"
        );
        // A port without an http section has no chain.
        assert!(
            ask(&c, "shop/frontend", "shop/backend", 9090)
                .mtls
                .is_none()
        );
    }
}
