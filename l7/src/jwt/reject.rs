//! Why a token was refused: a value, never an error of the verifier itself. The reason names
//! are the stable labels of `rampart_proxy_denied_total{filter="authn",reason}` and the access
//! log; the detail is for operators and never contains the token or a key.

/// The class of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No trusted key verified the signature (tampered, stripped, wrong key).
    Signature,
    /// `alg` is `none`, unknown, or not in the provider's allow-list.
    AlgNotAllowed,
    /// No trusted key can be chosen: unknown `kid`, or the token tries to bring its own key.
    KeySelection,
    Expired,
    NotYetValid,
    Audience,
    Issuer,
    MissingClaim,
    /// Not a compact JWS of three base64url segments over JSON objects, or a claim of the
    /// wrong type.
    Malformed,
    /// `crit` names an extension the verifier does not implement (it implements none).
    UnsupportedCrit,
    TooLarge,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Signature => "signature",
            RejectReason::AlgNotAllowed => "alg_not_allowed",
            RejectReason::KeySelection => "key_selection",
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::Audience => "audience",
            RejectReason::Issuer => "issuer",
            RejectReason::MissingClaim => "missing_claim",
            RejectReason::Malformed => "malformed",
            RejectReason::UnsupportedCrit => "unsupported_crit",
            RejectReason::TooLarge => "too_large",
        }
    }
}

/// A refused token: the reason and a short description safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub(crate) fn new(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}
