//! modelfs: a content-addressed model store, a verified fetcher, and a FUSE
//! mount that shows every model as a file and fetches it on first open.
//!
//! Dependencies point one way: `store` ← `fetch` ← `coordinator` ← `fs` ←
//! `fuse` ← `cli`, with `serve` (the HTTPS mirror server) beside `fs` on
//! the coordinator. Nothing below `fuse` knows fuser exists; nothing below
//! `fetch` knows HTTP exists.

// Errors carry the model, URL and digests a user needs to act; they are
// built only on failure, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod adopt;
pub mod cli;
pub mod coordinator;
pub mod digest;
pub mod fetch;
pub mod fs;
pub mod fuse;
pub mod gguf;
pub mod registry;
pub mod serve;
pub mod store;
pub mod sys;
pub mod text;
