//! AFL++ target `caller_jwt`: see the crate documentation (`src/lib.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mailconnect_fuzz::caller_jwt(data));
}
