//! The A/B generation flip: `apply` brings the inactive generation to the new state (writing
//! only what differs from what that generation holds, see `written`) and publishes it with one
//! write of the revision; `set_audit` copies the live generation over.

use super::loader::{Datapath, DatapathError, map_err, typed};
use super::written::{Changes, Entries, Written, difference};
use crate::kernel_state::PolicyState;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData};
use rampart_common::config::{ConfigFlags, DatapathConfig};
use rampart_common::endpoint::EndpointInfo;
use rampart_common::ipcache::IpcacheEntry;
use rampart_common::maps;
use rampart_common::mesh::{MeshEntry, MeshKey};
use rampart_common::policy::{PolicyEntry, PolicyKey};
use rampart_common::service::{ServiceKey, ServiceValue};
use std::time::{Duration, Instant};

impl Datapath {
    /// Installs `state` atomically (see the module docs) and returns the new policy revision.
    /// On error the live generation is untouched: the last good state stays in force.
    pub fn apply(&mut self, state: &PolicyState) -> Result<u32, DatapathError> {
        validate(state)?;
        let next = Written::of(state);
        self.wait_for_grace();
        let slot = self.next_slot();
        self.write_slot(slot, next)?;
        self.config.proxy_port = state.proxy_port;
        let mut flags = if state.audit { ConfigFlags::AUDIT } else { 0 };
        if !state.services.is_empty() {
            flags |= ConfigFlags::SERVICES;
        }
        self.publish_next_revision(flags)
    }

    /// Brings the inactive generation to what the live one holds, ahead of the next `apply`
    /// (which then writes only what its own change touches). The agent calls it when idle: the
    /// first `apply` after start would otherwise write the whole state into a generation it
    /// knows nothing of (200 ms at 100k rules), and every later one the previous change too.
    /// Returns whether it wrote anything.
    pub fn prime_standby(&mut self) -> Result<bool, DatapathError> {
        let live = (self.config.revision & 1) as usize;
        let standby = self.next_slot();
        let Some(current) = self.written[live].clone() else {
            return Ok(false);
        };
        if self.written[standby].as_ref() == Some(&current) {
            return Ok(false);
        }
        self.wait_for_grace();
        self.write_slot(standby, current)?;
        Ok(true)
    }

    /// Writes generation `slot` to `next`, from what it is known to hold (or, if that is
    /// unknown, from what its maps hold).
    fn write_slot(&mut self, slot: usize, next: Written) -> Result<(), DatapathError> {
        // Unknown until every map is written: a failure half-way leaves the generation mixed.
        let old = self.written[slot].take();
        let mut changes = Changes::default();
        {
            let name = maps::ENDPOINTS[slot];
            let mut map: HashMap<&mut MapData, u32, EndpointInfo> =
                typed(name, self.map_mut(name)?)?;
            changes += sync_hash(
                &mut map,
                name,
                old.as_ref().map(|o| &o.endpoints),
                &next.endpoints,
            )?;
        }
        {
            let name = maps::IPCACHE4[slot];
            let mut map: LpmTrie<&mut MapData, [u8; 4], IpcacheEntry> =
                typed(name, self.map_mut(name)?)?;
            changes += sync_trie(
                &mut map,
                name,
                old.as_ref().map(|o| &o.ipcache4),
                &next.ipcache4,
            )?;
        }
        {
            let name = maps::IPCACHE6[slot];
            let mut map: LpmTrie<&mut MapData, [u8; 16], IpcacheEntry> =
                typed(name, self.map_mut(name)?)?;
            changes += sync_trie(
                &mut map,
                name,
                old.as_ref().map(|o| &o.ipcache6),
                &next.ipcache6,
            )?;
        }
        {
            let name = maps::POLICY[slot];
            let mut map: LpmTrie<&mut MapData, PolicyKey, PolicyEntry> =
                typed(name, self.map_mut(name)?)?;
            changes += sync_trie(
                &mut map,
                name,
                old.as_ref().map(|o| &o.policy),
                &next.policy,
            )?;
        }
        {
            let name = maps::MESH[slot];
            let mut map: HashMap<&mut MapData, MeshKey, MeshEntry> =
                typed(name, self.map_mut(name)?)?;
            changes += sync_hash(&mut map, name, old.as_ref().map(|o| &o.mesh), &next.mesh)?;
        }
        {
            let name = maps::SERVICES[slot];
            let mut map: HashMap<&mut MapData, ServiceKey, ServiceValue> =
                typed(name, self.map_mut(name)?)?;
            changes += sync_hash(
                &mut map,
                name,
                old.as_ref().map(|o| &o.services),
                &next.services,
            )?;
        }
        tracing::debug!(
            slot,
            known = old.is_some(),
            written = changes.written,
            removed = changes.removed,
            "generation written"
        );
        self.written[slot] = Some(next);
        Ok(())
    }

