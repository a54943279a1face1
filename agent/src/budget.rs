//! The agent's memory budget for models (`[models] memory_budget`) and keep-alive rules:
//! the raw forms a config file may use, their validation, and what they resolve to at start.

use std::time::Duration;

use serde::Deserialize;

/// `memory_budget` as written: a byte count, or text (`"6 GiB"`, `"512MiB"`, `"2GB"`, `"60%"`).
#[derive(Debug, Clone)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Size;
        impl serde::de::Visitor<'_> for Size {
            type Value = RawSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size: bytes (6442450944), text with a unit (\"6 GiB\") or a share of available memory (\"60%\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                u64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom(format!("{v} must be more than 0")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        d.deserialize_any(Size)
    }
}

/// A budget as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Bytes(u64),
    /// A share (0 < s ≤ 1) of the memory available when the agent starts.
    Share(f64),
}

impl Budget {
    /// The budget in bytes, given the memory available now (0: unknown; a share then
    /// resolves to no budget rather than to zero).
    pub fn resolve(self, available: u64) -> Option<u64> {
        match self {
            Budget::Bytes(b) => Some(b),
            Budget::Share(_) if available == 0 => None,
            Budget::Share(s) => Some((available as f64 * s) as u64),
        }
    }
}

/// `[models]` residency settings, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryConfig {
    /// `None`: no budget: every model loads at start and stays.
    pub budget: Option<Budget>,
    /// Idle time before an unpinned model may be unloaded. `None` (the default without a
    /// budget): never unloaded for idleness.
    pub keep_alive: Option<Duration>,
    /// The longest keep-alive a request may ask for.
    pub max_keep_alive: Duration,
}

/// Keep-alive default when a budget is set (Ollama's).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(300);
const DEFAULT_MAX_KEEP_ALIVE: Duration = Duration::from_secs(3600);
/// Longest keep-alive any setting may name (a day); pin a model to keep it for good.
const KEEP_ALIVE_LIMIT_MS: u64 = 86_400_000;
/// Smallest budget worth running with: one small encoder.
const MIN_BUDGET: u64 = 16 << 20;

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            budget: None,
            keep_alive: None,
            max_keep_alive: DEFAULT_MAX_KEEP_ALIVE,
        }
    }
}

pub fn check_keep_alive(ms: u64) -> Result<(), String> {
    if ms > KEEP_ALIVE_LIMIT_MS {
        Err(format!(
            "{ms} ms is more than a day ({KEEP_ALIVE_LIMIT_MS}); pin the model to keep it resident"
        ))
    } else {
        Ok(())
    }
}

/// Validates the `[models]` budget and keep-alives; problems go to `problem(path, message)`.
/// `machine` is the box's total memory (0: unknown).
pub fn validate(
    budget: Option<RawSize>,
    keep_alive_ms: Option<u64>,
    max_keep_alive_ms: Option<u64>,
    machine: u64,
    problem: &mut impl FnMut(&str, String),
) -> MemoryConfig {
    let mut cfg = MemoryConfig::default();
    if let Some(raw) = budget {
        match parse_size(&raw) {
            Err(m) => problem("models.memory_budget", m),
            Ok(Budget::Bytes(b)) if b < MIN_BUDGET => problem(
                "models.memory_budget",
                format!("{} is too small (at least {})", show(b), show(MIN_BUDGET)),
            ),
            Ok(Budget::Bytes(b)) if machine > 0 && b > machine => problem(
                "models.memory_budget",
                format!(
                    "{} is more than this machine's memory ({})",
                    show(b),
                    show(machine)
                ),
            ),
            Ok(b) => {
                cfg.budget = Some(b);
                cfg.keep_alive = Some(DEFAULT_KEEP_ALIVE);
            }
        }
    }
    if let Some(ms) = keep_alive_ms {
        match check_keep_alive(ms) {
            Ok(()) => cfg.keep_alive = Some(Duration::from_millis(ms)),
            Err(m) => problem("models.keep_alive_ms", m),
        }
    }
    if let Some(ms) = max_keep_alive_ms {
        match check_keep_alive(ms) {
            Ok(()) => cfg.max_keep_alive = Duration::from_millis(ms),
            Err(m) => problem("models.max_keep_alive_ms", m),
        }
    }
    cfg
}

