//! What the benchmark examples share: the process's memory from `/proc/self/status`.

/// A `/proc/self/status` field in kB (`VmRSS`, `VmHWM`), as MB; NaN where the file is unreadable.
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resident memory now.
#[allow(dead_code)]
pub fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// The most resident memory the process has had.
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}
