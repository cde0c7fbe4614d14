//! Integration tests of murmur-source-snapshot.
//!
//! One test binary per crate: every module below links against the same
//! build, which keeps link time and disk use down.

mod bad_input;
#[allow(dead_code)] // each module uses a different part of it
mod common;
mod corrupt;
mod dynamodb;
mod objects;
mod pyarrow;
