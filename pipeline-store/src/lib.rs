//! The queries more than one component runs on the same tables, in one place: the consumer
//! writes checkpoints and findings about its logs, and `status`, the lag watch and the bench
//! read them. A change to one of these tables is then a migration and this crate. Queries only
//! one component runs stay beside it (the consumer's fenced checkpoint writes in
//! `consumer/src/sink/checkpoints.rs`, the ledger's in `sink/ledger.rs`).

pub mod checkpoints;
pub mod log_events;
