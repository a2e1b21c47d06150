//! A rule's `RULE` map read into its [`Rule`]: the keys checked (name, schedule, query
//! hints, limits, allow-lists), every problem located at the key in the rule's text.

use std::path::Path;

use rhai::{AST, Dynamic, FnPtr, Map, Position};
use sha2::{Digest, Sha256};

use super::lint::did_you_mean;
use super::{Rule, RuleError};
use crate::cron::CronSchedule;
use crate::stellar::filter;
use crate::stellar::model::{PRIORITIES, RESOLUTIONS, STATUSES};

/// The keys of a rule's `RULE` map.
const KEYS: [&str; 13] = [
    "name",
    "description",
    "schedule",
    "query",
    "enabled",
    "dry_run",
    "max_change_fraction",
    "max_changes",
    "custom_fields",
    "exempt_tags",
    "tenants",
    "instances",
    "on_automation_revert",
];

/// Line and column of the first occurrence of `needle` in `text` (1-based), or 1:1.
pub fn locate(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or((1, 1))
}

type Checked<T> = Result<T, Vec<RuleError>>;

/// The rule `text` declares in its `RULE` map, read and checked (every problem located
/// at its key, all of them, not only the first), running `evaluate` from `module` whose
/// body starts at `body`; and the case fields of this server that the documented schema
/// does not list (`custom_fields`, empty when unreadable), for the lint.
pub(super) fn read_rule(
    meta: &Map,
    file: &Path,
    text: &str,
    module: AST,
    body: Position,
) -> (Checked<Rule>, Vec<String>) {
    let read = Reader { meta, file, text };
    // Each key read on its own, its problems collected and a default kept in its place.
    let mut errors = Vec::new();
    take(&mut errors, read.known_keys());
    let name = take(&mut errors, read.string("name"))
        .flatten()
        .filter(|n| !n.trim().is_empty());
    let schedule = take(&mut errors, read.string("schedule"))
        .flatten()
        .and_then(|s| {
            take(
                &mut errors,
                CronSchedule::parse(&s)
                    .map_err(|e| read.at("schedule", format!("RULE.schedule: {e}"))),
            )
        });
    let enabled = take(&mut errors, read.flag("enabled", true)).unwrap_or(true);
    let dry_run = take(&mut errors, read.flag("dry_run", false)).unwrap_or_default();
    let max_change_fraction = take(&mut errors, read.fraction()).flatten();
    let max_changes = take(&mut errors, read.count()).flatten();
    let mut query = take(&mut errors, read.query()).unwrap_or_default();
    let list = |key: &str, example: &str, errors: &mut Vec<RuleError>| {
        take(errors, read.strings(key, example)).unwrap_or_default()
    };
    let custom_fields = list("custom_fields", "[\"my_field\"]", &mut errors);
    let exempt_tags = list("exempt_tags", "[\"vip\", \"legal-hold\"]", &mut errors);
    let tenants = list("tenants", "[\"<cust_id>\", \"<cust_id>\"]", &mut errors);
    let instances = list("instances", "[\"eu\", \"us\"]", &mut errors);
    let description = take(&mut errors, read.string("description")).flatten();
    let reapply = take(&mut errors, read.on_automation_revert()).unwrap_or_default();
    take(&mut errors, read.scope_to_tenants(&tenants, &mut query));
    if name.is_none() && !errors.iter().any(|e| e.message.starts_with("RULE.name")) {
        errors.extend(read.at(
            "RULE",
            "RULE.name is missing: every rule needs a unique name".into(),
        ));
    }
    let (Some(name), true) = (name, errors.is_empty()) else {
        errors.sort_by_key(|e| (e.line, e.col));
        return (Err(errors), custom_fields);
    };
    let rule = Rule {
        name,
        description: description.unwrap_or_default(),
        schedule,
        query,
        enabled,
        dry_run,
        max_change_fraction,
        max_changes,
        exempt_tags,
        tenants,
        instances,
        reapply_over_automation: reapply,
        file: file.to_path_buf(),
        source_hash: hex::encode(Sha256::digest(text.as_bytes())),
        source: text.into(),
        module,
        evaluate: FnPtr::new("evaluate").expect("a valid function name"),
        body,
        clock_at_load: false,
    };
    (Ok(rule), custom_fields)
}

/// The value of a check, or None with its errors added to `errors`.
fn take<T>(errors: &mut Vec<RuleError>, checked: Checked<T>) -> Option<T> {
    checked.map_err(|mut e| errors.append(&mut e)).ok()
}

/// The `RULE` map of one file, with where to locate its problems.
struct Reader<'a> {
    meta: &'a Map,
    file: &'a Path,
    text: &'a str,
}

