//! Static checks of a rule file, so the common mistakes stop `check` instead of failing on
//! every case at run time: calls of functions that do not exist or with the wrong number
//! of arguments, and literal statuses, priorities and resolutions the server refuses
//! (errors), fields of the case no Cases API object has and an `evaluate`
//! that returns a value (warnings); and the calendars it names, for the config to confirm.
//! Rhai resolves functions only when it calls them, so this walks the compiled AST against
//! the functions the engine has registered.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use rhai::{AST, ASTFlags, ASTNode, Engine, Expr, FnCallExpr, Position, Stmt};

use super::RuleError;
use crate::stellar::model::{CASE_FIELDS, PRIORITIES, RESOLUTIONS, STATUSES};

/// Functions Rhai handles itself, not listed among the registered ones.
const BUILT_IN: [&str; 9] = [
    "Fn",
    "call",
    "curry",
    "type_of",
    "print",
    "debug",
    "is_def_var",
    "is_def_fn",
    "is_shared",
];

type Arities = HashMap<String, BTreeSet<usize>>;

/// The functions rules may call: name -> the numbers of arguments it takes; and the
/// shared modules of `rules_dir/lib` by the name rules import them under.
pub(super) struct Library {
    arity: Arities,
    modules: HashMap<String, Arities>,
}

impl Library {
    pub(super) fn of(engine: &Engine) -> Library {
        let mut arity: Arities = HashMap::new();
        for sig in engine.gen_fn_signatures(true) {
            if let Some((name, n)) = parse_signature(&sig) {
                arity.entry(name).or_default().insert(n);
            }
        }
        Library {
            arity,
            modules: HashMap::new(),
        }
    }

    /// Where shared modules come from and which there are, for a failed import.
    pub(super) fn module_hint(&self) -> String {
        let mut names: Vec<&str> = self.modules.keys().map(String::as_str).collect();
        names.sort_unstable();
        format!(
            " (shared modules are the files of rules_dir/lib/, imported by file name without .rhai; there: {})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )
    }

    /// Adds a shared module's public functions.
    pub(super) fn add_module(&mut self, name: &str, ast: &AST) {
        let mut fns: Arities = HashMap::new();
        for f in ast.iter_functions() {
            if f.access != rhai::FnAccess::Private {
                fns.entry(f.name.to_string())
                    .or_default()
                    .insert(f.params.len());
            }
        }
        self.modules.insert(name.to_string(), fns);
    }
}

/// `name(a: T, b: U) -> R` as (name, 2).
fn parse_signature(sig: &str) -> Option<(String, usize)> {
    let open = sig.find('(')?;
    let name = &sig[..open];
    let mut depth = 0usize;
    let mut commas = 0;
    let mut empty = true;
    for ch in sig[open + 1..].chars() {
        match ch {
            '(' | '<' | '[' => depth += 1,
            ')' if depth == 0 => break,
            ')' | '>' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => commas += 1,
            c if !c.is_whitespace() => empty = false,
            _ => {}
        }
    }
    Some((name.to_string(), if empty { 0 } else { commas + 1 }))
}

/// What the checks found: errors stop the rule set, warnings are printed, and the
/// calendars named as literals in `business_hours_since(ms, "NAME")` and
/// `business_minutes_since` (the name in `message`) are checked against the config.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub errors: Vec<RuleError>,
    pub warnings: Vec<RuleError>,
    pub calendars: Vec<RuleError>,
    /// The users named as literals in `assign("...")` (the name in `message`), for `check`
    /// to look up on the server.
    pub people: Vec<RuleError>,
}

/// What a file binds, imports and defines, gathered before the checks.
#[derive(Default)]
struct Names {
    /// Variables, constants, loop variables, caught errors, parameters of its functions
    /// and closures: calling one of them is calling a function pointer.
    locals: HashSet<String>,
    /// `import "common" as c;`: alias -> module name.
    aliases: HashMap<String, String>,
    /// The file's own functions: name -> the numbers of parameters.
    script: Arities,
}

