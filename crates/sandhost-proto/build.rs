//! Compiles `proto/sandhost/v1/*.proto` with protox (pure Rust: no system `protoc`) and generates the
//! tonic services with tonic-prost-build. Also writes the file descriptor set (with its imports) that
//! the server's reflection service serves.

use std::path::PathBuf;

use prost::Message as _;

const FILES: [&str; 2] = ["sandhost/v1/sandbox.proto", "sandhost/v1/node.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }

    // Our files and everything they import: prost needs the imported messages to derive traits, and
    // reflection clients need them to resolve every type. The well-known types map to prost-types.
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(FILES)?;
    let descriptors = compiler.file_descriptor_set();
    std::fs::write(out_dir.join("sandhost_v1_descriptor.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure().btree_map(".").compile_fds(descriptors)?;
    Ok(())
}
