//! Why traffic was refused: two **append-only** tables, the kernel's drop reasons
//! ([`DropReason`], shared by the kernel programs, the agent's metrics
//! `rampart_drops_total{reason}` and the flow log) and the proxy's refusal reasons
//! ([`ProxyReason`], one namespace per filter). A code or a name, once published, never changes
//! meaning; new reasons get the next free code of their table or namespace.
//!
//! What changes together when a reason is added (the tests below and in the agent check the
//! tables; the rest is by hand):
//! - the metric labels: `rampart_drops_total{reason}` / `rampart_audit_total{reason}`, and
//!   `rampart_l7_denied_total{filter,reason}`, `rampart_tunnel_denied_total{reason}`,
//!   `rampart_proxy_outbound_errors_total{reason}`, `rampart_ingress_refused_total{reason}`;
//! - the flow records' `reason` / `filter` (`flows/record.rs`), which use the same names;
//! - the Grafana dashboard (`deploy/grafana/`), whose panels list reasons;
//! - the reason tables in ARCHITECTURE.md and `policies/README.md`.

/// Why a packet was dropped (or, in audit mode, would have been). `0` is never a drop.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DropReason(pub u8);

impl DropReason {
    /// Not a drop (used in events for forwarded packets).
    pub const NONE: DropReason = DropReason(0);
    /// The local endpoint is isolated in this direction and no rule allows the flow.
    pub const POLICY_DENIED: DropReason = DropReason(1);
    /// An explicit deny rule matched the flow.
    pub const POLICY_DENY_RULE: DropReason = DropReason(2);
    /// Header fields are inconsistent (bad IP version, IHL below 5, length fields).
    pub const INVALID_PACKET: DropReason = DropReason(3);
    /// The packet ends inside a header the decision needs.
    pub const TRUNCATED_HEADER: DropReason = DropReason(4);
    /// A later IP fragment whose first fragment was not seen, was dropped, or is too old (see
    /// `frag.rs`): it cannot be tied to a flow.
    pub const UNSUPPORTED_FRAGMENT: DropReason = DropReason(5);
    /// A new flow was allowed but its conntrack entry could not be created.
    pub const CT_FULL: DropReason = DropReason(6);
    /// A map lookup that cannot fail did (a program/map mismatch).
    pub const MAP_LOOKUP_FAILED: DropReason = DropReason(7);
    /// The source address of a packet from a pod does not belong to that pod.
    pub const SOURCE_SPOOFED: DropReason = DropReason(8);
    /// A frame from a pod that is neither IPv4, IPv6 nor ARP.
    pub const UNSUPPORTED_L3: DropReason = DropReason(9);
    /// More IPv6 extension headers than the program walks, or a header it cannot skip.
    pub const UNSUPPORTED_IPV6_EXT: DropReason = DropReason(10);
    /// Policy requires mTLS for this destination port, and the packet did not come through the
    /// local proxy (plaintext that bypasses the tunnel).
    pub const MTLS_REQUIRED: DropReason = DropReason(11);
    /// The flow must go to the local proxy, and its listener is not there.
    pub const PROXY_UNAVAILABLE: DropReason = DropReason(12);
    /// A source identity opened new connections to a destination port faster than its
    /// MeshPolicy's flood brake allows.
    pub const FLOOD_BRAKE: DropReason = DropReason(13);
    /// A new flow to a Service address and port whose Service has no ready backend (kube-proxy
    /// rejects these).
    pub const NO_SERVICE_BACKEND: DropReason = DropReason(14);

    /// Reasons are counted in slots `0..SLOTS`; codes at or above it share the last slot.
    /// (`DROP_STATS_V1` had 16; `_V2` leaves room for 50 more reasons.)
    pub const SLOTS: u32 = 64;

