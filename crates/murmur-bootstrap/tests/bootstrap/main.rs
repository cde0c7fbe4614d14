//! Integration tests of murmur-bootstrap.
//!
//! One test binary per crate: every module below links against the same
//! build, which keeps link time and disk use down.

mod backfill;
mod lane;
mod latest;
mod seam;
