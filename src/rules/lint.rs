//! Static checks of a rule file, so the common mistakes stop `check` instead of failing on
//! every case at run time: calls of functions that do not exist or with the wrong number
//! of arguments (errors), fields of the case no Cases API object has and an `evaluate`
//! that returns a value (warnings). Rhai resolves functions only when it calls them, so
//! this reads the rule's tokens against the functions the engine has registered.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use rhai::{AST, Engine};

use super::RuleError;
use crate::stellar::model::CASE_FIELDS;

/// Words that are not function calls even when `(` follows.
const KEYWORDS: [&str; 27] = [
    "if", "else", "while", "loop", "for", "in", "do", "until", "return", "throw", "break",
    "continue", "let", "const", "fn", "switch", "try", "catch", "import", "export", "as",
    "private", "global", "this", "true", "false", "is",
];
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

/// `import "common" as c;`: alias -> module name.
fn imports<'a>(toks: &[Token<'a>]) -> HashMap<&'a str, &'a str> {
    toks.windows(4)
        .filter(|w| w[0].text == "import" && w[1].kind == Kind::Literal && w[2].text == "as")
        .map(|w| (w[3].text, w[1].text.trim_matches(['"', '`'])))
        .collect()
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

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ident,
    Punct,
    /// A string, character or number.
    Literal,
}

#[derive(Debug, Clone)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    line: usize,
    col: usize,
}

/// Rhai's tokens as far as the checks need them: identifiers, punctuation and literals,
/// comments dropped, the code inside `${ }` of a backtick string kept.
fn tokens(text: &str) -> Vec<Token<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line, mut line_start) = (0usize, 1usize, 0usize);
    // Open `${` interpolations: the brace depth inside each.
    let mut interpolations: Vec<usize> = Vec::new();
    let mut in_template = false;
    while i < bytes.len() {
        let c = bytes[i];
        let col = text[line_start..i].chars().count() + 1;
        let at = |kind: Kind, end: usize| Token {
            kind,
            text: &text[i..end],
            line,
            col,
        };
        if in_template {
            match c {
                b'`' => in_template = false,
                b'$' if bytes.get(i + 1) == Some(&b'{') => {
                    out.push(at(Kind::Punct, i + 2));
                    interpolations.push(0);
                    in_template = false;
                    i += 2;
                    continue;
                }
                b'\\' => i += 1,
                b'\n' => {
                    line += 1;
                    line_start = i + 1;
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'\n' => {
                line += 1;
                line_start = i + 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if bytes[i] == b'\n' {
                            line += 1;
                            line_start = i + 1;
                        }
                        i += 1;
                    }
                }
            }
            b'"' | b'\'' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    if bytes[i] == b'\\' {
                        i += 1;
                    } else if bytes[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(bytes.len());
                out.push(Token {
                    kind: Kind::Literal,
                    text: &text[start..i],
                    line,
                    col,
                });
            }
            b'`' => {
                out.push(at(Kind::Literal, i + 1));
                in_template = true;
                i += 1;
            }
            b'{' => {
                if let Some(depth) = interpolations.last_mut() {
                    *depth += 1;
                }
                out.push(at(Kind::Punct, i + 1));
                i += 1;
            }
            b'}' => match interpolations.last_mut() {
                Some(0) => {
                    interpolations.pop();
                    out.push(at(Kind::Punct, i + 1));
                    in_template = true;
                    i += 1;
                }
                depth => {
                    if let Some(d) = depth {
                        *d -= 1;
                    }
                    out.push(at(Kind::Punct, i + 1));
                    i += 1;
                }
            },
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = word_end(bytes, i);
                out.push(at(Kind::Ident, end));
                i = end;
            }
            c if c.is_ascii_digit() => {
                let mut end = word_end(bytes, i);
                while end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit()
                {
                    end = word_end(bytes, end + 1);
                }
                out.push(at(Kind::Literal, end));
                i = end;
            }
            _ => {
                let two = text.get(i..i + 2).unwrap_or("");
                let len = if ["::", "?.", "?[", "=="].contains(&two) {
                    2
                } else {
                    text[i..].chars().next().map_or(1, char::len_utf8)
                };
                out.push(at(Kind::Punct, i + len));
                i += len;
            }
        }
    }
    out
}

fn word_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    i
}

/// The number of arguments of the call whose `(` is at `open`.
fn argument_count(toks: &[Token], open: usize) -> usize {
    let mut depth = 0;
    let mut commas = 0;
    for t in &toks[open + 1..] {
        if t.kind != Kind::Punct {
            continue;
        }
        match t.text {
            "(" | "[" | "{" | "${" | "#{" => depth += 1,
            ")" if depth == 0 => break,
            ")" | "]" | "}" => depth -= 1,
            "," if depth == 0 => commas += 1,
            _ => {}
        }
    }
    let empty = toks.get(open + 1).is_some_and(|t| t.text == ")");
    if empty { 0 } else { commas + 1 }
}

