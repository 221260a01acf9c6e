//! OCI distribution registries, as plain data: references
//! (`REGISTRY/REPO[:TAG][@DIGEST]`), manifests and the weight layer in
//! them, authentication challenges and Docker-style credentials. No HTTP
//! here: [`crate::fetch::oci`] speaks to registries with these.

pub mod auth;
pub mod manifest;
pub mod reference;

pub use reference::{Reference, ReferenceError};
