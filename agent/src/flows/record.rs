//! One flow log record. The JSON field names and values are an interface (documented in the
//! README's flow log section): add fields, never rename or remove them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Who saw the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Observer {
    /// A kernel program (XDP or TC) on a pod's or the node's interface.
    Kernel,
    /// The agent's mTLS proxy (tunnel inbound side, or a redirected flow outbound).
    Proxy,
}

/// One end of a flow: the address and port, the identity there, and what that identity is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPeer {
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// Numeric security identity (0 when unknown).
    pub identity: u32,
    /// `namespace/name` of the pod with this address, if one has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The workload's SPIFFE ID (what the mesh's certificates name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// For addresses outside the cluster's pods: the policy CIDR the address belongs to, or a
    /// reserved name (`world`, `host`, `remote-node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
}

/// The policy rule that decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// `Kind namespace/name` (e.g. `NetworkPolicy prod/allow-web`) or `ClusterPolicy name`.
    pub name: String,
    /// The rule's direction as written in the policy (`ingress` or `egress`).
    pub direction: String,
    /// Index of the rule in its list (0-based).
    pub rule: usize,
    /// `allow` or `deny`.
    pub action: String,
    /// `enforce` or `audit`.
    pub mode: String,
}

/// What decided when no rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// A policy rule (see `policy`).
    Rule,
    /// The endpoint is isolated in this direction and no rule allowed the flow.
    DefaultDeny,
    /// No policy isolates the endpoint in this direction.
    DefaultAllow,
    /// A MeshPolicy (mTLS-only port) or the proxy's checks of it.
    MeshPolicy,
    /// Not a policy decision: a malformed packet, a full table, ...
    Datapath,
}

/// The proxy's part of a proxy record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyInfo {
    /// `inbound` (the tunnel port) or `outbound` (a redirected flow).
    pub side: String,
    /// The filter that refused (`mtls` today; the L7 filters add theirs).
    pub filter: String,
    /// The peer's SPIFFE ID, once the handshake showed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_spiffe_id: Option<String>,
}

/// One HTTP request the proxy's L7 filters judged (the access log): what was asked, who asked,
/// what the filters decided. Never holds a credential: the path is logged without its query,
/// and no header value is logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAccess {
    pub method: String,
    pub host: String,
    /// The request path, without the query string.
    pub path: String,
    /// The status sent back (the pod's, or the proxy's refusal).
    pub status: u16,
    /// From the request head to the response head, in microseconds.
    pub duration_us: u64,
    /// The MeshPolicy whose `http` rules applied.
    pub policy: String,
    /// `jwt` or `api_key`, when a credential authenticated the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authn_method: Option<String>,
    /// The JWT's `sub` (or the provider, when the token has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_client: Option<String>,
    /// The rate-limit bucket that decided, and tokens left in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_remaining: Option<u32>,
    /// For a refused request: the filter and its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// The SNI of an ingress client whose TLS the proxy terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// The WAF's matched rule ids (without the blocking-evaluation rules), when it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waf_rule_ids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf_anomaly_score: Option<u32>,
    /// How much of the body the WAF judged: `inspected`, `prefix_inspected`, `not_inspected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf_body: Option<String>,
    /// How much of the response the WAF judged, when the route inspects responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf_response_body: Option<String>,
    /// The outbound anomaly score of the response rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf_outbound_anomaly_score: Option<u32>,
}

/// One flow log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    pub node: String,
    pub observer: Observer,
    /// `ingress` or `egress`, seen from the local endpoint (the proxy: `ingress` inbound, `egress`
    /// outbound).
    pub direction: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub protocol: String,
    pub src: FlowPeer,
    pub dst: FlowPeer,
    /// `allow`, `deny`, `audit` (a deny audit mode let through) or `redirect` (to the proxy).
    pub verdict: String,
    /// The drop reason's name (`policy_denied`, ..., or the proxy's refusal reason); absent for
    /// allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    pub decided_by: DecidedBy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// MeshPolicies that make the destination port mTLS-only (proxy records and `mtls_required`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mesh_policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_index: Option<u32>,
    /// Length of the packet (kernel records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyInfo>,
    /// For the proxy's HTTP requests: the access-log part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpAccess>,
}

