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

/// This process's resident memory (VmRSS), 0 where it cannot be read (not Linux).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
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
            // a megabyte touched shows in the resident figure
            let before = super::resident_bytes();
            let held = vec![1u8; 8 << 20];
            let after = super::resident_bytes();
            assert!(
                before > 0 && after >= before + (4 << 20),
                "{before} -> {after}"
            );
            drop(std::hint::black_box(held));
        }
    }
}
