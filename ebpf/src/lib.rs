//! Empty on purpose: the agent lists this crate as a build dependency only so that cargo reruns
//! the agent's build script when the kernel programs change. The programs are in `main.rs`.
#![no_std]