impl FlowRecord {
    /// Whether the record matches a `--verdict` filter.
    pub fn has_verdict(&self, verdict: &str) -> bool {
        self.verdict == verdict
    }
}

pub fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

impl fmt::Display for FlowPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (Some(ip), 0) => write!(f, "{ip}")?,
            (Some(IpAddr::V6(ip)), port) => write!(f, "[{ip}]:{port}")?,
            (Some(ip), port) => write!(f, "{ip}:{port}")?,
            (None, _) => f.write_str("?")?,
        }
        if let Some(pod) = &self.pod {
            write!(f, " ({pod})")
        } else if let Some(cidr) = &self.cidr {
            write!(f, " ({cidr})")
        } else {
            Ok(())
        }
    }
}

/// The one-line text form `rampart flows` prints without `--json`.
impl fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {:<7} {:<6} {} {} -> {}{}",
            self.time,
            self.node,
            self.direction,
            self.verdict.to_uppercase(),
            self.protocol,
            self.src,
            self.dst,
            match self.observer {
                Observer::Kernel => "",
                Observer::Proxy => " [proxy]",
            }
        )?;
        if let Some(http) = &self.http {
            write!(
                f,
                " {} {}{} {} {}us",
                http.method, http.host, http.path, http.status, http.duration_us
            )?;
            if let Some(principal) = http.principal.as_ref().or(http.api_key_client.as_ref()) {
                write!(f, " principal={principal}")?;
            }
            if !http.waf_rule_ids.is_empty() {
                let ids: Vec<String> = http.waf_rule_ids.iter().map(u32::to_string).collect();
                write!(f, " waf_rules={}", ids.join(","))?;
            }
        }
        // A refused request's reason names its filter (`dlp:blocked`, `waf:sqli`).
        let denied_by = self.http.as_ref().and_then(|h| h.denied_by.as_ref());
        if let Some(reason) = denied_by.or(self.drop_reason.as_ref()) {
            write!(f, " reason={reason}")?;
        }
        match (&self.policy, self.decided_by) {
            (Some(p), _) => write!(
                f,
                " by {} {}[{}] {} ({})",
                p.name, p.direction, p.rule, p.action, p.mode
            ),
            (None, DecidedBy::MeshPolicy) if !self.mesh_policies.is_empty() => {
                // Each entry is `MeshPolicy <name>` already.
                write!(f, " by {}", self.mesh_policies.join(", "))
            }
            (None, by) => write!(
                f,
                " by {}",
                serde_json::to_value(by)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text form of a WAF refusal names the pods, the request, who sent it and the rules
    /// that matched.
    #[test]
    fn the_text_form_of_a_waf_refusal_names_its_rules() {
        let record: FlowRecord = serde_json::from_value(serde_json::json!({
            "time": "2026-12-04T10:00:00.000000000Z", "node": "node-2", "observer": "proxy",
            "direction": "ingress", "protocol": "tcp",
            "src": {"ip": "10.244.1.10", "port": 40000, "identity": 256, "pod": "shop/frontend"},
            "dst": {"ip": "10.244.1.11", "port": 8080, "identity": 257, "pod": "shop/backend"},
            "verdict": "deny", "drop_reason": "sqli", "decided_by": "mesh_policy",
            "mesh_policies": ["MeshPolicy backend-api-l7"],
            "http": {"method": "GET", "host": "backend", "path": "/api/v1/orders", "status": 403,
                "duration_us": 900, "policy": "backend-api-l7", "principal": "alice",
                "denied_by": "waf:sqli", "waf_rule_ids": [942100, 942190]}
        }))
        .expect("a record");
        assert_eq!(
            record.to_string(),
            "2026-12-04T10:00:00.000000000Z node-2 ingress DENY   tcp 10.244.1.10:40000 (shop/frontend) -> 10.244.1.11:8080 (shop/backend) [proxy] GET backend/api/v1/orders 403 900us principal=alice waf_rules=942100,942190 reason=waf:sqli by MeshPolicy backend-api-l7"
        );
    }
}
