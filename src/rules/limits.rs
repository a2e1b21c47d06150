//! What one rule may ask of one case, how long it may run, and how much it may print: a
//! hostile or broken rule is stopped, located, and the other rules and cases go on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Longest tag the Cases API keeps.
pub const MAX_TAG_CHARS: usize = 128;
/// Longest description casewarden sends.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;

/// Per rule and case (the time: per evaluation); from `[daemon]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Changes (comments included) one rule may ask of one case.
    pub changes_per_case: usize,
    pub comments_per_case: usize,
    pub comment_chars: usize,
    /// Wall-clock time one evaluation may take.
    pub eval_time: Duration,
    /// `print`/`debug` lines one rule may log per pass; the rest are counted.
    pub prints_per_pass: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            changes_per_case: 20,
            comments_per_case: 3,
            comment_chars: 4_000,
            eval_time: Duration::from_millis(1_000),
            prints_per_pass: 50,
        }
    }
}

/// Lines printed and dropped per rule during one pass.
#[derive(Debug, Default)]
pub struct PrintLog {
    counts: Mutex<HashMap<String, (u32, u32)>>,
}

impl PrintLog {
    /// Whether `rule` may log one more line; counts a dropped one otherwise.
    pub fn allow(&self, rule: &str, max: u32) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (printed, dropped) = counts.entry(rule.to_string()).or_default();
        if *printed < max {
            *printed += 1;
            true
        } else {
            *dropped += 1;
            false
        }
    }

    /// (rule, lines dropped) for every rule that printed past its limit.
    pub fn dropped(&self) -> Vec<(String, u32)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u32)> = counts
            .iter()
            .filter(|(_, (_, d))| *d > 0)
            .map(|(r, (_, d))| (r.clone(), *d))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_are_limited_per_rule() {
        let log = PrintLog::default();
        assert!((0..3).all(|_| log.allow("a", 3)));
        assert!(!log.allow("a", 3));
        assert!(log.allow("b", 3));
        assert_eq!(log.dropped(), [("a".to_string(), 1)]);
    }
}