impl Names {
    fn of(ast: &AST) -> Names {
        let mut names = Names::default();
        for f in ast.iter_functions() {
            names
                .script
                .entry(f.name.to_string())
                .or_default()
                .insert(f.params.len());
            names.locals.extend(f.params.iter().map(|p| p.to_string()));
        }
        ast.walk(&mut |path: &[ASTNode]| {
            match path.last() {
                Some(ASTNode::Stmt(Stmt::Var(x, ..))) => {
                    names.locals.insert(x.0.name.to_string());
                }
                Some(ASTNode::Stmt(Stmt::For(x, ..))) => {
                    let bound = std::iter::once(&x.0).chain(&x.1);
                    names.locals.extend(bound.map(|v| v.name.to_string()));
                }
                Some(ASTNode::Stmt(Stmt::TryCatch(x, ..))) => {
                    if let Expr::Variable(v, ..) = &x.expr {
                        names.locals.insert(v.1.to_string());
                    }
                }
                Some(ASTNode::Stmt(Stmt::Import(x, ..))) => {
                    if let Expr::StringConstant(module, ..) = &x.0 {
                        names
                            .aliases
                            .insert(x.1.name.to_string(), module.to_string());
                    }
                }
                _ => {}
            }
            true
        });
        names
    }
}

/// Lints the file `ast` was compiled from; `param` is `evaluate`'s argument (the case)
/// and `custom_fields` the rule's own allow-list of case fields.
pub(super) fn lint(
    file: &Path,
    ast: &AST,
    library: &Library,
    param: &str,
    custom_fields: &[String],
) -> Findings {
    let mut checker = Checker {
        file,
        library,
        names: Names::of(ast),
        param,
        custom_fields,
        found: Findings::default(),
    };
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(
                ASTNode::Stmt(Stmt::FnCall(call, pos)) | ASTNode::Expr(Expr::FnCall(call, pos)),
            ) => checker.call(call, *pos, false),
            Some(ASTNode::Expr(Expr::MethodCall(call, pos))) => checker.call(call, *pos, true),
            Some(ASTNode::Expr(Expr::Dot(dot, ..))) => checker.field(&dot.lhs, &dot.rhs),
            _ => {}
        }
        true
    });
    // In the order of the text, as the walk visits the functions in the order of a map.
    let found = &mut checker.found;
    for list in [&mut found.errors, &mut found.warnings, &mut found.calendars] {
        list.sort_by_key(|e| (e.line, e.col));
    }
    if let Some(pos) = returned_value(ast) {
        let message = "`evaluate` returns a value here; it is ignored: a rule changes cases only through set_priority, add_tag, comment and the other change functions";
        let warning = checker.at(pos, message.into());
        checker.found.warnings.push(warning);
    }
    checker.found
}

struct Checker<'a> {
    file: &'a Path,
    library: &'a Library,
    names: Names,
    param: &'a str,
    custom_fields: &'a [String],
    found: Findings,
}

