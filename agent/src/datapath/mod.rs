//! The loader: the only module of the agent that touches aya. It loads the embedded kernel object,
//! attaches its programs to interfaces, and hands out typed readers of the kernel maps. Everything
//! else in the agent talks to the types exported here.
//!
//! Without a pin root ([`Datapath::load`]), attachments live as long as the [`Datapath`] value:
//! dropping it detaches every program. With one ([`Datapath::load_pinned`], what `rampart run`
//! uses), maps and links are pinned on bpffs and outlive the agent (see `pins.rs`).
//!
//! Policy state reaches the kernel through [`Datapath::apply`], atomically: endpoints, ipcache
//! and policy are double-buffered (A/B maps); `apply` rewrites the inactive copy completely and
//! then writes the next revision (whose parity names the live generation) in one write, so every
//! packet sees one whole state.

mod attach;
mod conntrack_sweep;
mod generation;
mod kernel_log;
mod loader;
mod migrate;
mod pins;
mod stats;
mod test_run;
mod written;

pub use conntrack_sweep::ConntrackSweep;
pub use kernel_log::{KernelLog, KernelLogReader};
pub use loader::{Attachment, Datapath, DatapathError};
pub use pins::{PinError, PinRoot, remove_all as remove_pins};
pub use stats::{EventReader, EventsLost, KernelTableEntries, ReasonCount, Stats};
pub use test_run::ProgramKind;
pub use written::Changes;
