//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds `../migrations` at
//! compile time, and cargo does not know it reads that directory.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