/// Names a rule binds itself: variables, constants, loop variables, parameters of its
/// functions and closures. Calling one of them is calling a function pointer.
fn local_names<'a>(toks: &[Token<'a>]) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, t) in toks.iter().enumerate() {
        let next = |k: usize| toks.get(i + k).filter(|t| t.kind == Kind::Ident);
        match t.text {
            "let" | "const" | "for" => {
                if let Some(n) = next(1) {
                    names.insert(n.text);
                }
            }
            "|" | "fn" | "(" => {
                let mut k = i + 1;
                if t.text == "fn" {
                    k += 2;
                }
                // A list of names and nothing else: `(a, b)`, `|x|`; not `(f(x))`.
                while let Some(p) = toks.get(k).filter(|p| p.kind == Kind::Ident) {
                    match toks.get(k + 1).map(|t| t.text) {
                        Some(",") => {
                            names.insert(p.text);
                            k += 2;
                        }
                        Some(")" | "|") => {
                            names.insert(p.text);
                            break;
                        }
                        _ => break,
                    }
                }
            }
            _ => {}
        }
    }
    names
}

/// The calendars a file names in `business_hours_since(ms, "NAME")` and
/// `business_minutes_since`, as (line, col, name), to check against the config.
pub(super) fn calendar_names(text: &str) -> Vec<(usize, usize, String)> {
    let toks = tokens(text);
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if !matches!(t.text, "business_hours_since" | "business_minutes_since")
            || toks.get(i + 1).map(|t| t.text) != Some("(")
        {
            continue;
        }
        let mut depth = 0;
        for (k, a) in toks.iter().enumerate().skip(i + 2) {
            match a.text {
                "(" | "[" | "{" | "${" | "#{" => depth += 1,
                ")" if depth == 0 => break,
                ")" | "]" | "}" => depth -= 1,
                "," if depth == 0 => {
                    let name = toks.get(k + 1).filter(|n| {
                        n.kind == Kind::Literal
                            && n.text.starts_with('"')
                            && toks.get(k + 2).map(|t| t.text) == Some(")")
                    });
                    if let Some(n) = name {
                        out.push((n.line, n.col, n.text.trim_matches('"').to_string()));
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    out
}

/// What the checks found: errors stop the rule set, warnings are printed.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub errors: Vec<RuleError>,
    pub warnings: Vec<RuleError>,
}

/// Lints `text`, compiled as `ast`; `param` is `evaluate`'s argument (the case) and
/// `custom_fields` the rule's own allow-list of case fields.
pub(super) fn lint(
    file: &Path,
    text: &str,
    ast: &AST,
    library: &Library,
    param: &str,
    custom_fields: &[String],
) -> Findings {
    let toks = tokens(text);
    let locals = local_names(&toks);
    let aliases = imports(&toks);
    let mut script: HashMap<&str, BTreeSet<usize>> = HashMap::new();
    for f in ast.iter_functions() {
        script.entry(f.name).or_default().insert(f.params.len());
    }
    let mut found = Findings::default();
    let at = |t: &Token, message: String| RuleError {
        file: file.to_path_buf(),
        line: t.line,
        col: t.col,
        message,
    };
    for (i, t) in toks.iter().enumerate() {
        if t.kind != Kind::Ident {
            continue;
        }
        let before = i.checked_sub(1).map(|k| toks[k].text);
        let after = toks.get(i + 1).map(|t| t.text);
        let method = matches!(before, Some("." | "?."));
        if after == Some("(") && before == Some("::") {
            let alias = toks[i - 2].text;
            let Some(module) = aliases.get(alias) else {
                continue;
            };
            let n = argument_count(&toks, i + 1);
            match library.modules.get(*module).map(|m| m.get(t.text)) {
                Some(Some(takes)) if !takes.contains(&n) => found.errors.push(at(
                    t,
                    format!(
                        "`{alias}::{}` takes {} argument(s), not {n}",
                        t.text,
                        list(takes)
                    ),
                )),
                Some(None) => {
                    let names = library.modules[*module].keys().map(String::as_str);
                    let hint = did_you_mean(t.text, names)
                        .map(|s| format!(" (did you mean `{alias}::{s}`?)"))
                        .unwrap_or_default();
                    found.errors.push(at(
                        t,
                        format!(
                            "unknown function `{alias}::{}`{hint}: lib/{module}.rhai has no public function of that name",
                            t.text
                        ),
                    ));
                }
                _ => {}
            }
        } else if after == Some("(") {
            if matches!(before, Some("fn" | "::"))
                || (!method && (KEYWORDS.contains(&t.text) || locals.contains(t.text)))
                || BUILT_IN.contains(&t.text)
            {
                continue;
            }
            // A method call passes its object as the first argument.
            let n = argument_count(&toks, i + 1) + usize::from(method);
            let takes: BTreeSet<usize> = [library.arity.get(t.text), script.get(t.text)]
                .into_iter()
                .flatten()
                .flatten()
                .copied()
                .collect();
            if let Some(problem) = call_problem(t.text, n, method, &takes, library, &script) {
                found.errors.push(at(t, problem));
            }
        } else if method
            && i >= 2
            && toks[i - 2].text == param
            && !CASE_FIELDS.contains(&t.text)
            && !custom_fields.iter().any(|f| f == t.text)
        {
            let hint = did_you_mean(t.text, CASE_FIELDS.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            found.warnings.push(at(
                t,
                format!(
                    "`{param}.{}` is not a field of a Stellar Cyber case{hint}; it reads as () on every case. A custom field of your server: list it in RULE.custom_fields",
                    t.text
                ),
            ));
        }
    }
    if let Some(w) = returned_value(&toks) {
        found.warnings.push(at(
            w,
            "`evaluate` returns a value here; it is ignored: a rule changes cases only through set_priority, add_tag, comment and the other change functions".into(),
        ));
    }
    found
}

fn list(counts: &BTreeSet<usize>) -> String {
    counts
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Why a call of `name` with `n` arguments cannot work, if it cannot.
fn call_problem(
    name: &str,
    n: usize,
    method: bool,
    takes: &BTreeSet<usize>,
    library: &Library,
    script: &HashMap<&str, BTreeSet<usize>>,
) -> Option<String> {
    if takes.contains(&n) {
        return None;
    }
    if takes.is_empty() {
        let known = library
            .arity
            .keys()
            .map(String::as_str)
            .chain(script.keys().copied());
        let hint = did_you_mean(name, known)
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

/// The token after which `evaluate` returns a value: `return x`, or a last expression of
/// its body that is not a statement, a block or a call.
fn returned_value<'a, 'b>(toks: &'b [Token<'a>]) -> Option<&'b Token<'a>> {
    let start = toks
        .windows(2)
        .position(|w| w[0].text == "fn" && w[1].text == "evaluate")?;
    let open = start + toks[start..].iter().position(|t| t.text == "{")?;
    let mut depth = 0;
    let mut last_statement = open + 1;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t.text {
            "{" | "#{" | "${" | "(" | "[" => depth += 1,
            "}" | ")" | "]" => {
                depth -= 1;
                if depth == 0 {
                    return trailing_value(&toks[last_statement..k]);
                }
                if depth == 1 && t.text == "}" {
                    last_statement = k + 1;
                }
            }
            ";" if depth == 1 => last_statement = k + 1,
            "return" if depth >= 1 => {
                if let Some(next) = toks.get(k + 1).filter(|n| !matches!(n.text, ";" | "}")) {
                    return Some(next);
                }
            }
            _ => {}
        }
    }
    None
}

/// The first token of a trailing expression that yields a value, if `rest` is one.
fn trailing_value<'a, 'b>(rest: &'b [Token<'a>]) -> Option<&'b Token<'a>> {
    let first = rest.first()?;
    let statement = [
        "if", "switch", "for", "while", "loop", "do", "let", "const", "throw", "{",
    ];
    (!statement.contains(&first.text) && !ends_with_call(rest)).then_some(first)
}

/// Whether the expression ends with a call (`f(..)`, `c.tags.push(..)`): its value is the
/// function's, which for the change functions is nothing.
fn ends_with_call(rest: &[Token]) -> bool {
    if rest.last().is_none_or(|t| t.text != ")") {
        return false;
    }
    let mut depth = 0;
    for (k, t) in rest.iter().enumerate().rev() {
        match t.text {
            ")" => depth += 1,
            "(" => {
                depth -= 1;
                if depth == 0 {
                    return k > 0 && rest[k - 1].kind == Kind::Ident;
                }
            }
            _ => {}
        }
    }
    false
}

/// The closest of `known` to `word`, when it is close enough to be a typo.
pub(super) fn did_you_mean<'a>(
    word: &str,
    known: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    known
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.min(k.len() / 3 + 1))
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint_text(text: &str) -> Findings {
        let engine = super::super::engine::engine();
        let ast = engine.compile(text).unwrap();
        lint(
            Path::new("r.rhai"),
            text,
            &ast,
            &Library::of(&engine),
            "c",
            &[],
        )
    }

    fn messages(v: &[RuleError]) -> Vec<String> {
        v.iter()
            .map(|e| format!("{}:{} {}", e.line, e.col, e.message))
            .collect()
    }

    #[test]
    fn the_example_rules_are_clean() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "rhai") {
                let f = lint_text(&std::fs::read_to_string(&path).unwrap());
                assert!(f.errors.is_empty(), "{path:?}: {:?}", messages(&f.errors));
                assert!(
                    f.warnings.is_empty(),
                    "{path:?}: {:?}",
                    messages(&f.warnings)
                );
            }
        }
    }

    #[test]
    fn unknown_functions_and_wrong_counts_are_errors() {
        let f = lint_text(
            "fn evaluate(c) {\n  add_tagg(\"x\");\n  set_priority(\"High\", \"a\", \"b\");\n  c.tags.frobnicate();\n}\n",
        );
        let m = messages(&f.errors);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(
            m[0].starts_with("2:3 unknown function `add_tagg` (did you mean `add_tag`?)"),
            "{m:?}"
        );
        assert!(
            m[1].starts_with("3:3 `set_priority` takes 1 or 2 argument(s), not 3"),
            "{m:?}"
        );
        assert!(m[2].contains("`frobnicate`"), "{m:?}");
    }

    #[test]
    fn a_call_inside_a_call_is_checked() {
        let f = lint_text("fn evaluate(c) {\n  print(add_tagz(\"y\"));\n  let t = [f(1)];\n}\n");
        let m = messages(&f.errors);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("2:9 unknown function `add_tagz`"), "{m:?}");
        assert!(m[1].starts_with("3:12 unknown function `f`"), "{m:?}");
    }

    #[test]
    fn what_a_rule_defines_or_binds_is_callable() {
        let f = lint_text(
            "fn helper(a, b) { a + b }\nfn evaluate(c) {\n  let f = |x| x + 1;\n  let n = helper(1, 2) + f.call(1);\n  let s = `${c.status} ${helper(1, 2)}`;\n  if c.tags.contains(\"x\") && c.has_tag(\"y\") { add_tag(\"z\"); }\n  for t in c.tags { print(t); }\n  global::X;\n}\nconst X = 1;\n",
        );
        assert!(f.errors.is_empty(), "{:?}", messages(&f.errors));
    }

    #[test]
    fn unknown_case_fields_are_warnings_with_a_suggestion() {
        let f = lint_text(
            "fn evaluate(c) {\n  if c.asignee == \"\" { add_tag(\"x\"); }\n  let s = c.status;\n}\n",
        );
        let m = messages(&f.warnings);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("2:8 `c.asignee` is not a field") && m[0].contains("`assignee`"),
            "{m:?}"
        );
        let engine = super::super::engine::engine();
        let text = "fn evaluate(c) { let x = c.my_field; }";
        let ast = engine.compile(text).unwrap();
        let allowed = lint(
            Path::new("r"),
            text,
            &ast,
            &Library::of(&engine),
            "c",
            &["my_field".into()],
        );
        assert!(allowed.warnings.is_empty());
    }

    #[test]
    fn a_value_returned_from_evaluate_is_a_warning() {
        for (text, returns) in [
            ("fn evaluate(c) { c.status == \"New\" }", true),
            (
                "fn evaluate(c) { if c.status == \"New\" { return true; } }",
                true,
            ),
            ("fn evaluate(c) { add_tag(\"x\") }", false),
            ("fn evaluate(c) { if true { add_tag(\"x\"); } }", false),
            ("fn evaluate(c) { let x = 1; return; }", false),
            ("fn evaluate(c) { add_tag(\"x\"); }", false),
            ("fn evaluate(c) { let t = c.tags; t.push(\"x\") }", false),
            ("fn evaluate(c) { (c.status == \"New\") }", true),
        ] {
            let f = lint_text(text);
            assert_eq!(
                f.warnings.len(),
                usize::from(returns),
                "{text}: {:?}",
                messages(&f.warnings)
            );
        }
    }

    #[test]
    fn signatures_are_counted() {
        assert_eq!(
            parse_signature("len(map: &mut map) -> i64"),
            Some(("len".into(), 1))
        );
        assert_eq!(parse_signature("now() -> i64"), Some(("now".into(), 0)));
        assert_eq!(
            parse_signature("filter(a: &mut array, f: Fn) -> Result<Array, Box<E>>"),
            Some(("filter".into(), 2))
        );
    }
}
