//! The case as rules see it: a Rhai map, converted lazily. Converting a whole case
//! (history, metadata, event ids) into a `Map` costs more than most rules spend on it, and
//! a plain map would be deep-copied for every rule because Rhai passes arguments by value.
//! A `CaseView` shares the server's JSON between rules and converts only the fields a
//! rule reads; the first change, or any map function it does not answer itself, turns it
//! into an ordinary map of its own (copy-on-write), so the next rule never sees it.

use std::sync::Arc;

use rhai::{Dynamic, Engine, ImmutableString, Map, NativeCallContext};
use serde_json::Value;

/// Rhai's own name for maps, so `type_of(c)` and error messages say "map".
const TYPE_NAME: &str = "map";

#[derive(Clone)]
pub struct CaseView {
    json: Arc<serde_json::Map<String, Value>>,
    /// The whole case as a map of its own, once the rule has changed it.
    own: Option<Box<Map>>,
}

impl CaseView {
    pub fn new(json: Arc<serde_json::Map<String, Value>>) -> CaseView {
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
    Json(&'a serde_json::Map<String, Value>),
    Map(&'a Map),
}

fn object_to_map(o: &serde_json::Map<String, Value>) -> Map {
    o.iter()
        .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
        .collect()
}

/// JSON to Rhai, one allocation per string.
pub fn json_to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Dynamic::from(ImmutableString::from(s.as_str())),
        Value::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        Value::Object(o) => Dynamic::from_map(object_to_map(o)),
    }
}

/// Compares through Rhai's own `==` on maps, so a view equals the map it stands for.
fn equals(ctx: &NativeCallContext, a: Map, b: Map) -> Result<bool, Box<rhai::EvalAltResult>> {
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
        .register_fn(
            "==",
            |ctx: NativeCallContext, a: &mut CaseView, b: CaseView| {
                equals(&ctx, a.to_map(), b.to_map())
            },
        )
        .register_fn("==", |ctx: NativeCallContext, a: &mut CaseView, b: Map| {
            equals(&ctx, a.to_map(), b)
        })
        .register_fn("==", |ctx: NativeCallContext, a: &mut Map, b: CaseView| {
            equals(&ctx, a.clone(), b.to_map())
        })
        .register_fn(
            "!=",
            |ctx: NativeCallContext, a: &mut CaseView, b: CaseView| {
                equals(&ctx, a.to_map(), b.to_map()).map(|eq| !eq)
            },
        )
        .register_fn("!=", |ctx: NativeCallContext, a: &mut CaseView, b: Map| {
            equals(&ctx, a.to_map(), b).map(|eq| !eq)
        })
        .register_fn("!=", |ctx: NativeCallContext, a: &mut Map, b: CaseView| {
            equals(&ctx, a.clone(), b.to_map()).map(|eq| !eq)
        });
    // Any other function called with a view (`c.keys()`, `c.remove(..)`, `to_json(c)`, a
    // typo): the view becomes the plain map it stands for, in place, and the call is
    // dispatched again, so map functions work and a missing function's error names `map`.
    #[allow(deprecated)] // volatile, not deprecated: the Rhai docs say so
    e.on_missing_function(|name, args, is_method, mut ctx| {
        let mut converted = false;
        for arg in args.iter_mut().filter(|a| a.is::<CaseView>()) {
            let view = std::mem::take(&mut **arg).cast::<CaseView>();
            **arg = Dynamic::from_map(view.into_map());
            converted = true;
        }
        if !converted {
            return Ok(None);
        }
        ctx.call_fn_raw(name, is_method, is_method, args).map(Some)
    });
}
