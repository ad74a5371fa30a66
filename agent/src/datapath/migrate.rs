//! Carrying pinned maps of the previous layout into the current one when an agent of a newer
//! build takes over a node: today conntrack, `CT_V2` (an LRU) → `CT_V3` (a hash that never
//! evicts a live flow; same entries), so established flows keep their state across the upgrade
//! (without it, the first reply of a flow that policy alone would not admit — a client's
//! ingress — would be dropped). A TCP entry that has seen its reply is carried as established:
//! `CT_V2`'s programs did not mark the handshake's end, and a flow they tracked for hours must
//! not age out in a minute.
//!
//! Twice: when the new object is loaded (its programs not yet in the links: the old ones keep
//! adding flows to `CT_V2`), and once every link runs the new programs, after which the old pin
//! is removed (the kernel frees the map with its last program). Entries already in the new map
//! are newer and kept (`BPF_NOEXIST`).
//!
//! A downgrade is not migrated: the older agent finds no `CT_V2` pin, starts an empty one, and
//! established flows are judged again by policy on their next packet (README, "Restarts and
//! upgrades"). Nor is an upgrade from two layouts back (`CT_V1`): its flows are judged again.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapError};
use rampart_common::conntrack::{CtEntry, CtFlags, CtKey};
use rampart_common::maps;

use super::pins::PinRoot;

/// `BPF_NOEXIST`: an entry already in the new map is newer.
const BPF_NOEXIST: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("carrying {from} into {to}: map {map}: {source}")]
    Map {
        from: &'static str,
        to: &'static str,
        map: &'static str,
        source: MapError,
    },
    #[error("removing the pin {path} after carrying its entries over: {source}")]
    Unpin {
        path: String,
        source: std::io::Error,
    },
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> Box<MigrateError> {
    move |source| {
        Box::new(MigrateError::Map {
            from: maps::CT_PREVIOUS,
            to: maps::CT,
            map,
            source,
        })
    }
}

/// Flows carried from `CT_V2` into `CT_V3`; `None` when there was no `CT_V2` pin (or this build
/// uses `CT_V2` itself). With `finish`, the `CT_V2` pin is removed afterwards.
pub(super) fn conntrack(pins: &PinRoot, finish: bool) -> Result<Option<u64>, Box<MigrateError>> {
    if maps::CT == maps::CT_PREVIOUS {
        return Ok(None);
    }
    let old_path = pins.map(maps::CT_PREVIOUS);
    if !old_path.exists() {
        return Ok(None);
    }
    let open = |name: &'static str, path: &Path| -> Result<Map, Box<MigrateError>> {
        MapData::from_pin(path)
            .and_then(Map::from_map_data)
            .map_err(map_err(name))
    };
    let old: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(open(maps::CT_PREVIOUS, &old_path)?)
            .map_err(map_err(maps::CT_PREVIOUS))?;
    let mut new: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(open(maps::CT, &pins.map(maps::CT))?).map_err(map_err(maps::CT))?;
    let mut carried = 0u64;
    for entry in old.iter() {
        let (key, value) = match entry {
            Ok(kv) => kv,
            // An LRU entry evicted during the walk: the walk goes on from the next key.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(maps::CT_PREVIOUS)(e)),
        };
        match new.insert(key, carried_entry(&key, value), BPF_NOEXIST) {
            Ok(()) => carried += 1,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(map_err(maps::CT)(e)),
        }
    }
    if finish {
        std::fs::remove_file(&old_path).map_err(|source| {
            Box::new(MigrateError::Unpin {
                path: old_path.display().to_string(),
                source,
            })
        })?;
    }
    Ok(Some(carried))
}

/// A `CT_V2` entry as `CT_V3` keeps it: a TCP flow that has seen its reply is established.
fn carried_entry(key: &CtKey, entry: CtEntry) -> CtEntry {
    let mut entry = entry;
    if key.proto == 6 && entry.flags & CtFlags::SEEN_REPLY != 0 {
        entry.flags |= CtFlags::ESTABLISHED;
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replied_tcp_flow_is_carried_as_established_and_nothing_else_changes() {
        let tcp = CtKey {
            proto: 6,
            ..CtKey::default()
        };
        let udp = CtKey {
            proto: 17,
            ..CtKey::default()
        };
        let replied = CtEntry {
            flags: CtFlags::SEEN_REPLY | CtFlags::PROXIED,
            cookie: 9,
            ..CtEntry::default()
        };
        let carried = carried_entry(&tcp, replied);
        assert_eq!(
            carried.flags,
            CtFlags::SEEN_REPLY | CtFlags::PROXIED | CtFlags::ESTABLISHED
        );
        assert_eq!(carried.cookie, 9);
        assert_eq!(carried_entry(&udp, replied), replied);
        let syn_only = CtEntry::default();
        assert_eq!(carried_entry(&tcp, syn_only), syn_only);
    }
}
