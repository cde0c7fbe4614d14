//! Integration tests of the murmur-worker binary, run as a child process.
//!
//! One test binary per crate: every module below links against the same
//! build, which keeps link time and disk use down.

mod archive;
mod cli;
#[allow(dead_code)] // each module uses a different part of it
mod common;
mod crash;
mod http;
mod replay;
mod seams;
