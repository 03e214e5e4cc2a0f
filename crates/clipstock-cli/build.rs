//! Nothing to build. The script exists for its build-dependencies: the `mpi` feature's build
//! (mpi-sys runs bindgen) would otherwise change the features of build-time crates that burn's
//! own build scripts share (clang-sys, regex, pkg-config), and cargo would compile burn a
//! second time for it. Naming them here gives both builds the same host features, so
//! `--features mpi` adds only mpi and mpi-sys.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
