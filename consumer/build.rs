//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and Cargo reruns a macro only when a Rust source it knows
//! changes, so a new migration alone left binaries and tests migrating to the old list.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