    /// How far the live generation is from `state`: the entries it lacks or holds with another
    /// value, and the keys it holds that `state` lacks (both zero when `state` is in force).
    pub fn drift(&mut self, state: &PolicyState) -> Result<Changes, DatapathError> {
        let live = (self.config.revision & 1) as usize;
        Ok(read_generation(self, live)?.changes_to(&Written::of(state)))
    }

    /// [`Datapath::drift`] of the inactive generation (what the next `apply` writes over).
    pub fn standby_drift(&mut self, state: &PolicyState) -> Result<Changes, DatapathError> {
        let standby = self.next_slot();
        Ok(read_generation(self, standby)?.changes_to(&Written::of(state)))
    }

    /// Switches agent-wide audit mode on or off, keeping the rest of the live state, as a new
    /// revision (tracked flows are judged again under the new mode at their next packet).
    pub fn set_audit(&mut self, audit: bool) -> Result<u32, DatapathError> {
        let flags = if audit {
            self.config.flags | ConfigFlags::AUDIT
        } else {
            self.config.flags & !ConfigFlags::AUDIT
        };
        // Both generations must hold the live state before the parity flips: copy it over.
        let live = (self.config.revision & 1) as usize;
        self.copy_generation(live, self.next_slot())?;
        self.publish_next_revision(flags)
    }

    /// The generation the next revision makes live (its parity): the one to write now.
    pub(super) fn next_slot(&self) -> usize {
        (self.config.revision.wrapping_add(1) & 1) as usize
    }

    /// Writes the next revision to `CONFIG_V1`: the kernel reads the live generation as the
    /// revision's parity (one field, so no read pairs a generation with another revision);
    /// `active` mirrors it for readers of the map.
    pub(super) fn publish_next_revision(&mut self, flags: u32) -> Result<u32, DatapathError> {
        let revision = self.config.revision.wrapping_add(1);
        let config = DatapathConfig {
            active: revision & 1,
            revision,
            flags,
            proxy_port: self.config.proxy_port,
            _pad: 0,
        };
        let mut array: Array<&mut MapData, DatapathConfig> =
            typed(maps::CONFIG, self.map_mut(maps::CONFIG)?)?;
        array.set(0, config, 0).map_err(map_err(maps::CONFIG))?;
        self.config = config;
        self.last_flip = Some(Instant::now());
        Ok(revision)
    }

    /// Waits until the generation that was live before the last flip can no longer be read by a
    /// program that started before it (see `GENERATION_GRACE`).
    pub(super) fn wait_for_grace(&self) {
        if let Some(flipped) = self.last_flip {
            let since = flipped.elapsed();
            if since < GENERATION_GRACE {
                std::thread::sleep(GENERATION_GRACE - since);
            }
        }
    }

    /// Makes generation `to` a copy of generation `from` (every generation-indexed map).
    pub(super) fn copy_generation(&mut self, from: usize, to: usize) -> Result<(), DatapathError> {
        self.wait_for_grace();
        self.written[to] = None;
        let endpoints: Vec<(u32, EndpointInfo)> = {
            let map: HashMap<&mut MapData, u32, EndpointInfo> =
                typed(maps::ENDPOINTS[from], self.map_mut(maps::ENDPOINTS[from])?)?;
            map.iter()
                .collect::<Result<_, _>>()
                .map_err(map_err(maps::ENDPOINTS[from]))?
        };
        {
            let name = maps::ENDPOINTS[to];
            let mut map: HashMap<&mut MapData, u32, EndpointInfo> =
                typed(name, self.map_mut(name)?)?;
            clear_hash(&mut map, name)?;
            for (k, v) in endpoints {
                map.insert(k, v, 0).map_err(map_err(name))?;
            }
        }
        self.copy_trie::<[u8; 4], IpcacheEntry>(maps::IPCACHE4[from], maps::IPCACHE4[to])?;
        self.copy_trie::<[u8; 16], IpcacheEntry>(maps::IPCACHE6[from], maps::IPCACHE6[to])?;
        self.copy_trie::<PolicyKey, PolicyEntry>(maps::POLICY[from], maps::POLICY[to])?;
        self.copy_hash::<MeshKey, MeshEntry>(maps::MESH[from], maps::MESH[to])?;
        self.copy_hash::<ServiceKey, ServiceValue>(maps::SERVICES[from], maps::SERVICES[to])?;
        self.written[to] = self.written[from].clone();
        Ok(())
    }

    pub(super) fn copy_hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        from: &'static str,
        to: &'static str,
    ) -> Result<(), DatapathError> {
        let entries: Vec<(K, V)> = {
            let map: HashMap<&mut MapData, K, V> = typed(from, self.map_mut(from)?)?;
            map.iter()
                .collect::<Result<_, _>>()
                .map_err(map_err(from))?
        };
        let mut map: HashMap<&mut MapData, K, V> = typed(to, self.map_mut(to)?)?;
        clear_hash(&mut map, to)?;
        for (k, v) in entries {
            map.insert(k, v, 0).map_err(map_err(to))?;
        }
        Ok(())
    }

    pub(super) fn copy_trie<K: aya::Pod, V: aya::Pod>(
        &mut self,
        from: &'static str,
        to: &'static str,
    ) -> Result<(), DatapathError> {
        let entries: Vec<(Key<K>, V)> = {
            let map: LpmTrie<&mut MapData, K, V> = typed(from, self.map_mut(from)?)?;
            map.iter()
                .collect::<Result<_, _>>()
                .map_err(map_err(from))?
        };
        let mut map: LpmTrie<&mut MapData, K, V> = typed(to, self.map_mut(to)?)?;
        clear_trie(&mut map, to)?;
        for (k, v) in entries {
            map.insert(&k, v, 0).map_err(map_err(to))?;
        }
        Ok(())
    }

    /// The current policy revision (0 before the first `apply`).
    pub fn revision(&self) -> u32 {
        self.config.revision
    }
}

