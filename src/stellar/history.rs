//! casewarden's own identity in a case's history: which entries are its own, the entries of
//! a 5.x `/activities` answer, when a person last touched the case and when it entered its
//! status.

use serde_json::Value;

use super::object::Object;

/// One entry of a case's `history` (or of its `/activities` on 5.x servers).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub field: String,
    pub timestamp: i64,
    pub user: String,
    pub api: bool,
}

/// Whether a history entry is casewarden's own: made through the API by one of its
/// identities or, when those are unknown (a Bearer key without `stellar.user`), through the
/// API at all. Own entries are not human activity.
pub fn is_own_entry(api: bool, user: &str, own: &[String]) -> bool {
    api && (own.is_empty() || own.iter().any(|o| o.eq_ignore_ascii_case(user)))
}

/// History entries of a raw case object.
pub(super) fn history_of(raw: &impl Object) -> Vec<HistoryEntry> {
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

/// Entries of a `/cases/{id}/activities` answer's list. Field names vary between server
/// versions, so each value is looked for under the names seen; an entry without a time is
/// dropped. An entry without an `api` flag counts as made through the API, so that only
/// an entry by someone other than casewarden's own user is taken as a person's.
pub fn activities_of(items: &[Value]) -> Vec<HistoryEntry> {
    let first_str = |h: &Value, keys: &[&str]| {
        keys.iter()
            .find_map(|k| h.get(*k).and_then(Value::as_str))
            .unwrap_or("")
            .to_string()
    };
    items
        .iter()
        .filter_map(|h| {
            let timestamp = ["timestamp", "created_at", "time"].iter().find_map(|k| {
                h.get(*k)
                    .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64)))
            })?;
            Some(HistoryEntry {
                field: first_str(h, &["field", "action", "type"]),
                timestamp,
                user: first_str(h, &["user", "user_id", "created_by", "modified_by"]),
                api: h.get("api").and_then(Value::as_bool).unwrap_or(true),
            })
        })
        .collect()
}

/// When a person last touched the case, in ms, as far as casewarden can tell; the newest of:
/// `history` entries not casewarden's own; `modified_at` unless `modified_by` is
/// casewarden's own user; and, when casewarden made the last change and the case carries
/// no `history`, the newest entry of `activities` not its own. Else `created_at`.
/// None: `activities` are needed and were not read. `own`: casewarden's user id and email.
pub fn last_human_activity(
    raw: &impl Object,
    own: &[String],
    activities: Option<&[HistoryEntry]>,
) -> Option<i64> {
    let ms = |key: &str| {
        raw.get(key)
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
    };
    let newest_human = |entries: &[HistoryEntry]| {
        entries
            .iter()
            .filter(|h| !is_own_entry(h.api, &h.user, own))
            .map(|h| h.timestamp)
            .max()
    };
    let mut newest = ms("created_at").unwrap_or(0);
    let history = raw.get("history").and_then(Value::as_array);
    let has_history = history.is_some();
    // Read in place: this runs for every case an idle-case rule looks at.
    for h in history.into_iter().flatten() {
        let api = h.get("api").and_then(Value::as_bool).unwrap_or(false);
        let user = h.get("user").and_then(Value::as_str).unwrap_or("");
        if !is_own_entry(api, user, own)
            && let Some(t) = h.get("timestamp").and_then(Value::as_i64)
        {
            newest = newest.max(t);
        }
    }
    let modifier = raw.get("modified_by").and_then(Value::as_str).unwrap_or("");
    // Without knowing its own identity, casewarden cannot tell its changes from a person's.
    let by_us = !own.is_empty() && own.iter().any(|o| o.eq_ignore_ascii_case(modifier));
    if !by_us {
        newest = newest.max(ms("modified_at").unwrap_or(0));
    } else if !has_history {
        newest = newest.max(newest_human(activities?).unwrap_or(0));
    }
    Some(newest)
}

