//! glibc malloc tuning for the processes that train. A training step allocates and frees a few GB of
//! activations; with glibc's defaults the freed heap is handed back to the kernel at the end of every step
//! and the next step faults it in again, zeroed page by page (a fifth of a step's time in `perf`). Raising
//! the trim and mmap thresholds keeps that memory in the process: 117 -> 161 tokens/s on SmolLM2
//! (BENCHMARKS.md). The thresholds can only be set before the allocator starts, so the process re-executes
//! itself once with `GLIBC_TUNABLES` set, before any thread exists. Set `GLIBC_TUNABLES` yourself (even to
//! an empty string) to opt out; non-glibc systems ignore the variable.

/// Keep up to this much freed memory instead of returning it to the kernel.
const TRIM_THRESHOLD: u64 = 8 << 30;
/// Allocations below this come from the heap (reused) rather than fresh mappings.
const MMAP_THRESHOLD: u64 = 32 << 20;

/// Re-executes the current process with the tunables when `argv` names a training subcommand and the
/// caller did not set `GLIBC_TUNABLES`. Returns only if it does not re-execute (or the exec failed).
pub fn tune_for_training() {
    if std::env::var_os("GLIBC_TUNABLES").is_some()
        || !cfg!(all(target_os = "linux", target_env = "gnu"))
    {
        return;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let trains = args.iter().skip(1).any(|a| a == "serve" || a == "train");
    if !trains {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(exe)
            .args(&args[1..])
            .env(
                "GLIBC_TUNABLES",
                format!(
                    "glibc.malloc.trim_threshold={TRIM_THRESHOLD}:glibc.malloc.mmap_threshold={MMAP_THRESHOLD}"
                ),
            )
            .exec();
        // exec only returns on failure: carry on untuned
        eprintln!("warning: could not re-execute with malloc tuning: {err}");
    }
}
