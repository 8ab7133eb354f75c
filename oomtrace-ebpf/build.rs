use which::which;

/// Rebuild when bpf-linker changes (it is not a cargo dependency, so cargo cannot see it).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
