//! The DLP conformance format (`dlp_cases.jsonl`, one case per line): a body (or a request
//! target) holding sensitive data or look-alikes, the detectors a MeshPolicy names for it, the
//! size of the pieces the sender writes it in, and what must reach the other side: `masked`
//! (delivered, every secret gone, every `keep` string intact), `blocked` (refused) or
//! `unchanged` (delivered byte for byte). The verdicts on what arrived are here; the run
//! through the proxy is [`crate::dlp_e2e`].

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;

/// The cases kept in this repository (a copy of the shared suite's, unedited).
pub const DEFAULT_CASES: &str = "tests/conformance/dlp_cases.jsonl";
/// More cases of the same kinds, derived from the same specifications
/// (`tests/conformance/gen_dlp_extra_cases.py` writes them).
pub const EXTRA_CASES: &str = "tests/conformance/dlp_extra_cases.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The origin answers with the body.
    Response,
    /// The client sends the body (and the target) to the origin.
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Masked,
    Blocked,
    Unchanged,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub id: String,
    pub category: String,
    pub direction: Direction,
    /// The list a MeshPolicy's `http.dlp.detectors` (responses) or `http.dlp.requests.detectors`
    /// (requests) holds, as written there.
    pub detectors: Vec<Value>,
    pub method: String,
    pub target: String,
    /// Empty: no `content-type`.
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
    /// The sender writes the body in pieces of this many bytes (0: one piece).
    #[serde(default)]
    pub chunk: usize,
    pub expect: Expect,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub keep: Vec<String>,
}

impl Case {
    /// The body in the pieces the sender writes, each flushed on its own.
    pub fn pieces(&self) -> Vec<&[u8]> {
        let body = self.body.as_bytes();
        if self.chunk == 0 || body.is_empty() {
            return vec![body];
        }
        body.chunks(self.chunk).collect()
    }
}

/// Loads a cases file: one JSON object a line (blank lines skipped); an error names the line.
pub fn load(path: &Path) -> anyhow::Result<Vec<Case>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: Case = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a DLP case", path.display(), n + 1))?;
        if case.detectors.is_empty() {
            bail!("{}:{}: {}: no detectors", path.display(), n + 1, case.id);
        }
        cases.push(case);
    }
    if cases.is_empty() {
        bail!("{}: no cases", path.display());
    }
    Ok(cases)
}

/// What reached the other side of the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client got a 4xx or 5xx with `body`; `origin_saw`: the origin received the request
    /// all the same.
    Refused {
        status: u16,
        origin_saw: bool,
        body: Vec<u8>,
    },
    /// Delivered: for a request, the target and the body as the origin received them; for a
    /// response, the body the client read.
    Delivered { target: String, body: Vec<u8> },
}

/// `text` without spaces and dashes: how secrets are compared (masking may keep separators).
fn compact(text: &[u8]) -> Vec<u8> {
    text.iter()
        .copied()
        .filter(|b| *b != b' ' && *b != b'-')
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The secrets of `case` that `text` still holds whole (spaces and dashes ignored).
fn leaked<'a>(case: &'a Case, text: &[u8]) -> Vec<&'a str> {
    let text = compact(text);
    case.secrets
        .iter()
        .filter(|s| contains(&text, &compact(s.as_bytes())))
        .map(String::as_str)
        .collect()
}

/// Why `outcome` is not what `case` expects, if it is not.
pub fn verdict(case: &Case, outcome: &Outcome) -> Result<(), String> {
    match (case.expect, outcome) {
        (
            Expect::Blocked,
            Outcome::Refused {
                origin_saw: true, ..
            },
        ) => Err("refused, but the origin received the request".into()),
        (Expect::Blocked, Outcome::Refused { body, .. }) => match leaked(case, body) {
            found if found.is_empty() => Ok(()),
            found => Err(format!("refused, but the refusal holds {found:?}")),
        },
        (Expect::Blocked, Outcome::Delivered { .. }) => Err("delivered, not refused".into()),
        (_, Outcome::Refused { status, .. }) => Err(format!("refused ({status})")),
        (Expect::Unchanged, Outcome::Delivered { target, body }) => {
            if case.direction == Direction::Request && *target != case.target {
                return Err(format!("the target arrived as {target:?}"));
            }
            if body != case.body.as_bytes() {
                return Err(format!(
                    "the body changed: {} bytes sent, {} arrived{}",
                    case.body.len(),
                    body.len(),
                    first_difference(case.body.as_bytes(), body)
                ));
            }
            Ok(())
        }
        (Expect::Masked, Outcome::Delivered { target, body }) => {
            let mut seen = body.clone();
            if case.direction == Direction::Request {
                seen.extend_from_slice(b"\n");
                seen.extend_from_slice(target.as_bytes());
            }
            let found = leaked(case, &seen);
            if !found.is_empty() {
                return Err(format!("{found:?} arrived whole"));
            }
            let lost: Vec<&String> = case
                .keep
                .iter()
                .filter(|k| !contains(&seen, k.as_bytes()))
                .collect();
            if !lost.is_empty() {
                return Err(format!("{lost:?} did not arrive intact"));
            }
            Ok(())
        }
    }
}

