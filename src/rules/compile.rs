//! Compiling one rule file: the Rhai AST, its `fn evaluate(c)`, and the `RULE` map's
//! metadata, every problem located at file:line:col.

use std::path::Path;

use rhai::{AST, Engine, FnPtr, Position, Scope};
use sha2::{Digest, Sha256};

use super::engine::{self, EvalEnv};
use super::eval::innermost;
use super::lint::{Library, did_you_mean, lint};
use super::{Rule, RuleError};
use crate::stellar::model::{PRIORITIES, RESOLUTIONS, STATUSES};

/// The keys of a rule's `RULE` map.
const KEYS: [&str; 12] = [
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
];
use crate::stellar::filter;

/// Line and column of the first occurrence of `needle` in `text` (1-based), or 1:1.
pub(super) fn locate(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or((1, 1))
}

/// Where the body of `fn evaluate` opens: the first `{` after its name, outside comments.
fn body_start(text: &str) -> Position {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let Some(brace) = code
        .match_indices("fn evaluate")
        .find_map(|(i, _)| code[i..].find('{').map(|b| i + b))
    else {
        return Position::NONE;
    };
    let before = &code[..brace];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
    let clamp = |n: usize| n.min(usize::from(u16::MAX)) as u16;
    Position::new(clamp(line), clamp(col))
}

/// Compiles and lints one rule file; the rule and the lint's warnings, or every error.
pub(super) fn compile(
    engine: &Engine,
    library: &Library,
    file: &Path,
    text: &str,
) -> Result<(Rule, Vec<RuleError>), Vec<RuleError>> {
    let err = |line: usize, col: usize, message: String| {
        vec![RuleError {
            file: file.to_path_buf(),
            line,
            col,
            message,
        }]
    };
    let at = |needle: &str, message: String| {
        let (line, col) = locate(text, needle);
        err(line, col, message)
    };
    let mut ast = engine.compile(text).map_err(|e| {
        err(
            e.position().line().unwrap_or(0),
            e.position().position().unwrap_or(0),
            format!("syntax error: {}", e.err_type()),
        )
    })?;
    ast.set_source(file.display().to_string());
    let Some(param) = ast
        .iter_functions()
        .find(|f| f.name == "evaluate" && f.params.len() == 1)
        .map(|f| f.params[0].to_string())
    else {
        return Err(at(
            "fn ",
            "no `fn evaluate(c)` with one argument: every rule needs one".into(),
        ));
    };
    let body = body_start(text);
    // Run the top level once, only to read the RULE constant.
    let mut scope = Scope::new();
    engine::begin(&EvalEnv::default(), "<loading>", None);
    let run = engine.run_ast_with_scope(&mut scope, &ast);
    engine::finish();
    if let Err(e) = run {
        let (mut message, pos) = innermost(*e);
        if message.starts_with("Module not found") {
            message.push_str(&library.module_hint());
        }
        return Err(err(
            pos.line().unwrap_or(0),
            pos.position().unwrap_or(0),
            format!("error while loading: {message}"),
        ));
    }
    // Functions called later without re-running the top level still need its constants
    // (`global::MAX_HOURS`): a module built from the AST encapsulates them with each function.
    let module = rhai::Module::eval_ast_as_new(Scope::new(), &ast, engine).map_err(|e| {
        let (message, pos) = innermost(*e);
        err(
            pos.line().unwrap_or(0),
            pos.position().unwrap_or(0),
            format!("error while loading: {message}"),
        )
    })?;
    let Some(meta) = scope.get_value::<rhai::Map>("RULE") else {
        return Err(err(
            1,
            1,
            "no `const RULE = #{ name: \"...\", ... };` map at the top level".into(),
        ));
    };
    let meta = read_meta(&meta, file, text)?;
    let found = lint(file, text, &ast, library, &param, &meta.custom_fields);
    if !found.errors.is_empty() {
        return Err(found.errors);
    }
    let rule = Rule {
        name: meta.name,
        description: meta.description,
        schedule: meta.schedule,
        query: meta.query,
        enabled: meta.enabled,
        dry_run: meta.dry_run,
        max_change_fraction: meta.max_change_fraction,
        max_changes: meta.max_changes,
        exempt_tags: meta.exempt_tags,
        instances: meta.instances,
        file: file.to_path_buf(),
        source_hash: hex::encode(Sha256::digest(text.as_bytes())),
        module: AST::new_from_module(module),
        evaluate: FnPtr::new("evaluate").expect("a valid function name"),
        body,
    };
    Ok((rule, found.warnings))
}

/// Compiles and lints one shared module of `rules_dir/lib`: its functions and constants,
/// with its top level run once (in the sandbox, with no case).
pub(super) fn compile_lib(
    engine: &Engine,
    library: &Library,
    file: &Path,
    text: &str,
) -> Result<(rhai::Module, AST), Vec<RuleError>> {
    let located = |pos: Position, message: String| {
        vec![RuleError {
            file: file.to_path_buf(),
            line: pos.line().unwrap_or(0),
            col: pos.position().unwrap_or(0),
            message,
        }]
    };
    let mut ast = engine
        .compile(text)
        .map_err(|e| located(e.position(), format!("syntax error: {}", e.err_type())))?;
    ast.set_source(file.display().to_string());
    let found = lint(file, text, &ast, library, "", &[]);
    if !found.errors.is_empty() {
        return Err(found.errors);
    }
    engine::begin(&EvalEnv::default(), "<loading>", None);
    let module = rhai::Module::eval_ast_as_new(Scope::new(), &ast, engine);
    let asked = engine::finish();
    let module = module.map_err(|e| {
        let (message, pos) = innermost(*e);
        located(pos, format!("error while loading: {message}"))
    })?;
    if !asked.changes.is_empty() {
        return Err(located(
            Position::new(1, 1),
            "a shared module changes cases at its top level; only functions a rule calls may"
                .into(),
        ));
    }
    Ok((module, ast))
}

