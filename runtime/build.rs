//! Declares the `loom` cfg used for model-checking builds
//! (`RUSTFLAGS="--cfg loom"`), so normal builds do not warn about it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
