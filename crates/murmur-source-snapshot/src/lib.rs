//! Snapshot sources for Murmur backfills.
//!
//! This crate will hold JSON Lines and Parquet readers over `object_store`
//! (local directory, S3, memory) with Hive partition parsing, partition
//! pruning and streaming decompression, plus a DynamoDB parallel scan behind
//! the `dynamodb` feature. Sources produce [`murmur_core::Record`]s only; they
//! know nothing of keys, monoids or stores.