/// Reads a size: an integer byte count, `N[.F] unit` with units B, KB/MB/GB (powers of
/// 1000) or KiB/MiB/GiB (powers of 1024), or a percentage of available memory.
pub fn parse_size(raw: &RawSize) -> Result<Budget, String> {
    let text = match raw {
        RawSize::Bytes(0) => return Err("must be more than 0".into()),
        RawSize::Bytes(b) => return Ok(Budget::Bytes(*b)),
        RawSize::Text(t) => t.trim(),
    };
    let bad = || {
        format!(
            "`{text}` is not a size: write bytes (6442450944), a size with a unit (\"6 GiB\", \"512MiB\", \"2GB\") or a share of available memory (\"60%\")"
        )
    };
    if let Some(pct) = text.strip_suffix('%') {
        let p: f64 = pct.trim().parse().map_err(|_| bad())?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(format!("{pct}% must be more than 0% and at most 100%"));
        }
        return Ok(Budget::Share(p / 100.0));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = n * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{text}` must be more than 0 bytes"));
    }
    Ok(Budget::Bytes(bytes as u64))
}

/// Bytes for people: "1.5 GiB", "845 MiB".
pub fn show(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 40 {
        format!("{:.1} TiB", b / (1u64 << 40) as f64)
    } else if bytes >= 1 << 30 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Result<Budget, String> {
        parse_size(&RawSize::Text(s.into()))
    }

    #[test]
    fn sizes_units_and_shares() {
        assert_eq!(text("6 GiB"), Ok(Budget::Bytes(6 << 30)));
        assert_eq!(text("512MiB"), Ok(Budget::Bytes(512 << 20)));
        assert_eq!(text("2GB"), Ok(Budget::Bytes(2_000_000_000)));
        assert_eq!(text("1.5 gib"), Ok(Budget::Bytes(3 << 29)));
        assert_eq!(text("1048576"), Ok(Budget::Bytes(1 << 20)));
        assert_eq!(text("60%"), Ok(Budget::Share(0.6)));
        assert_eq!(
            parse_size(&RawSize::Bytes(1 << 30)),
            Ok(Budget::Bytes(1 << 30))
        );
        assert_eq!(Budget::Share(0.5).resolve(8 << 30), Some(4 << 30));
        assert_eq!(Budget::Share(0.5).resolve(0), None);
        for bad in ["", "six GiB", "6 GiBs", "1..5GB", "GiB"] {
            let e = text(bad).err().unwrap_or_default();
            assert!(e.contains("is not a size"), "{bad}: {e}");
        }
        for (bad, says) in [
            ("0%", "more than 0%"),
            ("150%", "at most 100%"),
            ("0 GiB", "more than 0 bytes"),
        ] {
            let e = text(bad).err().unwrap_or_default();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse_size(&RawSize::Bytes(0)).is_err());
    }

    #[test]
    fn validation_bounds_the_budget_by_the_machine() {
        let mut problems = Vec::new();
        let mut p = |path: &str, m: String| problems.push(format!("{path}: {m}"));
        let cfg = validate(
            Some(RawSize::Text("64 GiB".into())),
            Some(90_000_000),
            None,
            8 << 30,
            &mut p,
        );
        assert_eq!(cfg.budget, None);
        assert_eq!(
            problems,
            vec![
                "models.memory_budget: 64.0 GiB is more than this machine's memory (8.0 GiB)"
                    .to_string(),
                "models.keep_alive_ms: 90000000 ms is more than a day (86400000); pin the model to keep it resident".into(),
            ]
        );
        let mut none = |_: &str, m: String| panic!("{m}");
        let cfg = validate(
            Some(RawSize::Text("50%".into())),
            None,
            None,
            8 << 30,
            &mut none,
        );
        assert_eq!(cfg.budget, Some(Budget::Share(0.5)));
        assert_eq!(cfg.keep_alive, Some(DEFAULT_KEEP_ALIVE));
        let cfg = validate(None, None, None, 8 << 30, &mut none);
        assert_eq!(cfg.keep_alive, None);
    }
}
