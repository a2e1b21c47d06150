//! The case fields casewarden changes, and how a change of each reads and is remembered.

use std::fmt;

use serde::Serialize;

/// A field of a case a rule can change (`comment` is a note posted on the case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    Priority,
    Status,
    Resolution,
    Assignee,
    /// One tag per decision: `+tag` adds, `-tag` deletes.
    Tags,
    Description,
    Comment,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Priority,
        Field::Status,
        Field::Resolution,
        Field::Assignee,
        Field::Tags,
        Field::Description,
        Field::Comment,
    ];

    /// The name in update bodies and audit rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Priority => "priority",
            Field::Status => "status",
            Field::Resolution => "resolution",
            Field::Assignee => "assignee",
            Field::Tags => "tags",
            Field::Description => "description",
            Field::Comment => "comment",
        }
    }

    /// The field an audit row names; None for rows about something else (a rule).
    pub fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision's place in a pass: the plan of its case (in listing order) and its place in
/// that plan. Stable for the pass, so intent rows, requests and outcomes refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecisionId {
    pub case: usize,
    pub decision: usize,
}

/// A change as people read it: `old -> new` for fields (`(none)` for empty), `+tag`/`-tag`
/// for tags, the text for comments. Plans, the audit table and case comments all use it.
pub fn describe_change(field: Field, old: Option<&str>, new: Option<&str>) -> String {
    let new = new.unwrap_or("");
    match (field, old) {
        (Field::Tags | Field::Comment, _) | (_, None) => new.to_string(),
        (_, Some(old)) => {
            let shown = |v: &str| {
                if v.is_empty() {
                    "(none)".to_string()
                } else {
                    v.to_string()
                }
            };
            format!("{} -> {}", shown(old), shown(new))
        }
    }
}

/// One value of a field as the override note reads it.
pub fn describe_value(field: Field, value: &str) -> String {
    match (field, value.split_at_checked(1)) {
        (Field::Tags, Some(("+", t))) => format!("tag {t} added"),
        (Field::Tags, Some(("-", t))) => format!("tag {t} removed"),
        _ if value.is_empty() => "(none)".into(),
        _ => format!("{value:?}"),
    }
}

/// The key a field change is remembered and settled under: the field, or `tags:NAME`.
pub fn memory_key(field: Field, new: &str) -> String {
    match (field, new.get(1..)) {
        (Field::Tags, Some(tag)) => format!("tags:{tag}"),
        _ => field.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_other_rows_are_not_fields() {
        for f in Field::ALL {
            assert_eq!(Field::parse(f.as_str()), Some(f));
            assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
        }
        assert_eq!(Field::parse("rule"), None);
    }

    #[test]
    fn changes_read_as_people_expect() {
        let d = describe_change;
        assert_eq!(d(Field::Priority, Some("Low"), Some("High")), "Low -> High");
        assert_eq!(d(Field::Assignee, Some(""), Some("bob")), "(none) -> bob");
        assert_eq!(d(Field::Assignee, Some("bob"), Some("")), "bob -> (none)");
        assert_eq!(d(Field::Tags, None, Some("+x")), "+x");
        assert_eq!(d(Field::Comment, Some("ignored"), Some("note")), "note");
        assert_eq!(memory_key(Field::Tags, "+x"), "tags:x");
        assert_eq!(memory_key(Field::Status, "Resolved"), "status");
    }
}
