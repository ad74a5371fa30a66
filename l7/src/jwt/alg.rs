//! JWS algorithms the verifier knows, by their registered names (RFC 7518 §3.1), and the kind of
//! key each one needs. `none` is not one of them: an unsecured token can never be configured.

use super::keys::{Curve, KeyKind};

/// A JWS signature algorithm. Names are matched exactly and case-sensitively, so `None`, `NONE`
/// and `rs256` are unknown algorithms, never aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
    EdDsa,
}

impl JwsAlg {
    pub const ALL: [JwsAlg; 13] = [
        JwsAlg::Hs256,
        JwsAlg::Hs384,
        JwsAlg::Hs512,
        JwsAlg::Rs256,
        JwsAlg::Rs384,
        JwsAlg::Rs512,
        JwsAlg::Ps256,
        JwsAlg::Ps384,
        JwsAlg::Ps512,
        JwsAlg::Es256,
        JwsAlg::Es384,
        JwsAlg::Es512,
        JwsAlg::EdDsa,
    ];

    /// The algorithm with this registered name, if the verifier implements it.
    pub fn from_name(name: &str) -> Option<JwsAlg> {
        JwsAlg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            JwsAlg::Hs256 => "HS256",
            JwsAlg::Hs384 => "HS384",
            JwsAlg::Hs512 => "HS512",
            JwsAlg::Rs256 => "RS256",
            JwsAlg::Rs384 => "RS384",
            JwsAlg::Rs512 => "RS512",
            JwsAlg::Ps256 => "PS256",
            JwsAlg::Ps384 => "PS384",
            JwsAlg::Ps512 => "PS512",
            JwsAlg::Es256 => "ES256",
            JwsAlg::Es384 => "ES384",
            JwsAlg::Es512 => "ES512",
            JwsAlg::EdDsa => "EdDSA",
        }
    }

    /// The one kind of key this algorithm verifies with; a key of any other kind is never tried
    /// (this is what stops HMAC keyed with an RSA public key).
    pub fn key_kind(self) -> KeyKind {
        match self {
            JwsAlg::Hs256 | JwsAlg::Hs384 | JwsAlg::Hs512 => KeyKind::Oct,
            JwsAlg::Rs256
            | JwsAlg::Rs384
            | JwsAlg::Rs512
            | JwsAlg::Ps256
            | JwsAlg::Ps384
            | JwsAlg::Ps512 => KeyKind::Rsa,
            JwsAlg::Es256 => KeyKind::Ec(Curve::P256),
            JwsAlg::Es384 => KeyKind::Ec(Curve::P384),
            JwsAlg::Es512 => KeyKind::Ec(Curve::P521),
            JwsAlg::EdDsa => KeyKind::Ed25519,
        }
    }

    /// Shortest HMAC secret allowed: the hash's output size (RFC 7518 §3.2).
    pub(crate) fn min_hmac_secret_bytes(self) -> usize {
        match self {
            JwsAlg::Hs384 => 48,
            JwsAlg::Hs512 => 64,
            _ => 32,
        }
    }

    /// The `jsonwebtoken` algorithm that verifies this one; `None` for ES512, which that crate
    /// does not implement (verified with `p521` instead).
    pub(crate) fn library(self) -> Option<jsonwebtoken::Algorithm> {
        use jsonwebtoken::Algorithm as A;
        Some(match self {
            JwsAlg::Hs256 => A::HS256,
            JwsAlg::Hs384 => A::HS384,
            JwsAlg::Hs512 => A::HS512,
            JwsAlg::Rs256 => A::RS256,
            JwsAlg::Rs384 => A::RS384,
            JwsAlg::Rs512 => A::RS512,
            JwsAlg::Ps256 => A::PS256,
            JwsAlg::Ps384 => A::PS384,
            JwsAlg::Ps512 => A::PS512,
            JwsAlg::Es256 => A::ES256,
            JwsAlg::Es384 => A::ES384,
            JwsAlg::EdDsa => A::EdDSA,
            JwsAlg::Es512 => return None,
        })
    }
}

impl std::fmt::Display for JwsAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for alg in JwsAlg::ALL {
            assert_eq!(JwsAlg::from_name(alg.name()), Some(alg));
        }
        for name in ["none", "None", "NONE", "nOnE", "rs256", "HS257", ""] {
            assert_eq!(JwsAlg::from_name(name), None, "{name}");
        }
    }
}
