//! Rebuilds the eBPF object when the linker changes (it is found on PATH).
use which::which;

fn main() {
    // bpf-linker is not a cargo dependency, so cargo cannot know when it was
    // upgraded; track its path so a new linker relinks the object.
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