/// When the case entered its current status, in ms: the newest `status` entry of its
/// `history` (4.3) or, without one, of its `activities` (5.x), else `created_at` (the status
/// never changed). A case nobody changed since it was opened needs neither. None: the
/// activities are needed and were not read. `modified_at` is never taken: any change, a
/// tag casewarden added among them, moves it.
pub fn status_since(raw: &impl Object, activities: Option<&[HistoryEntry]>) -> Option<i64> {
    let ms = |key: &str| {
        raw.get(key)
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
    };
    let created = ms("created_at");
    let newest_status = |entries: &mut dyn Iterator<Item = (Option<&str>, Option<i64>)>| {
        entries
            .filter(|(f, _)| *f == Some("status"))
            .filter_map(|(_, t)| t)
            .max()
    };
    if let Some(history) = raw.get("history").and_then(Value::as_array) {
        let mut entries = history.iter().map(|h| {
            let field = h.get("field").and_then(Value::as_str);
            (field, h.get("timestamp").and_then(Value::as_i64))
        });
        return newest_status(&mut entries).or(created).or(Some(0));
    }
    if let Some(activities) = activities {
        let mut entries = activities
            .iter()
            .map(|a| (Some(a.field.as_str()), Some(a.timestamp)));
        return newest_status(&mut entries).or(created).or(Some(0));
    }
    match (created, ms("modified_at")) {
        (Some(c), Some(m)) if m <= c => Some(c),
        (Some(c), None) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn last_human_activity_without_history() {
        let own = vec!["me@example.com".to_string(), "abc".to_string()];
        let case = |by: &str| {
            json!({"created_at": 100, "modified_at": 500, "modified_by": by})
                .as_object()
                .unwrap()
                .clone()
        };
        // A person (or the system) made the last change: it counts.
        assert_eq!(last_human_activity(&case("someone"), &own, None), Some(500));
        assert_eq!(last_human_activity(&case(""), &own, None), Some(500));
        // casewarden made it: only the activities can tell.
        assert_eq!(last_human_activity(&case("ABC"), &own, None), None);
        let acts = vec![
            HistoryEntry {
                field: "severity".into(),
                timestamp: 300,
                user: "bob".into(),
                api: false,
            },
            HistoryEntry {
                field: "tags".into(),
                timestamp: 500,
                user: "abc".into(),
                api: true,
            },
        ];
        assert_eq!(
            last_human_activity(&case("abc"), &own, Some(&acts)),
            Some(300)
        );
        // Not knowing its own identity, casewarden takes every change as a person's.
        assert_eq!(last_human_activity(&case("abc"), &[], None), Some(500));
    }

    fn entry(field: &str, timestamp: i64, user: &str) -> HistoryEntry {
        HistoryEntry {
            field: field.into(),
            timestamp,
            user: user.into(),
            api: true,
        }
    }

    #[test]
    fn status_since_never_reads_modified_at() {
        let c = |v: Value| v.as_object().unwrap().clone();
        let legacy = c(serde_json::json!({"created_at": 100, "modified_at": 900,
            "history": [{"field": "status", "timestamp": 300}, {"field": "tags", "timestamp": 800}]}));
        assert_eq!(status_since(&legacy, None), Some(300));
        let never = c(serde_json::json!({"created_at": 100, "modified_at": 900, "history": []}));
        assert_eq!(status_since(&never, None), Some(100));
        let v5 = c(serde_json::json!({"created_at": 100, "modified_at": 900}));
        assert_eq!(
            status_since(&v5, None),
            None,
            "only the activities can tell"
        );
        let acts = [entry("tags", 900, "abc"), entry("status", 400, "someone")];
        assert_eq!(status_since(&v5, Some(&acts)), Some(400));
        assert_eq!(status_since(&v5, Some(&acts[..1])), Some(100));
        let untouched = c(serde_json::json!({"created_at": 100, "modified_at": 100}));
        assert_eq!(status_since(&untouched, None), Some(100));
    }
}