impl Checker<'_> {
    fn at(&self, pos: Position, message: String) -> RuleError {
        RuleError {
            file: self.file.to_path_buf(),
            line: pos.line().unwrap_or(0),
            col: pos.position().unwrap_or(0),
            message,
            warning: false,
        }
    }

    /// A call of `call.name` located at `pos`; a method call passes its object as the
    /// first argument.
    fn call(&mut self, call: &FnCallExpr, pos: Position, method: bool) {
        let name = call.name.as_str();
        let n = call.args.len() + usize::from(method);
        if call.is_qualified() {
            self.module_call(call.namespace.root(), name, n, pos);
            return;
        }
        if call.is_operator_call()
            || BUILT_IN.contains(&name)
            || (!method && self.names.locals.contains(name))
        {
            return;
        }
        let calendar_arg = match (name, &call.args[..]) {
            ("business_hours_since" | "business_minutes_since", [_, arg]) => Some(arg),
            ("in_business_hours", [arg]) => Some(arg),
            _ => None,
        };
        if !method && let Some(Expr::StringConstant(calendar, at)) = calendar_arg {
            let named = self.at(*at, calendar.to_string());
            self.found.calendars.push(named);
        }
        if !method
            && name == "assign"
            && let Some(Expr::StringConstant(who, at)) = call.args.first()
        {
            let named = self.at(*at, who.to_string());
            self.found.people.push(named);
        }
        let script = self.names.script.get(name);
        let takes: BTreeSet<usize> = [self.library.arity.get(name), script]
            .into_iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        if let Some(problem) = self.call_problem(name, n, method, &takes) {
            let error = self.at(pos, problem);
            self.found.errors.push(error);
        } else if !method {
            self.vocabulary(name, &call.args);
        }
    }

    /// A literal status, priority or resolution the server would refuse: it fails on every
    /// case, so it is an error now, with the nearest valid value and all of them.
    fn vocabulary(&mut self, name: &str, args: &[Expr]) {
        let (what, allowed): (&str, &[&str]) = match name {
            "set_status" => ("status", &STATUSES),
            "set_priority" => ("priority (severity on 5.x)", &PRIORITIES),
            "resolve" => ("resolution", &RESOLUTIONS),
            _ => return,
        };
        let Some(Expr::StringConstant(value, at)) = args.first() else {
            return;
        };
        if allowed.contains(&value.as_str()) {
            return;
        }
        let near = allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(value))
            .copied()
            .or_else(|| did_you_mean(value, allowed.iter().copied()))
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        let error = self.at(
            *at,
            format!(
                "{name}({value:?}): {value:?} is not a {what} the server takes{near}; it would fail on every case. Valid: {}",
                allowed.join(", ")
            ),
        );
        self.found.errors.push(error);
    }

    /// `alias::name(..)` with `n` arguments, where `alias` imports a shared module.
    fn module_call(&mut self, alias: &str, name: &str, n: usize, pos: Position) {
        let Some(module) = self.names.aliases.get(alias) else {
            return;
        };
        let Some(functions) = self.library.modules.get(module) else {
            return;
        };
        let problem = match functions.get(name) {
            Some(takes) if takes.contains(&n) => return,
            Some(takes) => format!(
                "`{alias}::{name}` takes {} argument(s), not {n}",
                list(takes)
            ),
            None => {
                let hint = did_you_mean(name, functions.keys().map(String::as_str))
                    .map(|s| format!(" (did you mean `{alias}::{s}`?)"))
                    .unwrap_or_default();
                format!(
                    "unknown function `{alias}::{name}`{hint}: lib/{module}.rhai has no public function of that name"
                )
            }
        };
        let error = self.at(pos, problem);
        self.found.errors.push(error);
    }

    /// Why a call of `name` with `n` arguments cannot work, if it cannot.
    fn call_problem(
        &self,
        name: &str,
        n: usize,
        method: bool,
        takes: &BTreeSet<usize>,
    ) -> Option<String> {
        if takes.contains(&n) {
            return None;
        }
        if takes.is_empty() {
            let known = self.library.arity.keys().chain(self.names.script.keys());
            let hint = did_you_mean(name, known.map(String::as_str))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Some(format!(
                "unknown function `{name}`{hint}: it is neither in the rule library (docs/rules.md) nor defined in this file"
            ));
        }
        let counts: Vec<String> = takes
            .iter()
            .map(|k| k.saturating_sub(usize::from(method)).to_string())
            .collect();
        Some(format!(
            "`{name}` takes {} argument(s), not {}",
            counts.join(" or "),
            n - usize::from(method)
        ))
    }

    /// `lhs.rhs`: when `lhs` is `evaluate`'s argument, a field no case has reads as ().
    fn field(&mut self, lhs: &Expr, rhs: &Expr) {
        let Expr::Variable(var, ..) = lhs else {
            return;
        };
        if var.1.as_str() != self.param || !var.2.is_empty() {
            return;
        }
        // `c.metadata.entity_id`, `c.tags[0]`: the case's own field is the first one.
        let first = match rhs {
            Expr::Dot(x, ..) | Expr::Index(x, ..) => &x.lhs,
            other => other,
        };
        let Expr::Property(property, pos) = first else {
            return;
        };
        let field = property.2.as_str();
        if field == "modified_at" {
            let warning = self.at(
                *pos,
                format!(
                    "`{}.modified_at` moves with every change, casewarden's own among them (a tag it adds makes an old case look new): for how long a case has been in its status use minutes_in_status({0}), for when a person last touched it last_human_activity({0})",
                    self.param
                ),
            );
            self.found.warnings.push(warning);
            return;
        }
        if CASE_FIELDS.contains(&field) || self.custom_fields.iter().any(|f| f == field) {
            return;
        }
        let hint = did_you_mean(field, CASE_FIELDS.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        let warning = self.at(
            *pos,
            format!(
                "`{}.{field}` is not a field of a Stellar Cyber case{hint}; it reads as () on every case. A custom field of your server: list it in RULE.custom_fields",
                self.param
            ),
        );
        self.found.warnings.push(warning);
    }
}

