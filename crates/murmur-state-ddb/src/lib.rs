//! DynamoDB state for Murmur: the production [`murmur_core::StateStore`] and
//! [`murmur_core::CheckpointStore`], the per-event deduper and table
//! provisioning.
