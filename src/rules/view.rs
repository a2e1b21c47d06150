//! The case as rules see it: a Rhai map, converted lazily. Converting a whole case
//! (history, metadata, event ids) into a `Map` costs more than most rules spend on it, and
//! a plain map would be deep-copied for every rule because Rhai passes arguments by value.
//! A `CaseView` shares the server's JSON between rules and converts only the fields a
//! rule reads; the first change, or any other map function (`keys`, `remove`, ...), turns it
//! into an ordinary map of its own (copy-on-write), so the next rule never sees it.

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext};
use serde_json::Value;

use crate::stellar::object::CaseObject;

/// Rhai's own name for maps, so `type_of(c)` and error messages say "map".
const TYPE_NAME: &str = "map";

#[derive(Clone)]
pub struct CaseView {
    json: Arc<CaseObject>,
    /// The whole case as a map of its own, once the rule has changed it.
    own: Option<Box<Map>>,
}

impl CaseView {
    pub fn new(json: Arc<CaseObject>) -> CaseView {
        CaseView { json, own: None }
    }

    /// The server's object while the rule has not changed anything, else the rule's map.
    pub fn fields(&self) -> Fields<'_> {
        match &self.own {
            Some(map) => Fields::Map(map),
            None => Fields::Json(&self.json),
        }
    }

    fn get(&self, key: &str) -> Dynamic {
        match self.fields() {
            Fields::Map(map) => map.get(key).cloned().unwrap_or(Dynamic::UNIT),
            Fields::Json(json) => json.get(key).map_or(Dynamic::UNIT, json_to_dynamic),
        }
    }

    /// The rule's own map, converting the whole case the first time.
    fn map_mut(&mut self) -> &mut Map {
        let json = &self.json;
        self.own
            .get_or_insert_with(|| Box::new(object_to_map(json)))
    }

    fn into_map(self) -> Map {
        match self.own {
            Some(map) => *map,
            None => object_to_map(&self.json),
        }
    }

    fn to_map(&self) -> Map {
        match self.fields() {
            Fields::Map(map) => map.clone(),
            Fields::Json(json) => object_to_map(json),
        }
    }
}

/// What a case helper reads: the untouched JSON, or the map the rule made of it.
pub enum Fields<'a> {
    Json(&'a CaseObject),
    Map(&'a Map),
}

fn object_to_map(o: &CaseObject) -> Map {
    map_of(o.iter())
}

fn map_of<'a>(fields: impl Iterator<Item = (&'a str, &'a Value)>) -> Map {
    fields
        .map(|(k, v)| (k.into(), json_to_dynamic(v)))
        .collect()
}

/// JSON to Rhai, one allocation per string.
fn json_to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Dynamic::from(ImmutableString::from(s.as_str())),
        Value::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        Value::Object(o) => Dynamic::from_map(map_of(o.iter().map(|(k, v)| (k.as_str(), v)))),
    }
}

/// Turns every view inside `v` into the map it stands for.
fn expand_views(v: &mut Dynamic) {
    if v.is::<CaseView>() {
        let view = std::mem::take(v).cast::<CaseView>();
        *v = Dynamic::from_map(view.into_map());
    } else if let Some(mut map) = v.write_lock::<Map>() {
        map.values_mut().for_each(expand_views);
    } else if let Some(mut array) = v.write_lock::<rhai::Array>() {
        array.iter_mut().for_each(expand_views);
    }
}

/// Compares through Rhai's own `==` on maps, so a view equals the map it stands for.
fn equals(ctx: &NativeCallContext, a: Map, b: Map) -> Result<bool, Box<EvalAltResult>> {
    ctx.call_native_fn::<bool>("==", (a, b))
}

/// Makes `CaseView` behave as a map: fields by name (`c.status`, `c["status"]`), changes
/// (`c.tags.push(..)` reads, changes and writes back), printing, comparison, and every
/// other map function through a one-time conversion when Rhai finds no function for a view.
pub(super) fn register(e: &mut Engine) {
    e.register_type_with_name::<CaseView>(TYPE_NAME)
        .register_indexer_get(|c: &mut CaseView, key: &str| c.get(key))
        .register_indexer_set(|c: &mut CaseView, key: &str, value: Dynamic| {
            c.map_mut().insert(key.into(), value);
        })
        .register_fn("to_string", |c: &mut CaseView| {
            Dynamic::from_map(c.to_map()).to_string()
        })
        .register_fn("to_debug", |c: &mut CaseView| {
            format!("{:?}", Dynamic::from_map(c.to_map()))
        })
        // Rhai's own `to_json` cannot see into a view held inside another map.
        .register_fn("to_json", |m: &mut Map| {
            let mut m = Dynamic::from_map(m.clone());
            expand_views(&mut m);
            rhai::format_map_as_json(&m.cast::<Map>())
        });
    register_comparisons(e);
    register_map_functions(e);
}

