//! `dlp_stream`: the DLP stream masker against itself fed whole.

use std::sync::OnceLock;

use rampart_l7::dlp::{Action, Detector, DlpSet, Kind, StreamMasker};

fn mask(keep_last: usize) -> Action {
    Action::Mask {
        keep_last,
        with: b'*',
    }
}

/// Every built-in detector and a custom one; the second set blocks cards.
fn sets() -> &'static [DlpSet; 2] {
    static SETS: OnceLock<[DlpSet; 2]> = OnceLock::new();
    SETS.get_or_init(|| {
        let set = |card: Action| {
            let detectors = [
                ("card_number", Kind::CardNumber, card),
                ("us_ssn", Kind::UsSsn, Action::Redact),
                ("iban", Kind::Iban, mask(4)),
                ("email", Kind::Email, mask(0)),
                ("bearer_token", Kind::BearerToken, Action::Redact),
                (
                    "employee_id",
                    Kind::Custom(r"EMP-(?P<value>\d{6})".into()),
                    mask(2),
                ),
            ];
            DlpSet {
                detectors: detectors
                    .into_iter()
                    .map(|(name, kind, action)| {
                        Detector::new(name, kind, action)
                            .unwrap_or_else(|e| panic!("detector {name}: {e}"))
                    })
                    .collect(),
            }
        };
        [set(mask(4)), set(Action::Block)]
    })
}

/// What a masker made of a whole body.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    bytes: Vec<u8>,
    matches: usize,
    blocked: bool,
    revealed: bool,
}

fn run(set: &DlpSet, json: bool, pieces: &[&[u8]]) -> Outcome {
    let masker = StreamMasker::new(set, false);
    let mut masker = if json { masker.json() } else { masker };
    let mut outcome = Outcome {
        bytes: Vec::new(),
        matches: 0,
        blocked: false,
        revealed: false,
    };
    let steps = pieces
        .iter()
        .map(|p| masker.push(p))
        .collect::<Vec<_>>()
        .into_iter()
        .chain(std::iter::once(masker.finish()));
    for released in steps {
        outcome.bytes.extend_from_slice(&released.bytes);
        outcome.matches += released.matches.len();
        outcome.blocked |= released.blocked;
        outcome.revealed |= released.revealed;
    }
    outcome
}

/// Input: a byte of choices (bit 0: a JSON body; bit 1: cards blocked), a byte `n`, `n % 8`
/// piece sizes (1-256 bytes, used in turn), then the body. The masker fed the body in those
/// pieces must release the same bytes, find as many matches and refuse alike as fed it whole.
pub fn dlp_stream(data: &[u8]) {
    let (choices, rest) = super::split_first(data);
    let (n, rest) = super::split_first(rest);
    let n = usize::from(n % 8).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    let set = &sets()[usize::from(choices >> 1 & 1)];
    let json = choices & 1 == 1;
    let whole = run(set, json, &[body]);
    if sizes.is_empty() {
        return;
    }
    let mut pieces = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= body.len() {
            break;
        }
        let end = (at + usize::from(*size) + 1).min(body.len());
        pieces.push(&body[at..end]);
        at = end;
    }
    let streamed = run(set, json, &pieces);
    if streamed != whole {
        let at = streamed
            .bytes
            .iter()
            .zip(&whole.bytes)
            .position(|(a, b)| a != b)
            .unwrap_or(streamed.bytes.len().min(whole.bytes.len()));
        let around = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned()
        };
        panic!(
            "fed in {} pieces (json: {json}), the masker differs from fed whole at byte {at}: {:?} against {:?}; matches {} against {}, blocked {} against {}, revealed {} against {}",
            pieces.len(),
            around(&streamed.bytes),
            around(&whole.bytes),
            streamed.matches,
            whole.matches,
            streamed.blocked,
            whole.blocked,
            streamed.revealed,
            whole.revealed,
        );
    }
}
