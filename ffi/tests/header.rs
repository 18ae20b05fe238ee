//! The committed C header is what cbindgen generates from this crate now. Regenerate it with
//! `SPE_FFI_WRITE_HEADER=1 cargo test -p spe-policy-ffi --test header`.

use std::path::PathBuf;

#[test]
fn the_committed_header_is_what_cbindgen_generates_from_the_source() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = dir.join("include/spe_policy.h");
    if std::env::var_os("SPE_FFI_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: regenerate it with `SPE_FFI_WRITE_HEADER=1 cargo test -p spe-policy-ffi --test header`",
        path.display()
    );
}
