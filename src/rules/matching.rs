//! Matching helpers for rules: addresses against networks (`in_cidr`) and text against
//! regular expressions (`matches`), with the sandbox's limits on what a rule may compile.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;

use regex::{Regex, RegexBuilder};
use rhai::EvalAltResult;

/// Compiled size a rule's pattern may reach; a pathological pattern is an error, not a
/// stall.
const MAX_REGEX_BYTES: usize = 1 << 20;
/// Patterns compiled once and kept per worker thread; a rule set has few.
const CACHED_PATTERNS: usize = 64;

type Res<T> = Result<T, Box<EvalAltResult>>;

fn rule_error(message: String) -> Box<EvalAltResult> {
    message.into()
}

/// Whether `ip` (v4 or v6) is inside `cidr` (`10.0.0.0/8`; a bare address is one host).
/// Text that is not an address is simply not inside; a malformed network is the rule's error.
pub(super) fn in_cidr(ip: &str, cidr: &str) -> Res<bool> {
    let net: ipnet::IpNet = match cidr.trim().parse() {
        Ok(net) => net,
        Err(_) => match cidr.trim().parse::<IpAddr>() {
            Ok(addr) => addr.into(),
            Err(_) => {
                return Err(rule_error(format!(
                    "in_cidr: {cidr:?} is not a network like \"10.0.0.0/8\" or \"fd00::/8\""
                )));
            }
        },
    };
    Ok(ip.trim().parse::<IpAddr>().is_ok_and(|a| net.contains(&a)))
}

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

/// Whether `text` contains a match of the regular expression `pattern` (Rust's `regex`
/// syntax: no backtracking, so no pattern can run away on a long text).
pub(super) fn matches(text: &str, pattern: &str) -> Res<bool> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(re) = cache.get(pattern) {
            return Ok(re.is_match(text));
        }
        let re = RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|e| rule_error(format!("matches: {pattern:?} is not a valid pattern: {e}")))?;
        let found = re.is_match(text);
        if cache.len() >= CACHED_PATTERNS {
            cache.clear();
        }
        cache.insert(pattern.to_string(), re);
        Ok(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_networks() {
        assert!(in_cidr("10.10.30.20", "10.0.0.0/8").unwrap());
        assert!(!in_cidr("192.168.1.1", "10.0.0.0/8").unwrap());
        assert!(in_cidr("10.1.2.3", "10.1.2.3").unwrap());
        assert!(in_cidr("fd00::1", "fd00::/8").unwrap());
        assert!(!in_cidr("not an ip", "10.0.0.0/8").unwrap());
        assert!(!in_cidr("", "10.0.0.0/8").unwrap());
        let err = in_cidr("10.0.0.1", "10.0.0.0/33").unwrap_err().to_string();
        assert!(err.contains("not a network"), "{err}");
    }

    #[test]
    fn patterns() {
        assert!(matches("vpn-gw-03", r"^vpn-gw-\d+$").unwrap());
        assert!(!matches("dmz-web", r"^vpn").unwrap());
        assert!(matches("Mimikatz detected", "(?i)mimikatz").unwrap());
        let err = matches("x", "(unclosed").unwrap_err().to_string();
        assert!(err.contains("not a valid pattern"), "{err}");
        let err = matches("x", "a{100000}{100000}").unwrap_err().to_string();
        assert!(err.contains("not a valid pattern"), "{err}");
    }
}
