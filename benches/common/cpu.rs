//! The machine a benchmark ran on, printed first: tlearn's speed relative to others differs a lot
//! between CPU kinds (AVX2 vs AVX-512/VNNI/AMX), so every table names its CPU.

/// The first `k: value` line of /proc/cpuinfo (Linux), if any.
fn field(k: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines().find(|l| l.starts_with(k)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
}

/// Does the CPU report this flag (e.g. `amx_bf16`)?
#[allow(dead_code)]
pub fn has(flag: &str) -> bool {
    field("flags").unwrap_or_default().split_whitespace().any(|x| x == flag)
}

/// "CPU model, N threads, ISA: avx2 avx512f …" from /proc/cpuinfo (Linux).
pub fn describe() -> String {
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let isa: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("CPU: {model}, {threads} threads, ISA: {}", if isa.is_empty() { "-".into() } else { isa.join(" ") })
}
