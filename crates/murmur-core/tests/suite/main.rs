//! Integration tests of murmur-core.
//!
//! One test binary per crate: every module below links against the same
//! build, which keeps link time and disk use down.

mod aggregate_query;
mod conformance_embedded;
mod conformance_memory;
mod embedded_kill;
mod monoids;