/// `==` and `!=` between views and maps, in either order.
fn register_comparisons(e: &mut Engine) {
    for (op, negated) in [("==", false), ("!=", true)] {
        e.register_fn(
            op,
            move |ctx: NativeCallContext, a: &mut CaseView, b: CaseView| {
                equals(&ctx, a.to_map(), b.to_map()).map(|eq| eq != negated)
            },
        )
        .register_fn(
            op,
            move |ctx: NativeCallContext, a: &mut CaseView, b: Map| {
                equals(&ctx, a.to_map(), b).map(|eq| eq != negated)
            },
        )
        .register_fn(
            op,
            move |ctx: NativeCallContext, a: &mut Map, b: CaseView| {
                equals(&ctx, a.clone(), b.to_map()).map(|eq| eq != negated)
            },
        );
    }
}

/// Rhai's other map functions (`c.keys()`, `c.remove(..)`, `to_json(c)`, ...): the view
/// becomes the plain map it stands for and Rhai's own function runs on it, in place.
fn register_map_functions(e: &mut Engine) {
    for name in ["len", "is_empty", "keys", "values", "clear", "to_json"] {
        e.register_fn(name, move |ctx: NativeCallContext, c: &mut CaseView| {
            on_map(&ctx, name, c, &mut [])
        });
    }
    for name in [
        "contains",
        "get",
        "remove",
        "mixin",
        "+=",
        "fill_with",
        "map",
        "filter",
        "drain",
        "retain",
    ] {
        e.register_fn(
            name,
            move |ctx: NativeCallContext, c: &mut CaseView, mut a: Dynamic| {
                expand_views(&mut a);
                on_map(&ctx, name, c, &mut [&mut a])
            },
        );
    }
    e.register_fn(
        "set",
        |ctx: NativeCallContext, c: &mut CaseView, mut key: Dynamic, mut value: Dynamic| {
            on_map(&ctx, "set", c, &mut [&mut key, &mut value])
        },
    )
    .register_fn("+", |ctx: NativeCallContext, a: CaseView, b: Map| {
        merge(&ctx, a.into_map(), b)
    })
    .register_fn("+", |ctx: NativeCallContext, a: Map, b: CaseView| {
        merge(&ctx, a, b.into_map())
    })
    .register_fn("+", |ctx: NativeCallContext, a: CaseView, b: CaseView| {
        merge(&ctx, a.into_map(), b.into_map())
    });
}

/// Runs Rhai's map function `name` on the rule's own map of `c`, which it may change.
fn on_map(
    ctx: &NativeCallContext,
    name: &str,
    c: &mut CaseView,
    rest: &mut [&mut Dynamic],
) -> Result<Dynamic, Box<EvalAltResult>> {
    let mut map = Dynamic::from_map(std::mem::take(c.map_mut()));
    let mut args: Vec<&mut Dynamic> = Vec::with_capacity(rest.len() + 1);
    args.push(&mut map);
    args.extend(rest.iter_mut().map(|a| &mut **a));
    let result = ctx.call_native_fn_raw(name, true, &mut args);
    *c.map_mut() = map.cast::<Map>();
    result
}

