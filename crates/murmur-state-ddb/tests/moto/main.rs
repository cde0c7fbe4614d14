//! Integration tests of murmur-state-ddb against a DynamoDB stand-in (moto).
//!
//! Every test needs `AWS_ENDPOINT_URL` (set by `cargo xtask test`); without
//! it a test prints a skip notice and passes, unless `CI=true`, where it
//! fails. Each test creates its own uniquely named tables, so tests run in
//! parallel.

mod common;
mod proxy;

mod accounting;
mod bad_input;
mod concurrency;
mod conformance;
mod differential;
mod faults;
mod replay;
