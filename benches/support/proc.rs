//! What the benchmarks read from /proc about their own process.
#![allow(dead_code)] // each benchmark uses some of these

/// CPU microseconds of a `/proc/.../stat` file (user + system).
pub fn cpu_us(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz * 1e6
}

/// Bytes this process has caused to be written to disk.
pub fn write_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// The `/proc/self/task/<tid>/stat` of the store's writer thread.
pub fn writer_stat() -> Option<String> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
        let path = task.ok()?.path();
        let name = std::fs::read_to_string(path.join("comm")).ok()?;
        (name.trim() == "sessiond-writer").then(|| path.join("stat").display().to_string())
    })
}
