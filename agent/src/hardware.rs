//! What the box has: architecture, cores, memory (from /proc/meminfo on Linux).

use edgewise_proto as pb;

pub fn snapshot() -> pb::Hardware {
    let (total, available) = meminfo().unwrap_or((0, 0));
    pb::Hardware {
        arch: std::env::consts::ARCH.to_string(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_total_bytes: total,
        memory_available_bytes: available,
    }
}

fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_memory() {
        let h = super::snapshot();
        assert!(h.cores >= 1);
        if cfg!(target_os = "linux") {
            assert!(h.memory_total_bytes > 0 && h.memory_available_bytes <= h.memory_total_bytes);
        }
    }
}
