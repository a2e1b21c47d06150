//! The Cases API's list filters as a real server applies them. The simulator serves with
//! [`matches`]; the client re-checks every listed case with [`recheck`], because a server
//! may ignore a filter.

use serde_json::Value;

use super::object::Object;

/// Filter keys casewarden knows the meaning of (each may also take a `NOT~` prefix).
pub const KEYS: [&str; 12] = [
    "status",
    "priority",
    "severity",
    "assignee",
    "tags",
    "tenantid",
    "cust_id",
    "ticket_id",
    "modified_by",
    "created_by",
    "resolution",
    "name",
];
/// Fields `FROM~` / `TO~` bound (epoch ms, or the score).
pub const RANGE_FIELDS: [&str; 5] = [
    "created_at",
    "modified_at",
    "score",
    "acknowledged",
    "closed",
];

/// Whether `key` (with or without `NOT~`) is a filter casewarden can re-check.
pub fn is_known(key: &str) -> bool {
    let bare = key.strip_prefix("NOT~").unwrap_or(key);
    KEYS.contains(&bare)
        || ["FROM~", "TO~"].iter().any(|p| {
            bare.strip_prefix(p)
                .is_some_and(|f| RANGE_FIELDS.contains(&f))
        })
}

/// One filter, `NOT~` included, as the server applies it to a case object: any field
/// can be filtered on, numbers compare as numbers, and a field the case lacks is "not
/// equal" (so `NOT~field=x` keeps it).
pub fn matches(case: &impl Object, key: &str, value: &str) -> bool {
    match key.strip_prefix("NOT~") {
        Some(bare) => !positive(case, bare, value),
        None => positive(case, key, value),
    }
}

/// The client's re-check of a rule's hints: every known filter must match; an unknown
/// key is left to the server (logged at debug) rather than dropping every case.
pub fn recheck(case: &impl Object, hints: &[(String, String)]) -> bool {
    first_failing(case, hints).is_none()
}

/// The first of `hints` that `case` fails, as [`recheck`] reads them.
pub fn first_failing<'h>(
    case: &impl Object,
    hints: &'h [(String, String)],
) -> Option<&'h (String, String)> {
    hints.iter().find(|(k, v)| {
        if is_known(k) {
            !matches(case, k, v)
        } else {
            tracing::debug!(filter = %k, "not re-checked on the client: unknown filter key");
            false
        }
    })
}

fn positive(case: &impl Object, key: &str, value: &str) -> bool {
    if let Some(field) = key.strip_prefix("FROM~") {
        let bound = value.trim().parse::<f64>().unwrap_or(f64::MIN);
        return number(case, field).is_some_and(|v| v >= bound);
    }
    if let Some(field) = key.strip_prefix("TO~") {
        let bound = value.trim().parse::<f64>().unwrap_or(f64::MAX);
        return number(case, field).is_some_and(|v| v <= bound);
    }
    let field = match key {
        // The server files both names under one field; whichever the case carries.
        "priority" => case.get("priority").or_else(|| case.get("severity")),
        "severity" => case.get("severity").or_else(|| case.get("priority")),
        "tenantid" => case.get("cust_id"),
        other => case.get(other),
    };
    let Some(field) = field else {
        return false;
    };
    value.split(',').map(str::trim).any(|v| equals(field, v))
}

/// Whether a field's value equals one filter value: strings exactly, numbers as numbers,
/// a list when any element equals it.
fn equals(field: &Value, v: &str) -> bool {
    match field {
        Value::String(s) => s == v,
        Value::Number(n) => n
            .as_f64()
            .is_some_and(|n| v.parse::<f64>().is_ok_and(|x| x == n)),
        Value::Bool(b) => v.parse::<bool>().is_ok_and(|x| x == *b),
        Value::Array(items) => items.iter().any(|i| equals(i, v)),
        Value::Null | Value::Object(_) => false,
    }
}

/// A numeric field; `score` is also found under the older names.
fn number(case: &impl Object, field: &str) -> Option<f64> {
    let v = case
        .get(field)
        .filter(|v| v.is_number())
        .or_else(|| match field {
            "score" => case
                .get("case_score")
                .or_else(|| case.get("incident_score")),
            _ => None,
        })?;
    v.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn case(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn numbers_compare_as_numbers() {
        let c = case(json!({"ticket_id": 60004, "score": 91.8}));
        assert!(matches(&c, "ticket_id", "60004"));
        assert!(matches(&c, "ticket_id", "1,60004"));
        assert!(!matches(&c, "ticket_id", "60000"));
        assert!(matches(&c, "FROM~score", "90"));
        assert!(!matches(&c, "TO~score", "90"));
    }

    #[test]
    fn not_works_on_any_field_and_a_missing_field_is_not_equal() {
        let c = case(json!({"modified_by": "abc", "status": "New"}));
        assert!(!matches(&c, "NOT~modified_by", "abc"));
        assert!(matches(&c, "NOT~modified_by", "def"));
        assert!(matches(&c, "NOT~no_such_field", "x"));
        assert!(!matches(&c, "no_such_field", "x"));
        assert!(matches(&c, "NOT~tags", "x"));
    }

    #[test]
    fn unknown_keys_are_not_rechecked() {
        let c = case(json!({"status": "New"}));
        let hints = vec![
            ("status".to_string(), "New".to_string()),
            ("q".to_string(), "anything".to_string()),
        ];
        assert!(recheck(&c, &hints));
        assert!(!recheck(&c, &[("status".into(), "Resolved".into())]));
    }

    #[test]
    fn priority_and_severity_name_one_field() {
        let c = case(json!({"severity": "High"}));
        assert!(matches(&c, "priority", "Low,High"));
        assert!(!matches(&c, "tags", "x"));
    }
}
