//! Build script shared by the crates whose tests and binaries link libtorch:
//! records libtorch's library folder as an rpath, so test binaries and the
//! `selftrain` binary run without LD_LIBRARY_PATH. LIBTORCH comes from
//! .cargo/config.toml (the link that scripts/setup.sh makes) or the caller.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
