//! Live sources for Murmur workers.
//!
//! This crate will hold the Kafka (rdkafka) and Kinesis (aws-sdk-kinesis)
//! sources that start exactly at a [`murmur_core::HandoffToken`] and
//! acknowledge a lane position only after the batch ending there is durable.