impl Reader<'_> {
    /// An error located at the first `needle` of the text.
    fn at(&self, needle: &str, message: String) -> Vec<RuleError> {
        let (line, col) = locate(self.text, needle);
        vec![RuleError {
            file: self.file.to_path_buf(),
            line,
            col,
            message,
            warning: false,
        }]
    }

    fn known_keys(&self) -> Checked<()> {
        match self.meta.keys().find(|key| !KEYS.contains(&key.as_str())) {
            Some(key) => Err(self.at(
                &format!("{key}:"),
                format!("unknown RULE key {key:?}: expected {}", KEYS.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn string(&self, key: &str) -> Checked<Option<String>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(Some(v.to_string())),
            Some(v) => Err(self.at(
                &format!("{key}:"),
                format!("RULE.{key} must be a string, not {}", v.type_name()),
            )),
        }
    }

    fn flag(&self, key: &str, default: bool) -> Checked<bool> {
        match self.meta.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .map_err(|t| self.at(key, format!("RULE.{key} must be true or false, not {t}"))),
        }
    }

    fn strings(&self, key: &str, example: &str) -> Checked<Vec<String>> {
        match self.meta.get(key) {
            None => Ok(Vec::new()),
            Some(v) => v
                .read_lock::<rhai::Array>()
                .and_then(|a| a.iter().map(|f| f.clone().into_string().ok()).collect())
                .ok_or_else(|| self.at(key, format!("RULE.{key} must be a list like {example}"))),
        }
    }

    /// `max_change_fraction`: a share of the cases, above 0 and at most 1.
    fn fraction(&self) -> Checked<Option<f64>> {
        let key = "max_change_fraction";
        self.meta.get(key).map(|v| {
            v.as_float()
                .ok()
                .filter(|f| *f > 0.0 && *f <= 1.0)
                .ok_or_else(|| {
                    self.at(
                        key,
                        format!("RULE.max_change_fraction must be a number above 0 and at most 1.0 (a share of the cases), not {v}"),
                    )
                })
        }).transpose()
    }

    /// `on_automation_revert`: "yield" (false, the default) or "reapply" (true).
    fn on_automation_revert(&self) -> Checked<bool> {
        let key = "on_automation_revert";
        match self.string(key)?.as_deref() {
            None | Some("yield") => Ok(false),
            Some("reapply") => Ok(true),
            Some(other) => Err(self.at(
                key,
                format!(
                    "RULE.on_automation_revert must be \"yield\" or \"reapply\", not {other:?}"
                ),
            )),
        }
    }

    /// `max_changes`: a whole number of changes.
    fn count(&self) -> Checked<Option<usize>> {
        let key = "max_changes";
        self.meta
            .get(key)
            .map(|v| {
                v.as_int()
                    .ok()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        self.at(
                            key,
                            format!(
                                "RULE.max_changes must be a whole number of changes, 0 or more, not {v}"
                            ),
                        )
                    })
            })
            .transpose()
    }

    fn query(&self) -> Checked<Vec<(String, String)>> {
        let Some(q) = self.meta.get("query") else {
            return Ok(Vec::new());
        };
        match q.read_lock::<Map>() {
            Some(map) => {
                parse_hints(&map).map_err(|m| self.at("query", format!("RULE.query: {m}")))
            }
            None => Err(self.at(
                "query",
                "RULE.query must be a map like #{ status: \"New\" }".into(),
            )),
        }
    }

    /// A tenant scope is a filter like any other: pushed down as `tenantid` when every
    /// rule shares it, and re-checked on each case.
    fn scope_to_tenants(
        &self,
        tenants: &[String],
        query: &mut Vec<(String, String)>,
    ) -> Checked<()> {
        if tenants.is_empty() {
            return Ok(());
        }
        if tenants
            .iter()
            .any(|t| t.trim().is_empty() || t.contains(','))
        {
            return Err(self.at(
                "tenants",
                "RULE.tenants: each entry is one customer id (cust_id), not empty and without commas".into(),
            ));
        }
        if query.iter().any(|(k, _)| {
            k.trim_start_matches("NOT~") == "tenantid" || k.trim_start_matches("NOT~") == "cust_id"
        }) {
            return Err(self.at(
                "tenants",
                "RULE.tenants and a tenantid/cust_id filter in RULE.query: give the customers once, in RULE.tenants".into(),
            ));
        }
        query.push(("tenantid".into(), tenants.join(",")));
        Ok(())
    }
}

fn parse_hints(map: &Map) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (key, value) in map {
        if !filter::is_known(key) {
            return Err(format!(
                "unknown filter {key:?}: expected one of {}, FROM~/TO~ on {}, optionally NOT~",
                filter::KEYS.join(", "),
                filter::RANGE_FIELDS.join(", ")
            ));
        }
        let text = hint_text(key, value)?;
        check_values(key, &text)?;
        out.push((key.to_string(), text));
    }
    Ok(out)
}

/// A query value as the API's filter takes it: a list joined by commas.
fn hint_text(key: &str, value: &Dynamic) -> Result<String, String> {
    if let Some(arr) = value.read_lock::<rhai::Array>() {
        Ok(arr
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(","))
    } else if value.is_string() || value.is_int() || value.is_float() {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{key}: expected a string, number or list, not {}",
            value.type_name()
        ))
    }
}

/// A query value a case can never hold makes the rule see nothing: an error, with the
/// closest allowed value.
fn check_values(key: &str, text: &str) -> Result<(), String> {
    let bare = key.strip_prefix("NOT~").unwrap_or(key);
    let allowed: &[&str] = match bare {
        "status" => &STATUSES,
        "priority" | "severity" => &PRIORITIES,
        "resolution" => &RESOLUTIONS,
        _ => return Ok(()),
    };
    for v in text.split(',').map(str::trim) {
        if !allowed.contains(&v) {
            let hint = did_you_mean(v, allowed.iter().copied())
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            return Err(format!(
                "{key}: {v:?} is not a {bare}{hint}: expected one of {}; the query would never match",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}
