//! Integration tests of murmur-source-live.
//!
//! Kafka tests run against librdkafka's in-process mock cluster and need
//! nothing. Kinesis tests need kinesalite (`MURMUR_KINESALITE_ENDPOINT`) and
//! the lease and DynamoDB Streams tests moto (`AWS_ENDPOINT_URL`), both started by `cargo xtask
//! test`; without them a test prints a skip notice and passes, unless
//! `CI=true`, where it fails. Streams and tables get unique names, so tests
//! run in parallel.

mod common;
mod dynamodb_streams;
mod kafka;
mod kinesis;
