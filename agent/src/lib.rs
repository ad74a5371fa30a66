//! The Rampart agent as a library: the binary (`main.rs`) is a thin entry on top of it, and the
//! privileged tests drive the loader (`datapath`) and the policy-map builder in-process.

pub mod activity;
pub mod admin;
pub mod admin_client;
pub mod allocator;
pub mod app;
pub mod ca_cli;
pub mod ca_service;
pub mod cli;
pub mod config;
pub mod controller;
pub mod datapath;
pub mod dns_name;
pub mod explain;
pub mod flows;
pub mod flows_cli;
pub mod fuzzing;
pub mod generation;
pub mod handover;
pub mod host_addresses;
pub mod kernel_log_cli;
pub mod kernel_log_level;
pub mod kernel_state;
pub mod l7;
pub mod limits;
pub mod listen;
pub mod mesh;
pub mod metrics;
pub mod pod_interfaces;
pub mod policy;
pub mod policy_cli;
pub mod sources;
pub mod spiffe;
pub mod state;
pub mod status;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tidy;
pub mod veth_peers;
pub mod view;