fn list(counts: &BTreeSet<usize>) -> String {
    counts
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Where `evaluate` returns a value: the first `return x`, else its last statement when
/// that is an expression other than a call. Rhai returns the last statement's value
/// whether or not a `;` ends it.
fn returned_value(ast: &AST) -> Option<Position> {
    let mut evaluate = ast.clone_functions_only();
    evaluate.retain_functions(|_, _, name, params| name == "evaluate" && params == 1);
    let mut returned = None;
    let mut last = None;
    evaluate.walk(&mut |path: &[ASTNode]| match path {
        [.., ASTNode::Stmt(Stmt::Return(Some(value), flags, _))]
            if !flags.contains(ASTFlags::BREAK) =>
        {
            returned = Some(start(ASTNode::Expr(value)));
            false
        }
        // The walk holds only `evaluate`: a path of one is a statement of its body.
        [ASTNode::Stmt(statement)] => {
            last = trailing_value(statement);
            true
        }
        _ => true,
    });
    returned.or(last)
}

/// Where a last statement starts, if it yields a value.
fn trailing_value(statement: &Stmt) -> Option<Position> {
    let value = match statement {
        Stmt::Expr(e) => !ends_with_call(e),
        Stmt::FnCall(call, pos) => is_operator(call, *pos),
        _ => false,
    };
    value.then(|| start(ASTNode::Stmt(statement)))
}

/// Whether the expression ends with a call (`f(..)`, `c.tags.push(..)`): its value is the
/// function's, which for the change functions is nothing.
fn ends_with_call(e: &Expr) -> bool {
    match e {
        Expr::FnCall(call, pos) => !is_operator(call, *pos),
        Expr::MethodCall(..) => true,
        Expr::Dot(x, ..) => ends_with_call(&x.rhs),
        _ => false,
    }
}

/// `a == b`, `!a`, and `x in list`: a call of `contains` located at `in`, after `x`.
fn is_operator(call: &FnCallExpr, pos: Position) -> bool {
    call.is_operator_call()
        || call.args.iter().any(|a| {
            let at = start(ASTNode::Expr(a));
            !at.is_none() && at < pos
        })
}

/// Where a statement or expression starts in the text: the first position of its parts,
/// as Rhai locates a binary operation at its operator.
fn start(node: ASTNode) -> Position {
    let mut first = node.position();
    let mut earlier = |path: &[ASTNode]| {
        if let Some(pos) = path.last().map(ASTNode::position)
            && !pos.is_none()
            && (first.is_none() || pos < first)
        {
            first = pos;
        }
        true
    };
    match node {
        ASTNode::Stmt(s) => s.walk(&mut Vec::new(), &mut earlier),
        ASTNode::Expr(e) => e.walk(&mut Vec::new(), &mut earlier),
        _ => true,
    };
    first
}

/// The closest of `known` to `word`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.min(k.len() / 3 + 1))
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests;
