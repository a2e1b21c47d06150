//! The case object, normalised across the legacy (priority, case_score) and v5 (severity,
//! score) flavours while keeping every field the server sent.

use std::sync::Arc;

use serde_json::{Map, Value};

/// Case statuses the API accepts.
pub const STATUSES: [&str; 5] = ["New", "In Progress", "Escalated", "Resolved", "Cancelled"];
/// Priorities (v5: severities) in rank order, Low = 1.
pub const PRIORITIES: [&str; 4] = ["Low", "Medium", "High", "Critical"];
/// Resolutions a v5 server accepts with `status: "Resolved"`.
pub const RESOLUTIONS: [&str; 3] = ["False Positive", "Benign", "True Positive"];

/// Rank of a priority, Low 1 .. Critical 4; anything else 0.
pub fn priority_rank(p: &str) -> i64 {
    PRIORITIES
        .iter()
        .position(|x| *x == p)
        .map_or(0, |i| i as i64 + 1)
}

/// One case. `raw` is the object exactly as the server sent it, plus the normalised
/// `priority` and `score` when the server used `severity` / `case_score`.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: String,
    /// Shared with the rules' views of the case, which only read it.
    raw: Arc<Map<String, Value>>,
}

/// Why a case object was skipped: its id when it had one, and what was wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseParseError {
    pub id: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for CaseParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "case {id}: {}", self.reason),
            None => write!(f, "case without _id: {}", self.reason),
        }
    }
}

/// One entry of a case's `history`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub field: String,
    pub timestamp: i64,
    pub user: String,
    pub api: bool,
}

impl Case {
    /// Checks the fields casewarden relies on and normalises the flavour-specific names.
    pub fn from_value(value: Value) -> Result<Case, CaseParseError> {
        let Value::Object(mut raw) = value else {
            return Err(CaseParseError {
                id: None,
                reason: format!("expected a JSON object, got {}", type_name(&value)),
            });
        };
        let id = match raw.get("_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(CaseParseError {
                    id: None,
                    reason: format!("_id must be a non-empty string, got {}", type_name(other)),
                });
            }
            None => {
                return Err(CaseParseError {
                    id: None,
                    reason: "missing _id".into(),
                });
            }
        };
        let fail = |reason: String| CaseParseError {
            id: Some(id.clone()),
            reason,
        };
        for key in [
            "status", "priority", "severity", "assignee", "name", "cust_id",
        ] {
            match raw.get(key) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(fail(format!(
                        "{key} must be a string, got {}",
                        type_name(other)
                    )));
                }
            }
        }
        for key in [
            "created_at",
            "modified_at",
            "acknowledged",
            "closed",
            "case_score",
            "score",
            "ticket_id",
        ] {
            match raw.get(key) {
                None | Some(Value::Null) | Some(Value::Number(_)) => {}
                Some(other) => {
                    return Err(fail(format!(
                        "{key} must be a number, got {}",
                        type_name(other)
                    )));
                }
            }
        }
        match raw.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(tags)) if tags.iter().all(Value::is_string) => {}
            Some(_) => return Err(fail("tags must be a list of strings".into())),
        }
        match raw.get("history") {
            None | Some(Value::Null) | Some(Value::Array(_)) => {}
            Some(other) => {
                return Err(fail(format!(
                    "history must be a list, got {}",
                    type_name(other)
                )));
            }
        }
        if !matches!(raw.get("priority"), Some(Value::String(_)))
            && let Some(sev) = raw.get("severity").cloned()
        {
            raw.insert("priority".into(), sev);
        }
        if !matches!(raw.get("score"), Some(Value::Number(_)))
            && let Some(score) = raw.get("case_score").cloned()
        {
            raw.insert("score".into(), score);
        }
        Ok(Case {
            id,
            raw: Arc::new(raw),
        })
    }

    /// The normalised object, as rules see it.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    pub fn shared_raw(&self) -> Arc<Map<String, Value>> {
        self.raw.clone()
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    fn int_field(&self, key: &str) -> Option<i64> {
        let v = self.raw.get(key)?;
        v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
    }

    pub fn ticket_id(&self) -> Option<i64> {
        self.int_field("ticket_id")
    }
    pub fn status(&self) -> &str {
        self.str_field("status").unwrap_or("")
    }
    /// `priority`, or `severity` on v5 servers.
    pub fn priority(&self) -> &str {
        self.str_field("priority").unwrap_or("")
    }
    pub fn assignee(&self) -> &str {
        self.str_field("assignee").unwrap_or("")
    }
    pub fn description(&self) -> &str {
        self.str_field("description").unwrap_or("")
    }
    /// `score`, or `case_score` on legacy servers.
    pub fn score(&self) -> Option<f64> {
        self.raw.get("score").and_then(Value::as_f64)
    }
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.raw
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags().any(|t| t == tag)
    }

    /// History entries that carry a field and a timestamp; malformed entries are ignored.
    pub fn history(&self) -> Vec<HistoryEntry> {
        history_of(&self.raw)
    }

    /// A copy with fields replaced, as the server would hold them after an update.
    pub fn with_field(&self, key: &str, value: Value) -> Case {
        let mut raw = (*self.raw).clone();
        raw.insert(key.to_string(), value);
        Case {
            id: self.id.clone(),
            raw: Arc::new(raw),
        }
    }
}

