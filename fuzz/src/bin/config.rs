//! AFL++ target `config`: see the crate documentation (`src/lib.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mailconnect_fuzz::config(data));
}
