//! The Murmur runner: backfill, then hand off to live, through one
//! [`murmur_core::Pipeline`] value.
//!
//! This crate will hold the backfill and live runners (fenced batch writes,
//! resume from lane checkpoints, the handoff token) and the reference
//! `murmur-worker` binary.