/// Whether a history entry is casewarden's own: made through the API by one of its
/// identities or, when those are unknown (a Bearer key without `stellar.user`), through the
/// API at all. Own entries are not human activity.
pub fn is_own_entry(api: bool, user: &str, own: &[String]) -> bool {
    api && (own.is_empty() || own.iter().any(|o| o == user))
}

/// History entries of a raw case object.
pub fn history_of(raw: &Map<String, Value>) -> Vec<HistoryEntry> {
    raw.get("history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|h| {
            Some(HistoryEntry {
                field: h.get("field")?.as_str()?.to_string(),
                timestamp: h.get("timestamp")?.as_i64()?,
                user: h
                    .get("user")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                api: h.get("api").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parsed `metadata.entity_id`: `kind,name,ip` (4.3) or `kind,name,...ids...,ip` (newer).
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub kind: String,
    pub name: String,
    pub ip: Option<String>,
}

pub fn parse_entity(entity_id: &str) -> Option<Entity> {
    let parts: Vec<&str> = entity_id.split(',').map(str::trim).collect();
    if parts.len() < 2 || parts[0].is_empty() {
        return None;
    }
    let last = parts[parts.len() - 1];
    let ip =
        (parts.len() >= 3 && last.parse::<std::net::IpAddr>().is_ok()).then(|| last.to_string());
    Some(Entity {
        kind: parts[0].to_string(),
        name: parts[1].to_string(),
        ip,
    })
}

/// The entity of a raw case object, if it has a usable `metadata.entity_id`.
pub fn entity_of(raw: &Map<String, Value>) -> Option<Entity> {
    raw.get("metadata")?
        .get("entity_id")?
        .as_str()
        .and_then(parse_entity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v5_names_are_normalised() {
        let c = Case::from_value(json!({"_id": "a", "severity": "High", "score": 40})).unwrap();
        assert_eq!(c.priority(), "High");
        assert_eq!(c.score(), Some(40.0));
        let c = Case::from_value(json!({"_id": "b", "priority": "Low", "case_score": 7})).unwrap();
        assert_eq!(c.priority(), "Low");
        assert_eq!(c.score(), Some(7.0));
    }

    #[test]
    fn bad_cases_name_their_id_and_field() {
        let e = Case::from_value(json!({"_id": "x", "tags": "a,b"})).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("x"));
        assert!(e.reason.contains("tags"));
        let e = Case::from_value(json!({"name": "no id"})).unwrap_err();
        assert_eq!(e.id, None);
        let e = Case::from_value(json!({"_id": "y", "created_at": "yesterday"})).unwrap_err();
        assert!(e.to_string().contains("case y: created_at"));
    }

    #[test]
    fn entity_forms() {
        let e = parse_entity("asset,,10.10.30.20").unwrap();
        assert_eq!(
            (e.kind.as_str(), e.name.as_str(), e.ip.as_deref()),
            ("asset", "", Some("10.10.30.20"))
        );
        let e = parse_entity("user,jdoe,abc,def,10.1.2.3").unwrap();
        assert_eq!(
            (e.name.as_str(), e.ip.as_deref()),
            ("jdoe", Some("10.1.2.3"))
        );
        let e = parse_entity("host,web01").unwrap();
        assert_eq!(e.ip, None);
        assert_eq!(parse_entity(""), None);
    }
}
