//! modelfs: a content-addressed model store, a verified fetcher, and a FUSE
//! mount that shows every model as a file and fetches it on first open.
//!
//! Dependencies point one way: `store` ← `fetch` ← `coordinator` ← `fs` ←
//! `fuse` ← `cli`. Nothing below `fuse` knows fuser exists; nothing below
//! `fetch` knows HTTP exists.

pub mod digest;
pub mod store;