/// What a rule's `RULE` map declares, checked.
struct Meta {
    name: String,
    description: String,
    schedule: Option<String>,
    query: Vec<(String, String)>,
    enabled: bool,
    dry_run: bool,
    max_change_fraction: Option<f64>,
    max_changes: Option<usize>,
    /// Case fields of this server that the documented schema does not list.
    custom_fields: Vec<String>,
    exempt_tags: Vec<String>,
    instances: Vec<String>,
}

/// Reads and checks the `RULE` map; errors are located at the key in `text`.
fn read_meta(meta: &rhai::Map, file: &Path, text: &str) -> Result<Meta, Vec<RuleError>> {
    let at = |needle: &str, message: String| {
        let (line, col) = locate(text, needle);
        vec![RuleError {
            file: file.to_path_buf(),
            line,
            col,
            message,
        }]
    };
    let get_str = |key: &str| -> Result<Option<String>, Vec<RuleError>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(Some(v.to_string())),
            Some(v) => Err(at(
                &format!("{key}:"),
                format!("RULE.{key} must be a string, not {}", v.type_name()),
            )),
        }
    };
    for key in meta.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(at(
                &format!("{key}:"),
                format!("unknown RULE key {key:?}: expected {}", KEYS.join(", ")),
            ));
        }
    }
    let name = get_str("name")?
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| {
            at(
                "RULE",
                "RULE.name is missing: every rule needs a unique name".into(),
            )
        })?;
    let schedule = get_str("schedule")?;
    if let Some(s) = &schedule {
        crate::cron::validate(s).map_err(|e| at("schedule", format!("RULE.schedule: {e}")))?;
    }
    let flag = |key: &str, default: bool| match meta.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .map_err(|t| at(key, format!("RULE.{key} must be true or false, not {t}"))),
    };
    let enabled = flag("enabled", true)?;
    let dry_run = flag("dry_run", false)?;
    let max_change_fraction = match meta.get("max_change_fraction") {
        None => None,
        Some(v) => Some(
            v.as_float()
                .ok()
                .filter(|f| *f > 0.0 && *f <= 1.0)
                .ok_or_else(|| {
                    at(
                        "max_change_fraction",
                        format!("RULE.max_change_fraction must be a number above 0 and at most 1.0 (a share of the cases), not {v}"),
                    )
                })?,
        ),
    };
    let max_changes = match meta.get("max_changes") {
        None => None,
        Some(v) => Some(
            v.as_int()
                .ok()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    at(
                        "max_changes",
                        format!(
                            "RULE.max_changes must be a whole number of changes, 0 or more, not {v}"
                        ),
                    )
                })?,
        ),
    };
    let query = match meta.get("query") {
        None => Vec::new(),
        Some(q) => match q.read_lock::<rhai::Map>() {
            Some(map) => parse_hints(&map).map_err(|m| at("query", format!("RULE.query: {m}")))?,
            None => {
                return Err(at(
                    "query",
                    "RULE.query must be a map like #{ status: \"New\" }".into(),
                ));
            }
        },
    };
    let strings = |key: &str, example: &str| match meta.get(key) {
        None => Ok(Vec::new()),
        Some(v) => v
            .read_lock::<rhai::Array>()
            .and_then(|a| a.iter().map(|f| f.clone().into_string().ok()).collect())
            .ok_or_else(|| at(key, format!("RULE.{key} must be a list like {example}"))),
    };
    let custom_fields = strings("custom_fields", "[\"my_field\"]")?;
    let exempt_tags = strings("exempt_tags", "[\"vip\", \"legal-hold\"]")?;
    let tenants = strings("tenants", "[\"<cust_id>\", \"<cust_id>\"]")?;
    let instances = strings("instances", "[\"eu\", \"us\"]")?;
    let mut query = query;
    if !tenants.is_empty() {
        if tenants
            .iter()
            .any(|t| t.trim().is_empty() || t.contains(','))
        {
            return Err(at(
                "tenants",
                "RULE.tenants: each entry is one customer id (cust_id), not empty and without commas".into(),
            ));
        }
        if query.iter().any(|(k, _)| {
            k.trim_start_matches("NOT~") == "tenantid" || k.trim_start_matches("NOT~") == "cust_id"
        }) {
            return Err(at(
                "tenants",
                "RULE.tenants and a tenantid/cust_id filter in RULE.query: give the customers once, in RULE.tenants".into(),
            ));
        }
        // A tenant scope is a filter like any other: pushed down as `tenantid` when every
        // rule shares it, and re-checked on each case.
        query.push(("tenantid".into(), tenants.join(",")));
    }
    Ok(Meta {
        name,
        description: get_str("description")?.unwrap_or_default(),
        schedule,
        query,
        enabled,
        dry_run,
        max_change_fraction,
        max_changes,
        custom_fields,
        exempt_tags,
        instances,
    })
}

fn parse_hints(map: &rhai::Map) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (key, value) in map {
        if !filter::is_known(key) {
            return Err(format!(
                "unknown filter {key:?}: expected one of {}, FROM~/TO~ on {}, optionally NOT~",
                filter::KEYS.join(", "),
                filter::RANGE_FIELDS.join(", ")
            ));
        }
        let text = if let Some(arr) = value.read_lock::<rhai::Array>() {
            arr.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        } else if value.is_string() || value.is_int() || value.is_float() {
            value.to_string()
        } else {
            return Err(format!(
                "{key}: expected a string, number or list, not {}",
                value.type_name()
            ));
        };
        check_values(key, &text)?;
        out.push((key.to_string(), text));
    }
    Ok(out)
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
