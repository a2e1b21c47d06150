//! Rules: loading `*.rhai` files into compiled ASTs with their `RULE` metadata, the
//! sandboxed engine they run in, and evaluation of one rule on one case.

mod library;
pub mod limits;
mod view;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{AST, Dynamic, Engine, EvalAltResult, FnPtr, Position, Scope};
use sha2::{Digest, Sha256};

pub use library::{Asked, EvalEnv};
use view::CaseView;

use crate::stellar::{Case, filter};

/// A problem with one rule file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// A failed evaluation of one rule on one case.
#[derive(Debug, Clone)]
pub struct EvalError {
    pub rule: String,
    pub case_id: String,
    pub location: String,
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {} on case {} ({}): {}",
            self.rule, self.case_id, self.location, self.message
        )
    }
}

/// One compiled rule and its declared metadata.
pub struct Rule {
    pub name: String,
    pub description: String,
    pub schedule: Option<String>,
    /// Server-side filter hints, re-checked on each case before evaluation.
    pub query: Vec<(String, String)>,
    pub enabled: bool,
    pub file: PathBuf,
    /// SHA-256 of the file's text, recorded with every audit row the rule causes.
    pub source_hash: String,
    /// The rule's functions as a module, each carrying its file's constants (`global::X`),
    /// so `evaluate` runs without re-running the file's top level.
    module: AST,
    evaluate: FnPtr,
    /// Where `evaluate`'s body starts: the position given for a stop Rhai does not locate.
    body: Position,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish()
    }
}

/// All rules of a folder, in file-name order, sharing one engine.
#[derive(Clone)]
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
    engine: Arc<Engine>,
    /// SHA-256 over every rule file's name and text.
    pub fingerprint: String,
}

impl RuleSet {
    /// Loads every `*.rhai` in `dir`. All problems are returned, not only the first.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
        let at_dir = |message: String| {
            vec![RuleError {
                file: dir.to_path_buf(),
                line: 0,
                col: 0,
                message,
            }]
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            at_dir(format!(
                "cannot read the rules folder: {e} (daemon.rules_dir)"
            ))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rhai") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(at_dir(
                "no *.rhai rule files here; copy one from the project's rules/ folder".into(),
            ));
        }
        let sources = files
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(&f);
                (f, text)
            })
            .collect::<Vec<_>>();
        let mut errors = Vec::new();
        let mut loaded = Vec::new();
        for (file, text) in sources {
            match text {
                Ok(text) => loaded.push((file, text)),
                Err(e) => errors.push(RuleError {
                    file,
                    line: 0,
                    col: 0,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        let set = RuleSet::from_sources(loaded);
        match set {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(errors),
            Err(mut more) => {
                errors.append(&mut more);
                Err(errors)
            }
        }
    }

    /// Compiles rules from (file name, text) pairs, already in the order they run in.
    pub fn from_sources(sources: Vec<(PathBuf, String)>) -> Result<RuleSet, Vec<RuleError>> {
        let engine = library::engine();
        let mut errors = Vec::new();
        let mut rules: Vec<Arc<Rule>> = Vec::new();
        let mut hasher = Sha256::new();
        for (file, text) in &sources {
            hasher.update(
                file.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or(b""),
            );
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            match compile(&engine, file, text) {
                Ok(rule) => {
                    if let Some(first) = rules.iter().find(|r| r.name == rule.name) {
                        let (line, col) = locate(text, "name");
                        errors.push(RuleError {
                            file: file.clone(),
                            line,
                            col,
                            message: format!(
                                "duplicate rule name {:?}: {} already uses it; names must be unique",
                                rule.name,
                                first.file.display()
                            ),
                        });
                    } else {
                        rules.push(Arc::new(rule));
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RuleSet {
            rules,
            engine: Arc::new(engine),
            fingerprint: hex::encode(hasher.finalize()),
        })
    }

    /// Runs every rule of `rules` whose query hints the case matches, in order. Each rule
    /// gets its own view of the case (copy-on-write), so whatever a rule does to its
    /// argument, the next rule sees the case as the server sent it. Returns (index in
    /// `rules`, result).
    pub fn evaluate_case(
        &self,
        rules: &[Arc<Rule>],
        case: &Case,
        env: &EvalEnv,
    ) -> Vec<(usize, Result<Asked, EvalError>)> {
        let due: Vec<usize> = (0..rules.len())
            .filter(|&i| hints_match(case, &rules[i].query))
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let view = case_arg(case);
        due.into_iter()
            .map(|i| {
                let rule = &rules[i];
                // A bug of ours (not of the rule) must not lose the case: it is this
                // rule's error on this case, like any other.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.evaluate(rule, case, view.clone(), env)
                }));
                let result = run.unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(EvalError {
                        rule: rule.name.clone(),
                        case_id: case.id.clone(),
                        location: rule.file.display().to_string(),
                        message: format!("casewarden failed while evaluating the rule: {what}"),
                    })
                });
                (i, result)
            })
            .collect()
    }

    /// Runs `rule` on `case`, passed as `arg` made with [`case_arg`]; the rule may change
    /// its argument freely, it is the rule's own.
    pub fn evaluate(
        &self,
        rule: &Rule,
        case: &Case,
        arg: Dynamic,
        env: &EvalEnv,
    ) -> Result<Asked, EvalError> {
        library::begin(env, &rule.name, case.activities.clone());
        let result = rule
            .evaluate
            .call::<Dynamic>(&self.engine, &rule.module, (arg,));
        let asked = library::finish();
        match result {
            Ok(_) => Ok(asked),
            Err(err) => {
                let (message, pos) = innermost(*err);
                // Rhai moves a sandbox stop's position to the outermost call, which is ours.
                let pos = if pos.is_none() { rule.body } else { pos };
                Err(EvalError {
                    rule: rule.name.clone(),
                    case_id: case.id.clone(),
                    location: format!(
                        "{}:{}:{}",
                        rule.file.display(),
                        pos.line().unwrap_or(0),
                        pos.position().unwrap_or(0)
                    ),
                    message,
                })
            }
        }
    }
}