/// How long after a generation flip the old generation may still be read by a program that
/// started before it; `apply` does not rewrite that generation sooner.
pub(super) const GENERATION_GRACE: Duration = Duration::from_millis(20);

/// Checks a state before any of it is written: the kernel reads endpoint id 0 as "no endpoint"
/// (an endpoint with it would go unpoliced), and a prefix cannot be longer than its address.
pub(super) fn validate(state: &PolicyState) -> Result<(), DatapathError> {
    if let Some((ifindex, _)) = state.endpoints.iter().find(|(_, e)| e.endpoint_id == 0) {
        return Err(DatapathError::EndpointIdZero { ifindex: *ifindex });
    }
    for r in &state.ipcache {
        let max = if r.addr.is_ipv4() { 32 } else { 128 };
        if r.prefix_len > max {
            return Err(DatapathError::BadPrefix {
                addr: r.addr,
                prefix_len: r.prefix_len,
            });
        }
    }
    Ok(())
}

pub(super) fn clear_hash<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let keys: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for k in keys {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

pub(super) fn clear_trie<K: aya::Pod, V: aya::Pod>(
    map: &mut LpmTrie<&mut MapData, K, V>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let keys: Vec<Key<K>> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for k in keys {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

/// What generation `slot`'s maps hold now, read from the kernel.
pub(super) fn read_generation(dp: &mut Datapath, slot: usize) -> Result<Written, DatapathError> {
    fn hash<K: aya::Pod + Ord, V: aya::Pod>(
        dp: &mut Datapath,
        name: &'static str,
    ) -> Result<Entries<K, V>, DatapathError> {
        let map: HashMap<&mut MapData, K, V> = typed(name, dp.map_mut(name)?)?;
        map.iter().collect::<Result<_, _>>().map_err(map_err(name))
    }
    fn trie<K: aya::Pod + Ord, V: aya::Pod>(
        dp: &mut Datapath,
        name: &'static str,
    ) -> Result<Entries<(u32, K), V>, DatapathError> {
        let map: LpmTrie<&mut MapData, K, V> = typed(name, dp.map_mut(name)?)?;
        map.iter()
            .map(|e| e.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
            .collect::<Result<_, _>>()
            .map_err(map_err(name))
    }
    Ok(Written {
        endpoints: hash(dp, maps::ENDPOINTS[slot])?,
        ipcache4: trie(dp, maps::IPCACHE4[slot])?,
        ipcache6: trie(dp, maps::IPCACHE6[slot])?,
        policy: trie(dp, maps::POLICY[slot])?,
        mesh: hash(dp, maps::MESH[slot])?,
        services: hash(dp, maps::SERVICES[slot])?,
    })
}

/// Brings a hash map from `old` to `new`.
fn sync_hash<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut HashMap<&mut MapData, K, V>,
    name: &'static str,
    old: Option<&Entries<K, V>>,
    new: &Entries<K, V>,
) -> Result<Changes, DatapathError> {
    let (stale, write) = difference(
        old,
        || map.keys().collect::<Result<_, _>>().map_err(map_err(name)),
        new,
    )?;
    for k in &stale {
        map.remove(k).map_err(map_err(name))?;
    }
    for (k, v) in &write {
        map.insert(*k, *v, 0).map_err(map_err(name))?;
    }
    Ok(Changes {
        written: write.len(),
        removed: stale.len(),
    })
}

/// Brings an LPM trie from `old` to `new`.
fn sync_trie<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut LpmTrie<&mut MapData, K, V>,
    name: &'static str,
    old: Option<&Entries<(u32, K), V>>,
    new: &Entries<(u32, K), V>,
) -> Result<Changes, DatapathError> {
    let (stale, write) = difference(
        old,
        || {
            map.keys()
                .map(|k| k.map(|k| (k.prefix_len(), k.data())))
                .collect::<Result<_, _>>()
                .map_err(map_err(name))
        },
        new,
    )?;
    for (prefix_len, data) in &stale {
        map.remove(&Key::new(*prefix_len, *data))
            .map_err(map_err(name))?;
    }
    for ((prefix_len, data), v) in &write {
        map.insert(&Key::new(*prefix_len, *data), *v, 0)
            .map_err(map_err(name))?;
    }
    Ok(Changes {
        written: write.len(),
        removed: stale.len(),
    })
}