fn merge(ctx: &NativeCallContext, a: Map, b: Map) -> Result<Map, Box<EvalAltResult>> {
    ctx.call_native_fn::<Map>("+", (a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rhai::{AST, FnPtr, Module, Scope};

    /// What a rule may do with its argument; each must give the same answer on a view as on
    /// the plain map it stands for.
    const EXPRS: &[&str] = &[
        "type_of(c)",
        "c.status",
        "c[\"status\"]",
        "c.no_such_field",
        "c?.status",
        "c.metadata.entity_id",
        "c.history[0].user",
        "c.tags.len()",
        "c.len()",
        "c.is_empty()",
        "c.keys()",
        "c.values().len()",
        "c.get(\"priority\")",
        "\"status\" in c",
        "c.contains(\"nope\")",
        "c.to_json()",
        "`${c}`",
        "to_string(c)",
        "to_debug(c)",
        "c == c",
        "c != #{}",
        "c == (c + #{})",
        "(c + #{}) == c",
        "(c + #{}) != c",
        "c.filter(|k, v| k == \"status\")",
        "(c + #{ extra: 1 }).extra",
        "{ let n = 0; for k in c.keys() { n += 1 } n }",
        "{ c.status = \"Escalated\"; c.status }",
        "{ c.status += \"!\"; c }",
        "{ c.tags.push(\"x\"); c.tags }",
        "{ c.tags += [\"y\"]; c }",
        "{ c.history[0].user = \"z\"; c.history }",
        "{ c.metadata.x = 1; c.metadata }",
        "{ c.remove(\"status\"); [c.status, c.len()] }",
        "{ remove(c, \"tags\"); c.tags }",
        "{ c.mixin(#{ q: 1 }); c.q }",
        "{ c.fill_with(#{ status: \"x\", w: 2 }); [c.status, c.w] }",
        "{ c.set(\"status\", \"x\"); c.status }",
        "{ c += #{ z: 1 }; c.z }",
        "{ c.clear(); c.len() }",
        "{ let d = c.drain(|k, v| k == \"status\"); [d, c.len()] }",
        "{ c.retain(|k, v| k == \"status\"); c }",
        "c.map(|k, v| type_of(v)).len()",
        "c.get(\"nope\")",
        "#{} + c",
        "c + c",
        "c.mixin(c)",
        "{ let d = c; d.status = \"x\"; [d.status, c.status] }",
        "{ let f = |x| x.status; f.call(c) }",
        "[c, 1]",
        "#{ k: c }",
        "#{ k: [c, #{ d: c }] }.to_json()",
        "{ let a = [c]; a[0].status = \"x\"; [a[0].status, c.status] }",
        "has_tag(c, \"a\") && c.has_tag(\"b\") && !c.has_tag(\"zz\")",
        "entity(c)",
        "last_human_activity(c)",
        "{ c.tags = []; [c.has_tag(\"a\"), entity(c), last_human_activity(c)] }",
    ];

    /// Runs every expression of EXPRS on a view of `json` and on the plain map, returning
    /// the pairs of answers (as Rhai prints them, or the error).
    fn both_ways(json: &serde_json::Map<String, Value>) -> Vec<(&'static str, Answer, Answer)> {
        let engine = super::super::engine::engine();
        let mut src = String::new();
        for (i, e) in EXPRS.iter().enumerate() {
            src.push_str(&format!(
                "fn t{i}(c) {{ let r = {{ {e} }}; to_debug(r) }}\n"
            ));
        }
        let ast = engine.compile(&src).unwrap();
        let module =
            AST::new_from_module(Module::eval_ast_as_new(Scope::new(), &ast, &engine).unwrap());
        // The view reads the case as a listing's text, one field at a time; the plain map
        // is parsed from the same text (a float may not survive a round trip to text).
        let text = serde_json::value::to_raw_value(json).unwrap();
        let view = CaseView::new(Arc::new(CaseObject::index(&text).unwrap()));
        let plain: Value = serde_json::from_str(text.get()).unwrap();
        let out = EXPRS
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let f = FnPtr::new(format!("t{i}")).unwrap();
                let run = |arg: Dynamic| {
                    super::super::collector::begin(&Default::default(), "t", None);
                    let r = f.call::<Dynamic>(&engine, &module, (arg,));
                    super::super::collector::finish();
                    r.map(|v| v.to_string()).map_err(|e| e.to_string())
                };
                (
                    *e,
                    run(Dynamic::from(view.clone())),
                    run(json_to_dynamic(&plain)),
                )
            })
            .collect();
        assert!(view.own.is_none(), "the shared view itself never changes");
        out
    }

    type Answer = Result<String, String>;

    #[test]
    fn a_view_behaves_as_the_map_it_stands_for() {
        let json: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"_id": "1", "status": "New", "priority": "High", "tags": ["a", "b"],
                "created_at": 100, "score": 12.5, "acknowledged": 0, "assignee": null,
                "metadata": {"entity_id": "asset,,10.10.30.20"},
                "history": [{"user": "u1", "timestamp": 300, "field": "status"}]}"#,
        )
        .unwrap();
        for (e, on_view, on_map) in both_ways(&json) {
            assert!(on_view.is_ok(), "{e}: {on_view:?}");
            assert_eq!(on_view, on_map, "{e}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-z0-9 ,.]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any object, with the case's field names holding any kind of value.
        #[test]
        fn any_object_reads_the_same_through_a_view(
            fields in prop::collection::btree_map(
                prop_oneof![
                    Just("status".to_string()), Just("tags".to_string()),
                    Just("metadata".to_string()), Just("history".to_string()),
                    Just("created_at".to_string()), "[a-z_]{1,10}",
                ],
                json_value(),
                0..8,
            )
        ) {
            let json: serde_json::Map<String, Value> = fields.into_iter().collect();
            for (e, on_view, on_map) in both_ways(&json) {
                prop_assert_eq!(on_view, on_map, "{} on {:?}", e, json);
            }
        }
    }

    #[test]
    fn a_missing_function_is_still_an_error_naming_a_map() {
        let engine = super::super::engine::engine();
        let ast = engine.compile("fn t(c) { c.frobnicate(1) }").unwrap();
        let module =
            AST::new_from_module(Module::eval_ast_as_new(Scope::new(), &ast, &engine).unwrap());
        let view = CaseView::new(Arc::new(CaseObject::default()));
        let err = FnPtr::new("t")
            .unwrap()
            .call::<Dynamic>(&engine, &module, (Dynamic::from(view),))
            .unwrap_err()
            .to_string();
        assert!(err.contains("frobnicate (map, i64)"), "{err}");
    }
}
