//! Compiling one rule file (the Rhai AST, its `fn evaluate(c)`, its `RULE` map) or one
//! shared module of `rules_dir/lib`, linted, every problem located at file:line:col.

use std::path::Path;

use rhai::{AST, Engine, Module, Position, Scope};

use super::collector::{self, EvalEnv};
use super::eval::innermost;
use super::lint::{Findings, Library, lint};
use super::meta::{locate, read_rule};
use super::{Rule, RuleError};

/// Compiles and lints one rule file: the rule and what the lint found besides errors,
/// or every error.
pub(super) fn compile(
    engine: &Engine,
    library: &Library,
    file: &Path,
    text: &str,
) -> Result<(Rule, Findings), Vec<RuleError>> {
    let ast = parse(engine, file, text)?;
    let Some(evaluate) = ast
        .iter_fn_def()
        .find(|f| f.name == "evaluate" && f.params.len() == 1)
    else {
        let (line, col) = locate(text, "fn ");
        return Err(vec![RuleError {
            file: file.to_path_buf(),
            line,
            col,
            message: "no `fn evaluate(c)` with one argument: every rule needs one".into(),
            warning: false,
        }]);
    };
    let param = evaluate.params[0].to_string();
    let body = evaluate.body.start_position();
    let (meta, module, clock_at_load) = load(engine, library, file, &ast)?;
    let (rule, custom_fields) = read_rule(&meta, file, text, AST::new_from_module(module), body);
    let rule = rule.map(|rule| Rule {
        clock_at_load,
        ..rule
    });
    let mut found = lint(file, &ast, library, &param, &custom_fields);
    match rule {
        Ok(rule) if found.errors.is_empty() => Ok((rule, found)),
        // Every problem of the file in one run: the RULE map's, the lint's errors and, so
        // they are not found only once those are fixed, its warnings.
        rule => {
            let mut all = rule.err().unwrap_or_default();
            all.append(&mut found.errors);
            all.extend(
                found
                    .warnings
                    .into_iter()
                    .map(|w| RuleError { warning: true, ..w }),
            );
            all.sort_by_key(|e| (e.line, e.col));
            Err(all)
        }
    }
}

/// Compiles and lints one shared module of `rules_dir/lib`: its functions and constants,
/// with its top level run once (in the sandbox, with no case); the calendars it names, and
/// whether its top level read the clock.
pub(super) fn compile_lib(
    engine: &Engine,
    library: &Library,
    file: &Path,
    text: &str,
) -> Result<(Module, AST, Vec<RuleError>, bool), Vec<RuleError>> {
    let ast = parse(engine, file, text)?;
    let found = lint(file, &ast, library, "", &[]);
    if !found.errors.is_empty() {
        return Err(found.errors);
    }
    collector::begin(&EvalEnv::default(), "<loading>", None);
    let module = Module::eval_ast_as_new(Scope::new(), &ast, engine);
    let asked = collector::finish();
    let module = module.map_err(|e| {
        let (message, pos) = innermost(*e);
        located(file, pos, format!("error while loading: {message}"))
    })?;
    if !asked.changes.is_empty() {
        return Err(located(
            file,
            Position::new(1, 1),
            "a shared module changes cases at its top level; only functions a rule calls may"
                .into(),
        ));
    }
    Ok((module, ast, found.calendars, asked.until < i64::MAX))
}

/// The file's AST, its errors named by the file.
fn parse(engine: &Engine, file: &Path, text: &str) -> Result<AST, Vec<RuleError>> {
    let mut ast = engine.compile(text).map_err(|e| {
        located(
            file,
            e.position(),
            format!("syntax error: {}", e.err_type()),
        )
    })?;
    ast.set_source(file.display().to_string());
    Ok(ast)
}

/// Runs a rule's top level once, only to read its `RULE` constant; and builds the module
/// its functions run from; and whether either read the clock (a constant made of it).
fn load(
    engine: &Engine,
    library: &Library,
    file: &Path,
    ast: &AST,
) -> Result<(rhai::Map, Module, bool), Vec<RuleError>> {
    let loading_error = |e: Box<rhai::EvalAltResult>| {
        let (mut message, pos) = innermost(*e);
        if message.starts_with("Module not found") {
            message.push_str(&library.module_hint());
        }
        located(file, pos, format!("error while loading: {message}"))
    };
    let mut scope = Scope::new();
    collector::begin(&EvalEnv::default(), "<loading>", None);
    let run = engine.run_ast_with_scope(&mut scope, ast);
    // Functions called later without re-running the top level still need its constants
    // (`global::MAX_HOURS`): a module built from the AST encapsulates them with each function.
    let module = run.and_then(|()| Module::eval_ast_as_new(Scope::new(), ast, engine));
    let clock_at_load = collector::finish().until < i64::MAX;
    let module = module.map_err(loading_error)?;
    let Some(meta) = scope.get_value::<rhai::Map>("RULE") else {
        return Err(located(
            file,
            Position::new(1, 1),
            "no `const RULE = #{ name: \"...\", ... };` map at the top level".into(),
        ));
    };
    Ok((meta, module, clock_at_load))
}

/// One error at `pos` of `file`; 0:0 when Rhai does not locate it.
fn located(file: &Path, pos: Position, message: String) -> Vec<RuleError> {
    vec![RuleError {
        file: file.to_path_buf(),
        line: pos.line().unwrap_or(0),
        col: pos.position().unwrap_or(0),
        message,
        warning: false,
    }]
}
