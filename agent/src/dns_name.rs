//! Kubernetes object names and DNS names (RFC 1123): what the CLI's flags, the policy's objects
//! and the node's name are checked against. A leaf: it names nothing else in the crate.

/// RFC 1123 label: lowercase alphanumerics and `-`, at most 63, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns_label("shop-1"));
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("cluster.local"));
        assert!(!is_dns_subdomain("cluster..local"));
        assert!(!is_dns_subdomain(&format!("{}.x", "a.".repeat(127))));
    }
}
