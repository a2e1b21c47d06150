//! What the server sends, as casewarden reads it: the case object (normalised across the
//! legacy (priority, case_score) and v5 (severity, score) flavours while keeping every field
//! the server sent), the values the API accepts, and users, comments and tenants.

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use super::ApiFlavor;
use super::history::{HistoryEntry, history_of};
use super::object::{CaseObject, Kind};

/// Case statuses the API accepts.
pub const STATUSES: [&str; 5] = ["New", "In Progress", "Escalated", "Resolved", "Cancelled"];
/// Priorities (v5: severities) in rank order, Low = 1.
pub const PRIORITIES: [&str; 4] = ["Low", "Medium", "High", "Critical"];
/// Resolutions a v5 server accepts with `status: "Resolved"`.
pub const RESOLUTIONS: [&str; 3] = ["False Positive", "Benign", "True Positive"];
/// The fields of a case object as 4.3 and 5.x servers send them (docs/rules.md), with
/// `priority` and `score` that casewarden fills in for either flavour.
pub const CASE_FIELDS: [&str; 33] = [
    "_id",
    "ticket_id",
    "name",
    "status",
    "priority",
    "severity",
    "priority_num",
    "score",
    "case_score",
    "incident_score",
    "assignee",
    "assignee_name",
    "tags",
    "created_at",
    "created_by",
    "created_by_name",
    "modified_at",
    "modified_by",
    "modified_by_name",
    "acknowledged",
    "closed",
    "cust_id",
    "tenant",
    "tenant_name",
    "size",
    "resolution",
    "description",
    "metadata",
    "history",
    "event_ids",
    "start_timestamp",
    "end_timestamp",
    "version",
];

/// One case. `raw` is the object exactly as the server sent it, plus the normalised
/// `priority` and `score` when the server used `severity` / `case_score`.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: String,
    /// Shared with the rules' views of the case, which only read it.
    raw: Arc<CaseObject>,
    /// The case's change history from `/cases/{id}/activities`, when it was read (5.x
    /// servers send no `history` in the case object).
    pub activities: Option<Arc<Vec<HistoryEntry>>>,
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

impl Case {
    /// [`Case::parse`] with the flavour the object's own field names show.
    pub fn from_value(value: Value) -> Result<Case, CaseParseError> {
        Case::parse(value, None)
    }

    /// Checks the fields casewarden relies on and normalises the flavour-specific names:
    /// `priority` and `score` hold the flavour's truth (v5: `severity`, `score`; legacy:
    /// `priority`, `case_score`), falling back to the other names (and `incident_score`)
    /// when the object lacks them. `flavor` None: the flavour the object shows.
    pub fn parse(value: Value, flavor: Option<ApiFlavor>) -> Result<Case, CaseParseError> {
        Case::from_object(Case::object(value)?, flavor)
    }

    /// The object a parsed case is, checked to be one.
    pub fn object(value: Value) -> Result<CaseObject, CaseParseError> {
        match value {
            Value::Object(raw) => Ok(CaseObject::from_map(raw)),
            other => Err(CaseParseError {
                id: None,
                reason: Kind::of(&other).not_an_object(),
            }),
        }
    }

    /// The object a case is as it stands in a listing's text, its fields read one at a
    /// time when asked for.
    pub fn index(raw: &RawValue) -> Result<CaseObject, CaseParseError> {
        CaseObject::index(raw).map_err(|reason| CaseParseError { id: None, reason })
    }

