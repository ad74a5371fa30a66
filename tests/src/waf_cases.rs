//! The WAF conformance format (`waf_requests.jsonl`, one request per line: `id`, `category`,
//! `expected` (`block` or `pass`), `method`, `uri`, `headers` (an object, in the order given),
//! `body`; other members are provenance) and the raw bytes a client sends for a case.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// The public cases, beside the project (see [`shared_dir`]).
pub const DEFAULT_CASES: &str = "conformance/waf_requests.jsonl";
/// The Core Rule Set the public cases were labelled with, beside the project.
pub const DEFAULT_CRS: &str = "crs-4.28.0";

/// `../shared` beside the workspace (`RAMPART_SHARED_DIR` overrides; `/work/shared` is where
/// this machine keeps it).
pub fn shared_dir(workspace: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RAMPART_SHARED_DIR") {
        return Ok(dir.into());
    }
    [workspace.join("../shared"), PathBuf::from("/work/shared")]
        .into_iter()
        .find(|p| p.join(DEFAULT_CRS).is_dir())
        .context("no shared/ beside the project (with crs-4.28.0); set RAMPART_SHARED_DIR")
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub id: String,
    pub category: String,
    /// `block` or `pass`.
    pub expected: String,
    pub method: String,
    pub uri: String,
    #[serde(deserialize_with = "ordered_headers")]
    pub headers: Vec<(String, String)>,
    /// `null` or absent: no body.
    #[serde(default, deserialize_with = "optional_text")]
    pub body: String,
}

fn optional_text<'de, D: serde::Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(de)?.unwrap_or_default())
}

impl Case {
    pub fn blocks(&self) -> bool {
        self.expected == "block"
    }

    /// The request as raw bytes: the request line with `uri` exactly as given, the headers as
    /// given (a `Content-Length` added for a body without one, as a client would), the body as
    /// UTF-8.
    pub fn raw(&self) -> Vec<u8> {
        let mut text = format!("{} {} HTTP/1.1\r\n", self.method, self.uri);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        let has_length = self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        if !self.body.is_empty() && !has_length {
            text.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        text.push_str("\r\n");
        text.push_str(&self.body);
        text.into_bytes()
    }
}

/// Reads a JSON object into its (name, value) pairs in document order.
fn ordered_headers<'de, D>(de: D) -> Result<Vec<(String, String)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of header names and string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = map.next_entry::<String, String>()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    de.deserialize_map(Pairs)
}

/// Every case of `path`; an unreadable line is an error naming it.
pub fn load(path: &Path) -> anyhow::Result<Vec<Case>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_keeps_its_header_order_and_becomes_raw_bytes() {
        let case: Case = serde_json::from_str(
            r#"{"id": "x", "category": "sqli", "expected": "block", "method": "POST", "uri": "/a?b=%00|c", "headers": {"Zeta": "1", "Host": "localhost"}, "body": "v=1"}"#,
        )
        .expect("parses");
        assert_eq!(case.headers[0].0, "Zeta");
        assert_eq!(
            String::from_utf8_lossy(&case.raw()),
            "POST /a?b=%00|c HTTP/1.1\r\nZeta: 1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nv=1"
        );
        assert!(case.blocks());
    }
}