    /// Every defined reason, in code order.
    pub const ALL: [DropReason; 15] = [
        DropReason::NONE,
        DropReason::POLICY_DENIED,
        DropReason::POLICY_DENY_RULE,
        DropReason::INVALID_PACKET,
        DropReason::TRUNCATED_HEADER,
        DropReason::UNSUPPORTED_FRAGMENT,
        DropReason::CT_FULL,
        DropReason::MAP_LOOKUP_FAILED,
        DropReason::SOURCE_SPOOFED,
        DropReason::UNSUPPORTED_L3,
        DropReason::UNSUPPORTED_IPV6_EXT,
        DropReason::MTLS_REQUIRED,
        DropReason::PROXY_UNAVAILABLE,
        DropReason::FLOOD_BRAKE,
        DropReason::NO_SERVICE_BACKEND,
    ];

    /// The snake_case name used in metric labels and flow logs.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "none",
            1 => "policy_denied",
            2 => "policy_deny_rule",
            3 => "invalid_packet",
            4 => "truncated_header",
            5 => "unsupported_fragment",
            6 => "ct_full",
            7 => "map_lookup_failed",
            8 => "source_spoofed",
            9 => "unsupported_l3",
            10 => "unsupported_ipv6_ext",
            11 => "mtls_required",
            12 => "proxy_unavailable",
            13 => "flood_brake",
            14 => "no_service_backend",
            _ => "unknown",
        }
    }
}

/// Traffic direction, always from the local endpoint's point of view.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Direction(pub u8);

impl Direction {
    /// Into the local endpoint (its ingress policy applies).
    pub const INGRESS: Direction = Direction(0);
    /// Out of the local endpoint (its egress policy applies).
    pub const EGRESS: Direction = Direction(1);
    pub const ALL: [Direction; 2] = [Direction::INGRESS, Direction::EGRESS];

    pub const fn name(self) -> &'static str {
        if self.0 == 0 { "ingress" } else { "egress" }
    }

    pub const fn opposite(self) -> Direction {
        Direction(1 - (self.0 & 1))
    }
}

/// Index of (reason, direction) in `DROP_STATS_V2` / `AUDIT_STATS_V2`.
pub const fn drop_slot(reason: DropReason, dir: Direction) -> u32 {
    let r = if (reason.0 as u32) < DropReason::SLOTS {
        reason.0 as u32
    } else {
        DropReason::SLOTS - 1
    };
    r * 2 + (dir.0 as u32 & 1)
}

