//! The case helpers rules call (`has_tag`, `entity`, `last_human_activity`, ...). They read
//! the case in place (`&mut`, so Rhai passes a reference, not a copy), whether it is still
//! the server's JSON or a map the rule has made of it.

use rhai::{Array, Dynamic, INT, ImmutableString, Map};
use serde_json::Value;

use crate::rules::collector::{now, since, with};
use crate::rules::view::Fields;
use crate::stellar::object::Object;
use crate::stellar::{Entity, entity_of, involved, parse_entity};

pub(super) fn has_tag(c: Fields, t: &str) -> bool {
    match c {
        Fields::Json(json) => json
            .get("tags")
            .and_then(Value::as_array)
            .is_some_and(|tags| tags.iter().any(|x| x.as_str() == Some(t))),
        Fields::Map(map) => map
            .get("tags")
            .and_then(|v| v.read_lock::<Array>())
            .is_some_and(|tags| {
                tags.iter().any(|x| {
                    x.read_lock::<ImmutableString>()
                        .is_some_and(|s| s.as_str() == t)
                })
            }),
    }
}

/// A text field of the case's `metadata`.
fn metadata_text(c: &Fields, key: &str) -> Option<String> {
    match c {
        Fields::Json(json) => Some(json.get("metadata")?.get(key)?.as_str()?.to_string()),
        Fields::Map(map) => {
            let meta = map.get("metadata")?.read_lock::<Map>()?;
            let text = meta.get(key)?.read_lock::<ImmutableString>()?;
            Some(text.to_string())
        }
    }
}

fn entity_map(e: Entity) -> Dynamic {
    let mut m = Map::new();
    m.insert("kind".into(), e.kind.into());
    m.insert("name".into(), e.name.into());
    m.insert("ip".into(), e.ip.map_or(Dynamic::UNIT, Dynamic::from));
    Dynamic::from_map(m)
}

pub(super) fn entity(c: Fields) -> Dynamic {
    let parsed = match &c {
        Fields::Json(json) => entity_of(*json),
        Fields::Map(_) => metadata_text(&c, "entity_id").and_then(|id| parse_entity(&id)),
    };
    parsed.map_or(Dynamic::UNIT, entity_map)
}

pub(super) fn entities(c: Fields) -> Array {
    let main = metadata_text(&c, "entity_id").and_then(|id| parse_entity(&id));
    let summary = metadata_text(&c, "description_auto").unwrap_or_default();
    main.into_iter()
        .chain(involved(&summary))
        .map(entity_map)
        .collect()
}

/// Minutes since the case took its current status (see [`crate::stellar::status_since`]).
/// When only the case's activities can tell and they were not read, 0: a rule about aged
/// cases never fires on a guess; the pass reads them and evaluates the case again.
pub(super) fn minutes_in_status(c: Fields) -> INT {
    match c {
        Fields::Json(j) => minutes_in_status_of(j),
        Fields::Map(m) => {
            let mut raw = serde_json::Map::new();
            for key in ["created_at", "modified_at", "history"] {
                if let Some(v) = m.get(key)
                    && let Ok(v) = rhai::serde::from_dynamic::<Value>(v)
                {
                    raw.insert(key.to_string(), v);
                }
            }
            minutes_in_status_of(&raw)
        }
    }
}

fn minutes_in_status_of(raw: &impl Object) -> INT {
    let at = with(
        |ctx| {
            let at =
                crate::stellar::status_since(raw, ctx.activities.as_deref().map(Vec::as_slice));
            if at.is_none() {
                ctx.wants_activities = true;
            }
            at.unwrap_or(ctx.now_ms)
        },
        now(),
    );
    since(at, 60_000)
}

/// When a person last touched the case (see [`crate::stellar::last_human_activity`]).
/// When the answer needs the case's activities and they were not read, the recent side:
/// now, so a rule about idle cases never fires on a case a person may have touched.
pub(super) fn last_human_activity(c: Fields) -> INT {
    match c {
        Fields::Json(json) => human_activity_of(json),
        Fields::Map(map) => {
            // The rule made its own copy of the case; read the fields that decide.
            let mut raw = serde_json::Map::new();
            for key in ["created_at", "modified_at", "modified_by", "history"] {
                if let Some(v) = map.get(key)
                    && let Ok(v) = rhai::serde::from_dynamic::<Value>(v)
                {
                    raw.insert(key.to_string(), v);
                }
            }
            human_activity_of(&raw)
        }
    }
}

fn human_activity_of(raw: &impl Object) -> INT {
    with(
        |ctx| {
            let at = crate::stellar::last_human_activity(
                raw,
                &ctx.env.own_users,
                ctx.activities.as_deref().map(Vec::as_slice),
            );
            if at.is_none() {
                ctx.wants_activities = true;
            }
            at.unwrap_or(ctx.now_ms)
        },
        crate::now_ms(),
    )
}
