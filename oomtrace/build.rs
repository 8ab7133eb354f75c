//! Builds the eBPF programs (oomtrace-ebpf) for bpfel-unknown-none with the pinned nightly.
fn main() -> anyhow::Result<()> {
    let toolchain = std::env::var("OOMTRACE_EBPF_TOOLCHAIN").ok();
    println!("cargo:rerun-if-env-changed=OOMTRACE_EBPF_TOOLCHAIN");
    let toolchain = match toolchain.as_deref() {
        Some(t) => aya_build::Toolchain::Custom(t),
        None => aya_build::Toolchain::Custom(PINNED_NIGHTLY),
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "oomtrace-ebpf",
            root_dir: "../oomtrace-ebpf",
            ..Default::default()
        }],
        toolchain,
    )
}

/// Keep in step with rust-toolchain.toml.
const PINNED_NIGHTLY: &str = "nightly-2026-10-01";
