//! The circuit breaker, as a pure state machine fed pass reports: a rule that fails on
//! every case it sees for `limit` passes in a row is disabled until its file changes.

use std::collections::HashMap;

use crate::pass::RuleStats;

#[derive(Debug, Default)]
pub struct Breaker {
    limit: u32,
    /// Rule name -> passes in a row it failed on every case.
    failing: HashMap<String, u32>,
    /// Rule name -> source hash it was disabled at; a changed file re-enables it.
    disabled: HashMap<String, String>,
}

impl Breaker {
    pub fn new(limit: u32) -> Breaker {
        Breaker {
            limit: limit.max(1),
            ..Breaker::default()
        }
    }

    pub fn is_disabled(&self, rule: &str) -> bool {
        self.disabled.contains_key(rule)
    }

    pub fn disabled_count(&self) -> usize {
        self.disabled.len()
    }

    /// The disabled rules' names, sorted.
    pub fn disabled(&self) -> Vec<String> {
        let mut names: Vec<String> = self.disabled.keys().cloned().collect();
        names.sort();
        names
    }

    /// Feeds one pass's per-rule results; returns the rules it disables now.
    /// `hash_of` gives a rule's current source hash. A pass where a rule saw nothing
    /// changes nothing for it.
    pub fn record(
        &mut self,
        rules: &[RuleStats],
        hash_of: impl Fn(&str) -> Option<String>,
    ) -> Vec<String> {
        let mut tripped = Vec::new();
        for s in rules.iter().filter(|s| s.seen > 0) {
            let count = self.failing.entry(s.name.clone()).or_default();
            *count = if s.errors == s.seen { *count + 1 } else { 0 };
            if *count >= self.limit
                && let Some(hash) = hash_of(&s.name)
            {
                *count = 0;
                self.disabled.insert(s.name.clone(), hash);
                tripped.push(s.name.clone());
            }
        }
        tripped
    }

    /// After a reload: a disabled rule whose file changed (or that is gone) is enabled
    /// again, and every count starts over. Returns the rules enabled again.
    pub fn reloaded(&mut self, current: &[(String, String)]) -> Vec<String> {
        self.failing.clear();
        let mut enabled = Vec::new();
        self.disabled.retain(|name, hash| {
            let same = current.iter().any(|(n, h)| n == name && h == hash);
            if !same {
                enabled.push(name.clone());
            }
            same
        });
        enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str, seen: usize, errors: usize) -> RuleStats {
        RuleStats {
            name: name.into(),
            seen,
            errors,
            ..RuleStats::default()
        }
    }

    #[test]
    fn trips_after_the_limit_of_all_failing_passes_in_a_row() {
        let mut b = Breaker::new(3);
        let hash = |_: &str| Some("h1".to_string());
        assert!(b.record(&[stats("a", 5, 5)], hash).is_empty());
        assert!(b.record(&[stats("a", 5, 5)], hash).is_empty());
        // A pass where it saw nothing does not reset or count.
        assert!(b.record(&[stats("a", 0, 0)], hash).is_empty());
        assert_eq!(b.record(&[stats("a", 5, 5)], hash), ["a"]);
        assert!(b.is_disabled("a"));
        assert_eq!(b.disabled_count(), 1);
    }

    #[test]
    fn one_good_case_resets_the_count() {
        let mut b = Breaker::new(2);
        let hash = |_: &str| Some("h".to_string());
        b.record(&[stats("a", 5, 5)], hash);
        b.record(&[stats("a", 5, 4)], hash);
        assert!(b.record(&[stats("a", 5, 5)], hash).is_empty());
        assert!(!b.is_disabled("a"));
    }

    #[test]
    fn a_changed_file_enables_the_rule_again() {
        let mut b = Breaker::new(1);
        b.record(&[stats("a", 1, 1), stats("b", 1, 1)], |n| {
            Some(format!("{n}1"))
        });
        assert!(b.is_disabled("a") && b.is_disabled("b"));
        let enabled = b.reloaded(&[("a".into(), "a1".into()), ("b".into(), "b2".into())]);
        assert_eq!(enabled, ["b"]);
        assert!(b.is_disabled("a") && !b.is_disabled("b"));
    }
}
