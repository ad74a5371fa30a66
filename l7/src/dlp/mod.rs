//! Data loss prevention: finding payment card numbers, US SSNs, IBANs, e-mail addresses, bearer
//! tokens and a policy's own patterns in bodies, and masking, redacting or blocking them, also
//! while a body streams through in chunks.
//!
//! | module | what |
//! | --- | --- |
//! | `validate` | Luhn and card brand ranges, IBAN mod-97, SSN reserved ranges |
//! | `detect` | the detectors, their matches and the actions on them |
//! | `json` | JSON string escapes decoded, and decoded spans traced back to the text as sent |
//! | `stream` | masking a streamed body with matches across chunk boundaries |

pub mod detect;
pub mod json;
pub mod stream;
pub mod validate;

pub use detect::{Action, Detector, DlpError, DlpSet, Found, JsonFound, Kind, MAX_MATCH};
pub use stream::{Released, StreamMasker};
