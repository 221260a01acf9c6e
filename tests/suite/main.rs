//! Every integration test of modelfs, in one test binary: the shared
//! harness (`common`: the HTTPS origin, throwaway stores, real mounts) is
//! compiled once, and each former test binary is a module here. Run one
//! group with `cargo test --test suite <module>::`, for example
//! `cargo test --test suite fault_crash::`.
//!
//! The tests of all modules share one process and run on parallel
//! threads: a test that changes host state (`mount_system`) or process
//! state must take a lock for it or keep the change to its own thread or
//! children, and one whose figures the shared process would skew runs
//! itself alone in a fresh one (`common::rerun_alone`).

mod common;

mod cli;
mod fault_concurrency;
mod fault_crash;
mod fault_hostile;
mod fault_network;
mod fault_resources;
mod fault_secrets_limits;
mod fault_shared_store;
mod fault_store_files;
mod fault_verified;
mod fetch;
mod fetch_head;
mod fetch_ranges;
mod gguf_facts;
mod import_foreign;
mod mirrors;
mod mount_namespace;
mod mount_open;
mod mount_system;
mod origin_selftest;
mod quota;
mod registry;
mod serve;
mod split_models;
