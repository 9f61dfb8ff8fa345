//! Compiles `csrc/jpeg_region.c` (region decode of JPEG records through libjpeg-turbo's
//! libjpeg 6.2 API, see that file for why it is hand-written) and links libjpeg
//! statically, so the binary runs on machines without libjpeg.so.62. Needs jpeglib.h and
//! libjpeg.a (Debian/Ubuntu: `apt-get install libjpeg62-turbo-dev`; `.ci/run` does it).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/jpeg_region.c");
    println!("cargo:rerun-if-env-changed=JPEG_LIB_DIR");
    println!("cargo:rerun-if-env-changed=JPEG_INCLUDE_DIR");
    let mut build = cc::Build::new();
    build.file("csrc/jpeg_region.c").opt_level(2).warnings(true);
    let include_dir = std::env::var("JPEG_INCLUDE_DIR").ok();
    if let Some(dir) = &include_dir {
        build.include(dir);
    }
    let header_dirs = include_dir
        .iter()
        .map(String::as_str)
        .chain(["/usr/include", "/usr/local/include"]);
    if !header_dirs
        .clone()
        .any(|d| Path::new(d).join("jpeglib.h").is_file())
    {
        panic!(
            "jpeglib.h not found in {:?}: deit-pipe decodes JPEG records with libjpeg-turbo; \
             install its development files (`apt-get install libjpeg62-turbo-dev`, which \
             `bash .ci/run` does) or set JPEG_INCLUDE_DIR and JPEG_LIB_DIR",
            header_dirs.collect::<Vec<_>>()
        );
    }
    build.compile("jpeg_region");

    let multiarch = format!(
        "/usr/lib/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("JPEG_LIB_DIR") {
        dirs.push(dir.into());
    }
    dirs.extend(
        [
            multiarch.as_str(),
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/lib",
        ]
        .iter()
        .map(PathBuf::from),
    );
    // Feature `dynamic-libjpeg` (the Python extension, a shared library): Debian's
    // libjpeg.a is not position-independent code, so a cdylib links libjpeg.so.62, the
    // same library (and the same pixels) as the static archive.
    if std::env::var_os("CARGO_FEATURE_DYNAMIC_LIBJPEG").is_some() {
        for d in &dirs {
            if d.join("libjpeg.so").exists() {
                println!("cargo:rustc-link-search=native={}", d.display());
                break;
            }
        }
        println!("cargo:rustc-link-lib=dylib=jpeg");
        return;
    }
    match dirs
        .iter()
        .find(|d| Path::new(d).join("libjpeg.a").is_file())
    {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static=jpeg");
        }
        None => {
            println!(
                "cargo:warning=libjpeg.a not found (install libjpeg62-turbo-dev); linking libjpeg dynamically"
            );
            println!("cargo:rustc-link-lib=dylib=jpeg");
        }
    }
}
