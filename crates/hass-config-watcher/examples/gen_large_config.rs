//! Writes the large benchmark tree (see `benches/support/large_tree.rs`).
//!
//! `cargo run --release -p hass-config-watcher --example gen_large_config -- DIR`

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

#[path = "../benches/support/large_tree.rs"]
mod large_tree;

fn main() {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("big"));
    large_tree::write_large_config(&root);
}