/// Defines one namespace of [`ProxyReason`] (`Name in Variant`): a dense, append-only `u8` code
/// per reason and its label, and the conversion into [`ProxyReason`]. (A macro, not a derive crate: the kernel crate shares this file and takes no
/// proc-macro dependencies.)
macro_rules! reasons {
    (
        $(#[$doc:meta])*
        $name:ident in $namespace:ident {
            $( $(#[$vdoc:meta])* $variant:ident = $code:literal => $label:literal, )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vdoc])* $variant = $code, )*
        }

        impl $name {
            /// Every reason, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The snake_case label of metrics and flow records.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }

        impl From<$name> for ProxyReason {
            fn from(reason: $name) -> ProxyReason {
                ProxyReason::$namespace(reason)
            }
        }
    };
}

reasons! {
    /// `http`: the request (or response) as sent cannot be judged the way the pod reads it.
    HttpReason in Http {
        /// `CONNECT` (405).
        Connect = 0 => "connect",
        /// A transfer coding other than `chunked` (501 on a request, 502 on a response).
        TransferCoding = 1 => "transfer_coding",
        /// A path that is not absolute (or `*` for OPTIONS), or does not parse after
        /// normalisation.
        BadPath = 2 => "bad_path",
        /// A backslash, raw or `%5C`.
        Backslash = 3 => "backslash",
        /// A `%` not followed by two hex digits, or an escaped NUL.
        BadPercentEncoding = 4 => "bad_percent_encoding",
        /// `%2F` (with `escapedSlashes: Reject`, or next to a dot segment).
        EscapedSlash = 5 => "escaped_slash",
        /// A dot segment with parameters (`..;x`, `.;x`).
        DotSegmentParameter = 6 => "dot_segment_parameter",
        /// More than one `Host` header.
        DuplicateHost = 7 => "duplicate_host",
        /// A `Host` or authority that is not a host and optional port.
        BadHost = 8 => "bad_host",
        /// The `Host` header and the request target's authority differ.
        HostMismatch = 9 => "host_mismatch",
        /// An HTTP/1.1 request without a `Host`.
        MissingHost = 10 => "missing_host",
    }
}

reasons! {
    /// `authn`: no credential authenticated the request (401).
    AuthnReason in Authn {
        MissingCredentials = 0 => "missing_credentials",
        /// Two credentials where one is read (two `Authorization` headers, two cookies).
        AmbiguousCredentials = 1 => "ambiguous_credentials",
        /// The provider's JWKS has not been fetched yet.
        JwksUnavailable = 2 => "jwks_unavailable",
        InvalidApiKey = 3 => "invalid_api_key",
        /// The JWT verifier's reasons (`rampart_l7::jwt::RejectReason`), by the same names.
        Signature = 4 => "signature",
        AlgNotAllowed = 5 => "alg_not_allowed",
        KeySelection = 6 => "key_selection",
        Expired = 7 => "expired",
        NotYetValid = 8 => "not_yet_valid",
        Audience = 9 => "audience",
        Issuer = 10 => "issuer",
        MissingClaim = 11 => "missing_claim",
        Malformed = 12 => "malformed",
        UnsupportedCrit = 13 => "unsupported_crit",
        TooLarge = 14 => "too_large",
        /// A Basic credential (htpasswd or LDAP) with an unknown user or a wrong password.
        InvalidCredentials = 15 => "invalid_credentials",
        /// The LDAP directory did not answer in time, or failed (503).
        DirectoryUnavailable = 16 => "directory_unavailable",
        /// Every password-check slot stayed busy past the wait (503).
        VerifierBusy = 17 => "verifier_busy",
        /// OIDC: a browser without a session, sent to log in (302; not a refusal of a user).
        LoginRedirect = 18 => "login_redirect",
        /// OIDC: the provider's answer at the redirect path, turned into a session (302).
        LoginCallback = 19 => "login_callback",
        /// OIDC: the logout path (302).
        Logout = 20 => "logout",
        /// OIDC: a session cookie that does not open (tampered, another key) or has ended (401).
        InvalidSession = 21 => "invalid_session",
        /// OIDC: an answer at the redirect path that is not the one expected (no login cookie,
        /// another or a replayed state, a refused code, an ID token that fails).
        InvalidCallback = 22 => "invalid_callback",
        /// OIDC: the provider's discovery document cannot be read (503).
        IdpUnavailable = 23 => "idp_unavailable",
    }
}

reasons! {
    /// `authz`: the rules, or the authorizers after them, do not allow the request (403, or
    /// the authorizer's status).
    AuthzReason in Authz {
        NoRuleMatched = 0 => "no_rule_matched",
        DenyRule = 1 => "deny_rule",
        /// The route's Rego policy did not allow the request.
        RegoDenied = 2 => "rego_denied",
        /// The Rego policy failed or overran its time budget (refused).
        RegoError = 3 => "rego_error",
        /// The external authorization service refused the request.
        ExtAuthzDenied = 4 => "ext_authz_denied",
        /// The external authorization service failed or did not answer in time (refused).
        ExtAuthzError = 5 => "ext_authz_error",
    }
}

reasons! {
    /// `ratelimit` (429).
    RateLimitReason in RateLimit {
        OverLimit = 0 => "over_limit",
    }
}

reasons! {
    /// `waf`: the body could not be given to the rules, the engine failed, or the rules blocked
    /// (named by the rule group of the rule that did: the CRS rule file's family).
    WafReason in Waf {
        BodyUnreadable = 0 => "body_unreadable",
        BodyTooLarge = 1 => "body_too_large",
        BodyEncoding = 2 => "body_encoding",
        EngineError = 3 => "engine_error",
        ResponseTooLarge = 4 => "response_too_large",
        ResponseUnreadable = 5 => "response_unreadable",
        ResponseEncoding = 6 => "response_encoding",
        MethodEnforcement = 7 => "method-enforcement",
        ScannerDetection = 8 => "scanner-detection",
        ProtocolEnforcement = 9 => "protocol-enforcement",
        ProtocolAttack = 10 => "protocol-attack",
        MultipartAttack = 11 => "multipart-attack",
        Lfi = 12 => "lfi",
        Rfi = 13 => "rfi",
        Rce = 14 => "rce",
        Php = 15 => "php",
        Generic = 16 => "generic",
        Xss = 17 => "xss",
        Sqli = 18 => "sqli",
        SessionFixation = 19 => "session-fixation",
        Java = 20 => "java",
        BlockingEvaluation = 21 => "blocking-evaluation",
        DataLeakage = 22 => "data-leakage",
        DataLeakageSql = 23 => "data-leakage-sql",
        DataLeakageJava = 24 => "data-leakage-java",
        DataLeakagePhp = 25 => "data-leakage-php",
        DataLeakageIis = 26 => "data-leakage-iis",
        WebShell = 27 => "web-shell",
        DataLeakageRuby = 28 => "data-leakage-ruby",
        /// A rule outside the CRS families (a policy's own rules).
        Other = 29 => "other",
        /// The request body could not be parsed (the WAF crate's body check).
        RequestBodyError = 30 => "request-body-error",
        /// A multipart body failed strict validation.
        MultipartStrictError = 31 => "multipart-strict-error",
    }
}

reasons! {
    /// `dlp`: sensitive data a `Block` detector matched, or a body the scanner cannot read.
    DlpReason in Dlp {
        Blocked = 0 => "blocked",
        UnsupportedEncoding = 1 => "unsupported_encoding",
        TooLarge = 2 => "too_large",
        Unreadable = 3 => "unreadable",
        /// A match only the JSON-decoded body shows (it cannot be masked where it stands).
        EncodedMatch = 4 => "encoded_match",
    }
}

reasons! {
    /// `mtls`: the tunnel refused a connection or stream.
    MtlsReason in Mtls {
        /// Not TLS at all.
        Plaintext = 0 => "plaintext",
        NoClientCertificate = 1 => "no_client_certificate",
        /// Signed by a CA the node does not trust.
        UnknownCa = 2 => "unknown_ca",
        /// Expired or not yet valid.
        CertificateExpired = 3 => "certificate_expired",
        BadCertificate = 4 => "bad_certificate",
        /// Not TLS 1.3.
        ProtocolVersion = 5 => "protocol_version",
        /// Another handshake failure (or the client gave up).
        HandshakeFailed = 6 => "handshake_failed",
        /// The certificate has no valid SPIFFE ID, or one of another trust domain.
        NotSpiffe = 7 => "not_spiffe",
        /// Policy does not allow this peer to reach this destination.
        PrincipalNotAllowed = 8 => "principal_not_allowed",
        /// The peer's SPIFFE ID is not the identity of the source address it claims.
        SourceMismatch = 9 => "source_identity_mismatch",
        /// The destination is not a local workload that takes mTLS on this port.
        NoRoute = 10 => "no_mtls_route",
        /// Not a well-formed CONNECT.
        BadRequest = 11 => "bad_request",
        /// The destination did not accept the connection.
        UpstreamUnreachable = 12 => "upstream_unreachable",
        /// The stream's destination is not the workload whose identity the connection's
        /// handshake presented (the client named another one in its SNI).
        DestinationMismatch = 13 => "destination_identity_mismatch",
    }
}

reasons! {
    /// The source's side: a redirected flow that could not be tunnelled (reported under the
    /// `mtls` filter, counted in `rampart_proxy_outbound_errors_total`).
    OutboundReason in Outbound {
        /// The source address is not a local workload.
        UnknownSource = 0 => "unknown_source",
        /// The destination is not a known workload with a node address.
        UnknownDestination = 1 => "unknown_destination",
        Certificate = 2 => "certificate",
        /// The destination node refused or could not be reached.
        Tunnel = 3 => "tunnel",
        /// The destination's agent did not prove the identity of the workload the destination
        /// address belongs to (its certificate names another, or none).
        DestinationIdentity = 4 => "destination_identity_mismatch",
    }
}

reasons! {
    /// `ingress`: a flow from outside the cluster refused.
    IngressReason in Ingress {
        /// The port takes TLS and the client spoke something else.
        Plaintext = 0 => "plaintext",
        /// The TLS handshake failed or timed out.
        TlsHandshakeFailed = 1 => "tls_handshake_failed",
        /// The pod did not accept the connection.
        UpstreamUnreachable = 2 => "upstream_unreachable",
        /// The policy in force no longer opens the port to outside clients.
        NoRoute = 3 => "no_route",
    }
}

/// Why the proxy refused a flow, a request or a response: the namespace (the refusing filter,
/// the `filter` label) and the reason within it. Namespaces and codes are append-only, like
/// [`DropReason`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyReason {
    Http(HttpReason),
    Authn(AuthnReason),
    Authz(AuthzReason),
    RateLimit(RateLimitReason),
    Waf(WafReason),
    Dlp(DlpReason),
    Mtls(MtlsReason),
    Outbound(OutboundReason),
    Ingress(IngressReason),
}

impl ProxyReason {
    /// The `filter` label: the namespace's name.
    pub const fn filter(self) -> &'static str {
        match self {
            ProxyReason::Http(_) => "http",
            ProxyReason::Authn(_) => "authn",
            ProxyReason::Authz(_) => "authz",
            ProxyReason::RateLimit(_) => "ratelimit",
            ProxyReason::Waf(_) => "waf",
            ProxyReason::Dlp(_) => "dlp",
            ProxyReason::Mtls(_) | ProxyReason::Outbound(_) => "mtls",
            ProxyReason::Ingress(_) => "ingress",
        }
    }

    /// The `reason` label.
    pub const fn name(self) -> &'static str {
        match self {
            ProxyReason::Http(r) => r.name(),
            ProxyReason::Authn(r) => r.name(),
            ProxyReason::Authz(r) => r.name(),
            ProxyReason::RateLimit(r) => r.name(),
            ProxyReason::Waf(r) => r.name(),
            ProxyReason::Dlp(r) => r.name(),
            ProxyReason::Mtls(r) => r.name(),
            ProxyReason::Outbound(r) => r.name(),
            ProxyReason::Ingress(r) => r.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// Every namespace's codes are dense from 0 (append-only: a new reason takes the next) and
    /// its labels are distinct and non-empty.
    #[test]
    fn proxy_reason_namespaces_are_dense_and_distinctly_named() {
        fn check(codes: &[(u8, &'static str)]) {
            for (i, (code, name)) in codes.iter().enumerate() {
                assert_eq!(
                    *code as usize, i,
                    "{name}: the table is append-only and dense"
                );
                assert!(!name.is_empty());
                assert!(
                    codes[..i].iter().all(|(_, other)| other != name),
                    "{name} twice"
                );
            }
        }
        macro_rules! codes {
            ($t:ty) => {
                &<$t>::ALL
                    .iter()
                    .map(|r| (*r as u8, r.name()))
                    .collect::<std::vec::Vec<_>>()
            };
        }
        check(codes!(HttpReason));
        check(codes!(AuthnReason));
        check(codes!(AuthzReason));
        check(codes!(RateLimitReason));
        check(codes!(WafReason));
        check(codes!(DlpReason));
        check(codes!(MtlsReason));
        check(codes!(OutboundReason));
        check(codes!(IngressReason));
        assert_eq!(ProxyReason::Waf(WafReason::Sqli).filter(), "waf");
        assert_eq!(
            ProxyReason::Outbound(OutboundReason::Tunnel).filter(),
            "mtls"
        );
        assert_eq!(
            ProxyReason::Authn(AuthnReason::KeySelection).name(),
            "key_selection"
        );
    }

    #[test]
    fn codes_are_dense_and_named() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.0 as usize, i, "the table is append-only and dense");
            assert_ne!(r.name(), "unknown");
        }
        assert!((DropReason::ALL.len() as u32) < DropReason::SLOTS);
    }

    #[test]
    fn slots_are_distinct() {
        let mut seen = [false; (DropReason::SLOTS * 2) as usize];
        for r in DropReason::ALL {
            for d in Direction::ALL {
                let s = drop_slot(r, d) as usize;
                assert!(!seen[s]);
                seen[s] = true;
            }
        }
        assert_eq!(
            drop_slot(DropReason(200), Direction::EGRESS),
            DropReason::SLOTS * 2 - 1
        );
    }
}