/// Where two bodies part, for a failure's message.
fn first_difference(sent: &[u8], got: &[u8]) -> String {
    let at = sent
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(sent.len().min(got.len()));
    let show = |b: &[u8]| String::from_utf8_lossy(&b[at..(at + 40).min(b.len())]).into_owned();
    format!(
        " (from byte {at}: sent {:?}, got {:?})",
        show(sent),
        show(got)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(expect: &str, direction: &str) -> Case {
        serde_json::from_value(serde_json::json!({
            "id": "t", "category": "card", "direction": direction,
            "detectors": [{"type": "cardNumber", "action": "Mask", "keepLast": 4}],
            "method": "GET", "target": "/p?x=1", "content_type": "text/plain",
            "body": "card 4111 1111 1111 1111 order ORD-1", "chunk": 0, "expect": expect,
            "secrets": ["4111111111111111"], "keep": ["order ORD-1"]
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn delivered(body: &str) -> Outcome {
        Outcome::Delivered {
            target: "/p?x=1".into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_secret_left_whole_fails_whatever_its_separators() {
        let c = case("masked", "response");
        assert_eq!(
            verdict(&c, &delivered("card **** **** **** 1111 order ORD-1")),
            Ok(())
        );
        for leak in [
            "card 4111 1111 1111 1111 order ORD-1",
            "card 4111-1111-1111-1111 order ORD-1",
            "card 4111111111111111 order ORD-1",
        ] {
            assert!(verdict(&c, &delivered(leak)).is_err(), "{leak}");
        }
        // A keep string that did not survive.
        assert!(verdict(&c, &delivered("card **** **** **** 1111 order ***-1")).is_err());
        // Refused is no masked delivery.
        let refused = Outcome::Refused {
            status: 502,
            origin_saw: false,
            body: Vec::new(),
        };
        assert!(verdict(&c, &refused).is_err());
    }

    #[test]
    fn unchanged_means_byte_for_byte_and_blocked_means_refused_without_the_secret() {
        let c = case("unchanged", "request");
        assert_eq!(
            verdict(&c, &delivered("card 4111 1111 1111 1111 order ORD-1")),
            Ok(())
        );
        assert!(verdict(&c, &delivered("card 4111 1111 1111 1111 order ORD-1 ")).is_err());
        let moved = Outcome::Delivered {
            target: "/p?x=2".into(),
            body: c.body.as_bytes().to_vec(),
        };
        assert!(verdict(&c, &moved).is_err());

        let c = case("blocked", "request");
        let clean = Outcome::Refused {
            status: 403,
            origin_saw: false,
            body: b"refused".to_vec(),
        };
        assert_eq!(verdict(&c, &clean), Ok(()));
        let leaky = Outcome::Refused {
            status: 403,
            origin_saw: false,
            body: b"card 4111111111111111".to_vec(),
        };
        assert!(verdict(&c, &leaky).is_err());
        let seen = Outcome::Refused {
            status: 403,
            origin_saw: true,
            body: Vec::new(),
        };
        assert!(verdict(&c, &seen).is_err());
        assert!(verdict(&c, &delivered("x")).is_err());
    }

    #[test]
    fn pieces_follow_the_chunk_size() {
        let mut c = case("masked", "response");
        assert_eq!(c.pieces().len(), 1);
        c.chunk = 5;
        let pieces = c.pieces();
        assert_eq!(pieces.len(), c.body.len().div_ceil(5));
        assert_eq!(pieces.concat(), c.body.as_bytes());
    }

    #[test]
    fn the_public_cases_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/dlp_cases.jsonl");
        let cases = load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(cases.len() >= 50);
        assert!(cases.iter().any(|c| c.direction == Direction::Request));
    }
}
