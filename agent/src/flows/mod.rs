//! The flow log: every kernel flow event (drops and new-flow verdicts) and every denial of the
//! mTLS proxy, as one [`FlowRecord`] each, named with the workloads and the policy rule that
//! decided, published to `rampart flows` clients (admin `/v1/flows`) and optionally to a rotated
//! JSON-lines file.
//!
//! - `record`: the record and its stable JSON form;
//! - `event`: what the proxy reports (a refused flow, a judged HTTP request);
//! - `names`: per policy generation, what identities, addresses and rule cookies stand for;
//! - `hub`: turns raw events into records and fans them out without ever waiting for a reader;
//! - `file_log`: the `--flow-log` writer with size-based rotation.
//!
//! `rampart flows`, the client, is `flows_cli.rs` (it speaks to the admin API above this).

pub mod event;
pub mod file_log;
pub mod hub;
pub mod names;
pub mod record;

pub use hub::FlowHub;
pub use names::FlowNames;
pub use record::FlowRecord;
