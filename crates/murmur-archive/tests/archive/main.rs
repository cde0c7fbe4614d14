//! Integration tests of murmur-archive, one binary: Kafka through
//! librdkafka's mock cluster, S3 and DynamoDB on moto (`cargo xtask test`
//! starts it; without it those tests print a skip notice).

mod common;
mod export;
mod kafka;
mod kinesis;