/// The case as a rule's argument: a map, as the server sent it (see [`CaseView`]).
pub fn case_arg(case: &Case) -> Dynamic {
    Dynamic::from(CaseView::new(case.shared_raw()))
}

/// The deepest error in a chain of function calls, without its position, and that position.
fn innermost(err: EvalAltResult) -> (String, Position) {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => innermost(*inner),
        EvalAltResult::ErrorTooManyOperations(pos) => (
            "stopped: too many operations (an endless loop?)".into(),
            pos,
        ),
        EvalAltResult::ErrorStackOverflow(pos) => (
            "stopped: calls nested too deep (endless recursion?)".into(),
            pos,
        ),
        EvalAltResult::ErrorTerminated(_, pos) => (
            "stopped: ran longer than the rule time limit (daemon.rule_timeout_ms)".into(),
            pos,
        ),
        EvalAltResult::ErrorDataTooLarge(what, pos) => (
            format!("stopped: {what} grew beyond the sandbox limit"),
            pos,
        ),
        mut other => {
            let pos = other.take_position();
            (other.to_string(), pos)
        }
    }
}

/// Line and column of the first occurrence of `needle` in `text` (1-based), or 1:1.
fn locate(text: &str, needle: &str) -> (usize, usize) {
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

fn compile(engine: &Engine, file: &Path, text: &str) -> Result<Rule, Vec<RuleError>> {
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
    if !ast
        .iter_functions()
        .any(|f| f.name == "evaluate" && f.params.len() == 1)
    {
        return Err(at(
            "fn ",
            "no `fn evaluate(c)` with one argument: every rule needs one".into(),
        ));
    }
    let body = body_start(text);
    // Run the top level once, only to read the RULE constant.
    let mut scope = Scope::new();
    library::begin(&EvalEnv::default(), "<loading>", None);
    let run = engine.run_ast_with_scope(&mut scope, &ast);
    library::finish();
    if let Err(e) = run {
        let (message, pos) = innermost(*e);
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
    let rule = Rule {
        name: meta.name,
        description: meta.description,
        schedule: meta.schedule,
        query: meta.query,
        enabled: meta.enabled,
        file: file.to_path_buf(),
        source_hash: hex::encode(Sha256::digest(text.as_bytes())),
        module: AST::new_from_module(module),
        evaluate: FnPtr::new("evaluate").expect("a valid function name"),
        body,
    };
    Ok(rule)
}

/// What a rule's `RULE` map declares, checked.
struct Meta {
    name: String,
    description: String,
    schedule: Option<String>,
    query: Vec<(String, String)>,
    enabled: bool,
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
        if !["name", "description", "schedule", "query", "enabled"].contains(&key.as_str()) {
            return Err(at(
                &format!("{key}:"),
                format!(
                    "unknown RULE key {key:?}: expected name, description, schedule, query, enabled"
                ),
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
    let enabled = match meta.get("enabled") {
        None => true,
        Some(v) => v.as_bool().map_err(|t| {
            at(
                "enabled",
                format!("RULE.enabled must be true or false, not {t}"),
            )
        })?,
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
    Ok(Meta {
        name,
        description: get_str("description")?.unwrap_or_default(),
        schedule,
        query,
        enabled,
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
        out.push((key.to_string(), text));
    }
    Ok(out)
}

/// Whether a case satisfies a rule's query hints (servers may ignore filters).
pub fn hints_match(case: &Case, hints: &[(String, String)]) -> bool {
    filter::recheck(case.raw(), hints)
}