    /// [`Case::parse`] of an object.
    pub fn from_object(
        mut raw: CaseObject,
        flavor: Option<ApiFlavor>,
    ) -> Result<Case, CaseParseError> {
        let id = match raw.get("_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(CaseParseError {
                    id: None,
                    reason: format!(
                        "_id must be a non-empty string, got {}",
                        Kind::of(other).name()
                    ),
                });
            }
            None => {
                return Err(CaseParseError {
                    id: None,
                    reason: "missing _id".into(),
                });
            }
        };
        check_types(&raw).map_err(|reason| CaseParseError {
            id: Some(id.clone()),
            reason,
        })?;
        let flavor = flavor
            .or_else(|| ApiFlavor::of_case(&raw))
            .unwrap_or_default();
        let (priorities, scores) = match flavor {
            ApiFlavor::V5 => (
                ["severity", "priority"],
                ["score", "case_score", "incident_score"],
            ),
            ApiFlavor::Legacy => (
                ["priority", "severity"],
                ["case_score", "score", "incident_score"],
            ),
        };
        if let Some(p) = priorities
            .iter()
            .find_map(|k| raw.get(k).filter(|v| v.is_string()))
        {
            raw.insert("priority", p.clone());
        }
        if let Some(s) = scores
            .iter()
            .find_map(|k| raw.get(k).filter(|v| v.is_number()))
        {
            raw.insert("score", s.clone());
        }
        // Rules name the customer `tenant`; servers call its id `cust_id`.
        if let Some(t) = raw.get("cust_id").filter(|v| v.is_string()) {
            raw.insert("tenant", t.clone());
        }
        Ok(Case {
            id,
            raw: Arc::new(raw),
            activities: None,
        })
    }

    /// The normalised object, as rules see it.
    pub fn raw(&self) -> &CaseObject {
        &self.raw
    }

    /// The customer (`cust_id`) the case belongs to, when it says.
    pub fn tenant(&self) -> Option<&str> {
        self.str_field("tenant").filter(|t| !t.is_empty())
    }

    /// Adds the customer's name from the server's tenants list when the case does not
    /// carry `tenant_name` itself (4.3 servers send only `cust_id`).
    pub fn name_tenant(&mut self, names: &std::collections::HashMap<String, String>) {
        if self.raw.contains_key("tenant_name") {
            return;
        }
        if let Some(name) = self.tenant().and_then(|t| names.get(t)) {
            let name = Value::String(name.clone());
            Arc::make_mut(&mut self.raw).insert("tenant_name", name);
        }
    }

    pub fn shared_raw(&self) -> Arc<CaseObject> {
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
    /// When the case was opened (ms since epoch).
    pub fn created_at(&self) -> Option<i64> {
        self.int_field("created_at")
    }
    /// When the server last changed the case (ms since epoch), as it wrote it.
    pub fn modified_at(&self) -> Option<i64> {
        self.int_field("modified_at")
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
        history_of(&*self.raw)
    }

    /// A copy with fields replaced, as the server would hold them after an update.
    pub fn with_field(&self, key: &'static str, value: Value) -> Case {
        let mut raw = (*self.raw).clone();
        raw.insert(key, value);
        Case {
            id: self.id.clone(),
            raw: Arc::new(raw),
            activities: self.activities.clone(),
        }
    }
}

/// The fields casewarden relies on have the types it reads them as; Err: what is wrong.
/// Parses the fields the planner and the read before sending rely on (a value the cheap
/// syntax check of a listing let through may still not parse); `history` is only peeked at.
fn check_types(raw: &CaseObject) -> Result<(), String> {
    let kind = |key| Ok::<_, String>(raw.checked(key)?.map(Kind::of));
    for key in [
        "status", "priority", "severity", "assignee", "name", "cust_id",
    ] {
        match kind(key)? {
            None | Some(Kind::Null | Kind::String) => {}
            Some(other) => {
                return Err(format!("{key} must be a string, got {}", other.name()));
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
        "incident_score",
        "ticket_id",
    ] {
        match kind(key)? {
            None | Some(Kind::Null | Kind::Number) => {}
            Some(other) => {
                return Err(format!("{key} must be a number, got {}", other.name()));
            }
        }
    }
    match raw.checked("tags")? {
        None | Some(Value::Null) => {}
        Some(Value::Array(tags)) if tags.iter().all(Value::is_string) => {}
        Some(_) => return Err("tags must be a list of strings".into()),
    }
    match raw.kind("history") {
        None | Some(Kind::Null | Kind::List) => {}
        Some(other) => {
            return Err(format!("history must be a list, got {}", other.name()));
        }
    }
    Ok(())
}

/// A user as `/users` lists it: the id assignments take and the email rules may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: Option<String>,
}

/// The server's users both ways, for assignments and rules that name people by email.
/// Emails compare without case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    by_email: std::collections::HashMap<String, String>,
    by_id: std::collections::HashMap<String, String>,
}

