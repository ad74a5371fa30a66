//! The kernel interface of Rampart: every type that both the eBPF programs and the agent read or
//! write in a map lives here, and only here.
//!
//! Rules for this crate (see ARCHITECTURE.md, "Architecture invariants"):
//! - `#![no_std]`, `#[repr(C)]`, explicit padding, sizes asserted at compile time;
//! - no `bool`, `Option` or Rust enums in memory the kernel writes: integer newtypes with consts;
//! - map names are at most 15 characters and carry a version suffix;
//! - `aya::Pod` impls exist only behind the `user` feature.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod counters;
pub mod endpoint;
pub mod event;
pub mod frag;
pub mod identity;
pub mod ipcache;
pub mod kernel_log;
pub mod maps;
pub mod mesh;
pub mod policy;
pub mod reason;
pub mod service;
