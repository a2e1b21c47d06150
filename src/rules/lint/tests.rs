//! The lint on small rule texts and on the example rules users copy from.

use super::*;

fn lint_text(text: &str) -> Findings {
    lint_with(text, &[])
}

fn lint_with(text: &str, custom_fields: &[String]) -> Findings {
    let engine = super::super::engine::engine();
    let ast = engine.compile(text).unwrap();
    lint(
        Path::new("r.rhai"),
        &ast,
        &Library::of(&engine),
        "c",
        custom_fields,
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
    let allowed = lint_with(
        "fn evaluate(c) { let x = c.my_field; }",
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
        ("fn evaluate(c) { \"x\" in c.tags }", true),
        ("fn evaluate(c) { throw \"no\"; }", false),
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

/// Walking the AST instead of the text: a `return` of a closure inside `evaluate` is the
/// closure's, a call spelled inside a raw string is text, and `x.c.field` is not a field
/// of the case `c`.
#[test]
fn only_what_rhai_runs_is_checked() {
    let f = lint_text(
        "fn evaluate(c) {\n  let f = |x| { return x + 1; };\n  let s = #\"say \"add_tagg(1)\" \"#;\n  let m = #{ c: #{} };\n  let y = m.c.asignee;\n  add_tag(s);\n}\n",
    );
    assert!(f.errors.is_empty(), "{:?}", messages(&f.errors));
    assert!(f.warnings.is_empty(), "{:?}", messages(&f.warnings));
}

#[test]
fn calendars_named_as_literals_are_located() {
    let f = lint_text(
        "// business_hours_since(0, \"in-a-comment\")\nfn evaluate(c) {\n  let h = business_hours_since(c.created_at, \"soc\") + business_minutes_since(0, \"noc\");\n  let n = business_hours_since(0, global::CAL);\n}\nconst CAL = \"x\";\n",
    );
    let named: Vec<String> = f
        .calendars
        .iter()
        .map(|r| format!("{}:{} {}", r.line, r.col, r.message))
        .collect();
    assert_eq!(named, ["3:46 soc", "3:81 noc"]);
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
