//! Per-node bootstrap credentials: `rampart ca node-token --node N` creates a random token for
//! node N once; the CA keeps only its SHA-256 (`<ca dir>/nodes/N.sha256`), the node keeps the
//! token (a Kubernetes Secret mounted on that node's agent, or a file). A token names its node,
//! so a stolen node-1 token authenticates node 1 and nothing else.
//!
//! Format: `rnt1.<node>.<43 characters: 32 random bytes, base64url>`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

const PREFIX: &str = "rnt1";
const SECRET_BYTES: usize = 32;
const NODES_DIR: &str = "nodes";

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("node name {0:?}: must be a DNS label or subdomain (a Kubernetes node name)")]
    NodeName(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness from the kernel: {0}")]
    Random(std::io::Error),
}

/// Why a presented token does not authenticate (never says which part was wrong to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Malformed,
    UnknownNode,
    WrongSecret,
}

impl TokenRefusal {
    pub fn name(self) -> &'static str {
        match self {
            TokenRefusal::Malformed => "malformed_token",
            TokenRefusal::UnknownNode => "unknown_node",
            TokenRefusal::WrongSecret => "wrong_token",
        }
    }
}

/// Whether `name` can be a node's name (and so a file name and a SPIFFE ID path segment).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn digest_path(ca_dir: &Path, node: &str) -> PathBuf {
    ca_dir.join(NODES_DIR).join(format!("{node}.sha256"))
}

fn digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates node `node`'s token, stores its digest under `ca_dir` (replacing an earlier one, which
/// stops working) and returns the token: the only time it is seen.
pub fn create(ca_dir: &Path, node: &str) -> Result<String, TokenError> {
    if !valid_node_name(node) {
        return Err(TokenError::NodeName(node.to_owned()));
    }
    let mut secret = [0u8; SECRET_BYTES];
    fill_random(&mut secret).map_err(TokenError::Random)?;
    let token = format!("{PREFIX}.{node}.{}", URL_SAFE_NO_PAD.encode(secret));
    let path = digest_path(ca_dir, node);
    let io = |source| TokenError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&path, digest_hex(&token)).map_err(io)?;
    Ok(token)
}

/// The node a token authenticates, checked against the digests under `ca_dir`.
pub fn verify(ca_dir: &Path, token: &str) -> Result<String, TokenRefusal> {
    let whole = token.trim();
    // The node name may itself hold dots: the secret is what follows the last one.
    let Some((node, secret)) = whole
        .strip_prefix(PREFIX)
        .and_then(|t| t.strip_prefix('.'))
        .and_then(|t| t.rsplit_once('.'))
    else {
        return Err(TokenRefusal::Malformed);
    };
    if !valid_node_name(node) || secret.len() != 43 {
        return Err(TokenRefusal::Malformed);
    }
    let Ok(stored) = std::fs::read_to_string(digest_path(ca_dir, node)) else {
        return Err(TokenRefusal::UnknownNode);
    };
    if constant_time_eq(stored.trim().as_bytes(), digest_hex(whole).as_bytes()) {
        Ok(node.to_owned())
    } else {
        Err(TokenRefusal::WrongSecret)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buf).map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rampart-tokens-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_token_authenticates_its_node_only() {
        let d = dir("own");
        let one = create(&d, "node-1").expect("token");
        let two = create(&d, "ip-10-0-0-2.ec2.internal").expect("token");
        assert_eq!(verify(&d, &one), Ok("node-1".to_owned()));
        assert_eq!(verify(&d, &two), Ok("ip-10-0-0-2.ec2.internal".to_owned()));
        // Node 1's secret under node 2's name.
        let secret = one.rsplit_once('.').expect("secret").1;
        let forged = format!("rnt1.ip-10-0-0-2.ec2.internal.{secret}");
        assert_eq!(verify(&d, &forged), Err(TokenRefusal::WrongSecret));
        assert_eq!(
            verify(&d, &one.replace("node-1", "node-3")),
            Err(TokenRefusal::UnknownNode)
        );
        // The CA keeps no token, only digests.
        let stored = std::fs::read_to_string(digest_path(&d, "node-1")).expect("digest");
        assert!(!stored.contains(secret));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_new_token_replaces_the_old_and_garbage_is_refused() {
        let d = dir("replace");
        let old = create(&d, "node-1").expect("token");
        let new = create(&d, "node-1").expect("token");
        assert_ne!(old, new);
        assert_eq!(verify(&d, &old), Err(TokenRefusal::WrongSecret));
        assert_eq!(verify(&d, &new), Ok("node-1".to_owned()));
        for bad in [
            "",
            "rnt1",
            "rnt1.node-1",
            "rnt2.node-1.x",
            "rnt1.../etc/passwd.x",
            "rnt1.node-1.short",
        ] {
            assert_eq!(verify(&d, bad), Err(TokenRefusal::Malformed), "{bad:?}");
        }
        assert!(matches!(create(&d, "../etc"), Err(TokenError::NodeName(_))));
        assert!(matches!(create(&d, "Node_1"), Err(TokenError::NodeName(_))));
        let _ = std::fs::remove_dir_all(&d);
    }
}