impl Directory {
    pub fn new(users: impl IntoIterator<Item = User>) -> Directory {
        let mut d = Directory::default();
        for u in users {
            if let Some(email) = u.email.filter(|e| !e.is_empty()) {
                d.by_email.insert(email.to_lowercase(), u.id.clone());
                d.by_id.insert(u.id, email);
            }
        }
        d
    }

    pub fn id_of(&self, email: &str) -> Option<&str> {
        self.by_email.get(&email.to_lowercase()).map(String::as_str)
    }

    pub fn email_of(&self, id: &str) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// (id, email) of every user with an email.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_id.iter().map(|(i, e)| (i.as_str(), e.as_str()))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A comment on a case as `/cases/{id}/comments` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Comment {
    pub text: String,
    /// Who wrote it (a user id or name, as the server gives it).
    pub user: Option<String>,
    pub created_at: Option<i64>,
}

/// A customer as `/tenants` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: Option<String>,
}

fn text_of(v: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

impl User {
    /// None for an item without an id (`user_id`, else `_id`).
    pub fn from_value(v: &Value) -> Option<User> {
        Some(User {
            id: text_of(v, &["user_id", "_id"])?,
            email: text_of(v, &["email"]),
        })
    }
}

impl Comment {
    /// None for an item without a `comment` text.
    pub fn from_value(v: &Value) -> Option<Comment> {
        Some(Comment {
            text: v.get("comment")?.as_str()?.to_string(),
            user: text_of(v, &["user", "created_by"]),
            created_at: v.get("created_at").and_then(Value::as_i64),
        })
    }
}

impl Tenant {
    /// None for an item without a `cust_id`.
    pub fn from_value(v: &Value) -> Option<Tenant> {
        Some(Tenant {
            id: text_of(v, &["cust_id", "_id"])?,
            name: text_of(v, &["cust_name", "name"]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_directory_looks_up_both_ways_ignoring_case() {
        let d = Directory::new([
            User {
                id: "u1".into(),
                email: Some("Alice@Example.com".into()),
            },
            User {
                id: "u2".into(),
                email: None,
            },
        ]);
        assert_eq!(d.id_of("alice@example.COM"), Some("u1"));
        assert_eq!(d.email_of("u1"), Some("Alice@Example.com"));
        assert_eq!(d.email_of("u2"), None);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn users_comments_and_tenants_read_what_casewarden_needs() {
        let u = User::from_value(&json!({"user_id": "a1", "email": "bot@x"})).unwrap();
        assert_eq!((u.id.as_str(), u.email.as_deref()), ("a1", Some("bot@x")));
        assert_eq!(User::from_value(&json!({"_id": "b2"})).unwrap().id, "b2");
        assert_eq!(User::from_value(&json!({"email": "no-id@x"})), None);
        let c =
            Comment::from_value(&json!({"comment": "hi", "user": "u9", "created_at": 5})).unwrap();
        assert_eq!(
            (c.text.as_str(), c.user.as_deref(), c.created_at),
            ("hi", Some("u9"), Some(5))
        );
        assert_eq!(Comment::from_value(&json!({"user": "u9"})), None);
        let t = Tenant::from_value(&json!({"cust_id": 7, "cust_name": "Acme"})).unwrap();
        assert_eq!((t.id.as_str(), t.name.as_deref()), ("7", Some("Acme")));
    }

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
    fn the_flavour_decides_which_name_is_the_truth() {
        let both =
            json!({"_id": "a", "priority": "High", "severity": "Low", "case_score": 5, "score": 9});
        let v5 = Case::parse(both.clone(), Some(ApiFlavor::V5)).unwrap();
        assert_eq!((v5.priority(), v5.score()), ("Low", Some(9.0)));
        let legacy = Case::parse(both, Some(ApiFlavor::Legacy)).unwrap();
        assert_eq!((legacy.priority(), legacy.score()), ("High", Some(5.0)));
        let xsoar =
            Case::from_value(json!({"_id": "b", "priority": "Critical", "incident_score": 91.8}))
                .unwrap();
        assert_eq!((xsoar.priority(), xsoar.score()), ("Critical", Some(91.8)));
    }
}
