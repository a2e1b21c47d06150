//! A case object as the server sent it, read one field at a time. A listed case keeps its
//! JSON text and where each top-level field's value is in it; a value is parsed when it is
//! first read. Rules and the planner read a handful of a case's 25-odd fields, so the rest
//! (`history`, `event_ids`, `metadata`, ...) cost a scan, never an allocation.

use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The top-level fields of a JSON object, read by name: a parsed `Map`, or a
/// [`CaseObject`] that parses a field when it is first read.
pub trait Object {
    fn get(&self, key: &str) -> Option<&Value>;
}

impl Object for Map<String, Value> {
    fn get(&self, key: &str) -> Option<&Value> {
        Map::get(self, key)
    }
}

/// What kind of JSON value a field holds, as its first character shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    List,
    Object,
}

impl Kind {
    pub fn of(v: &Value) -> Kind {
        match v {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(_) => Kind::Number,
            Value::String(_) => Kind::String,
            Value::Array(_) => Kind::List,
            Value::Object(_) => Kind::Object,
        }
    }

    /// The kind of valid JSON text.
    fn of_text(text: &str) -> Kind {
        match text.trim_start().as_bytes().first() {
            Some(b'n') => Kind::Null,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'"') => Kind::String,
            Some(b'[') => Kind::List,
            Some(b'{') => Kind::Object,
            _ => Kind::Number,
        }
    }

    /// Why a case that is this kind of value is not read.
    pub fn not_an_object(self) -> String {
        format!("expected a JSON object, got {}", self.name())
    }

    /// As error messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::List => "a list",
            Kind::Object => "an object",
        }
    }
}

/// A JSON object whose values are parsed on first read. Duplicate keys: the last wins, as
/// when the object is parsed into a `Map`.
#[derive(Clone, Default)]
pub struct CaseObject {
    text: Box<str>,
    fields: Vec<Field>,
}

#[derive(Clone)]
struct Field {
    /// [`tag`] of the key: most keys differ in it, so a lookup rarely compares text.
    tag: u64,
    key: Key,
    /// Where the value's text is in `text`; empty for a value set after indexing.
    at: (u32, u32),
    value: OnceLock<Value>,
}

#[derive(Clone)]
enum Key {
    /// Where the key is in `text` (a key without escapes, which is every real one).
    At(u32, u32),
    /// A field casewarden sets itself (the normalised `priority`, `score`, `tenant`).
    Static(&'static str),
    Own(Box<str>),
}

impl CaseObject {
    /// Indexes an object's fields without parsing their values. Err: why the text is not
    /// an object casewarden can read.
    pub fn index(raw: &RawValue) -> Result<CaseObject, String> {
        let text: Box<str> = raw.get().trim().into();
        let kind = Kind::of_text(&text);
        if kind != Kind::Object {
            return Err(kind.not_an_object());
        }
        if u32::try_from(text.len()).is_err() {
            return Err("a case object larger than 4 GiB".into());
        }
        let base = text.as_ptr() as usize;
        let fields = serde_json::Deserializer::from_str(&text)
            .deserialize_map(Indexer { base })
            .map_err(|e| format!("not valid JSON ({e})"))?;
        Ok(CaseObject { text, fields })
    }

    /// An object whose values are all parsed already.
    pub fn from_map(map: Map<String, Value>) -> CaseObject {
        let fields = map
            .into_iter()
            .map(|(k, v)| Field {
                tag: tag(&k),
                key: Key::Own(k.into_boxed_str()),
                at: (0, 0),
                value: OnceLock::from(v),
            })
            .collect();
        CaseObject {
            text: Box::default(),
            fields,
        }
    }

    fn key<'a>(&'a self, f: &'a Field) -> &'a str {
        match &f.key {
            Key::At(a, b) => &self.text[*a as usize..*b as usize],
            Key::Static(k) => k,
            Key::Own(k) => k,
        }
    }

    fn field(&self, key: &str) -> Option<&Field> {
        let t = tag(key);
        self.fields
            .iter()
            .rev()
            .find(|f| f.tag == t && self.key(f) == key)
    }

    fn parse<'a>(&'a self, f: &'a Field) -> serde_json::Result<&'a Value> {
        if let Some(v) = f.value.get() {
            return Ok(v);
        }
        let v = serde_json::from_str(&self.text[f.at.0 as usize..f.at.1 as usize])?;
        Ok(f.value.get_or_init(|| v))
    }

    /// Indexing only checks a value's syntax: a number out of range, a lone surrogate or
    /// nesting deeper than 128 is found here, and read as null (the fields a pass relies on
    /// are parsed with [`CaseObject::checked`] first, so such a case is skipped instead).
    fn value<'a>(&'a self, f: &'a Field) -> &'a Value {
        self.parse(f).unwrap_or_else(|e| {
            tracing::warn!(field = self.key(f), error = %e, "a field of a case is not valid JSON; read as null");
            f.value.get_or_init(|| Value::Null)
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.field(key).map(|f| self.value(f))
    }

    /// [`CaseObject::get`], or why the field's value cannot be read.
    pub fn checked(&self, key: &str) -> Result<Option<&Value>, String> {
        match self.field(key) {
            None => Ok(None),
            Some(f) => self
                .parse(f)
                .map(Some)
                .map_err(|e| format!("{key} is not valid JSON ({e})")),
        }
    }

    /// The kind of value a field holds, without parsing it.
    pub fn kind(&self, key: &str) -> Option<Kind> {
        let f = self.field(key)?;
        Some(match f.value.get() {
            Some(v) => Kind::of(v),
            None => Kind::of_text(&self.text[f.at.0 as usize..f.at.1 as usize]),
        })
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.field(key).is_some()
    }

    /// Sets a field, replacing the value it had.
    pub fn insert(&mut self, key: &'static str, value: Value) {
        let t = tag(key);
        let at = self
            .fields
            .iter()
            .rposition(|f| f.tag == t && self.key(f) == key);
        let field = Field {
            tag: t,
            key: Key::Static(key),
            at: (0, 0),
            value: OnceLock::from(value),
        };
        match at {
            Some(i) => self.fields[i] = field,
            None => self.fields.push(field),
        }
    }

    /// The object as JSON text with only the fields `keep` accepts: values as the server
    /// sent them, the ones casewarden set (normalised names) as it set them.
    pub fn project(&self, keep: impl Fn(&str) -> bool) -> String {
        let mut out = String::with_capacity(self.text.len());
        out.push('{');
        for (i, f) in self.fields.iter().enumerate() {
            let key = self.key(f);
            let later = self.fields[i + 1..]
                .iter()
                .any(|g| g.tag == f.tag && self.key(g) == key);
            if later || !keep(key) {
                continue;
            }
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&Value::String(key.to_string()).to_string());
            out.push(':');
            match f.at {
                (0, 0) => out.push_str(&self.value(f).to_string()),
                (a, b) => out.push_str(&self.text[a as usize..b as usize]),
            }
        }
        out.push('}');
        out
    }

    /// Every field in key order (as a `Map` holds them), parsing what was not read yet.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        let mut keys: Vec<(&str, usize)> = self
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (self.key(f), i))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
        keys.dedup_by(|later, first| later.0 == first.0);
        keys.into_iter()
            .map(|(k, i)| (k, self.value(&self.fields[i])))
    }
}

impl Object for CaseObject {
    fn get(&self, key: &str) -> Option<&Value> {
        CaseObject::get(self, key)
    }
}

impl PartialEq for CaseObject {
    fn eq(&self, other: &CaseObject) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for CaseObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for CaseObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A key's length and first seven bytes in one number.
fn tag(key: &str) -> u64 {
    key.bytes()
        .take(7)
        .enumerate()
        .fold(key.len() as u64 & 0xff, |t, (i, b)| {
            t | u64::from(b) << (8 * (i + 1))
        })
}

/// Records where each key and value of an object is in the text being read.
struct Indexer {
    base: usize,
}

impl Indexer {
    fn at(&self, s: &str) -> (u32, u32) {
        let start = (s.as_ptr() as usize - self.base) as u32;
        (start, start + s.len() as u32)
    }
}

impl<'de> Visitor<'de> for Indexer {
    type Value = Vec<Field>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Field>, A::Error> {
        let mut fields = Vec::with_capacity(32);
        while let Some(key) = map.next_key::<KeyText<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            let (tag, key) = match key {
                KeyText::Borrowed(k) => {
                    let (a, b) = self.at(k);
                    (tag(k), Key::At(a, b))
                }
                KeyText::Owned(k) => (tag(&k), Key::Own(k.into_boxed_str())),
            };
            fields.push(Field {
                tag,
                key,
                at: self.at(value.get()),
                value: OnceLock::new(),
            });
        }
        Ok(fields)
    }
}

/// A key as the parser read it: in place, or unescaped into a string of its own.
enum KeyText<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl<'de> serde::Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<KeyText<'de>, E> {
                Ok(KeyText::Borrowed(s))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyText<'de>, E> {
                Ok(KeyText::Owned(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn indexed(text: &str) -> CaseObject {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        CaseObject::index(&raw).unwrap()
    }

    #[test]
    fn reads_what_a_parsed_map_holds() {
        let text =
            r#" {"b": [1, {"x": null}], "a\"q": "t\u00e9", "n": -1.5e3, "b": true, "e": {}} "#;
        let obj = indexed(text);
        let map: Map<String, Value> = serde_json::from_str(text).unwrap();
        for key in ["a\"q", "b", "n", "e", "missing"] {
            assert_eq!(obj.get(key), map.get(key), "{key}");
        }
        assert_eq!(
            obj.kind("b"),
            Some(Kind::Bool),
            "the last of a repeated key wins"
        );
        assert_eq!(obj.kind("n"), Some(Kind::Number));
        assert_eq!(serde_json::to_value(&obj).unwrap(), Value::Object(map));
    }

    #[test]
    fn insert_replaces_and_adds() {
        let mut obj = indexed(r#"{"p": "Low", "q": 1}"#);
        obj.insert("p", json!("High"));
        obj.insert("z", json!([1]));
        assert_eq!(obj.get("p"), Some(&json!("High")));
        assert_eq!(obj.kind("z"), Some(Kind::List));
        assert_eq!(
            serde_json::to_string(&obj).unwrap(),
            r#"{"p":"High","q":1,"z":[1]}"#
        );
        assert_eq!(
            obj,
            CaseObject::from_map(
                json!({"q": 1, "z": [1], "p": "High"})
                    .as_object()
                    .unwrap()
                    .clone()
            )
        );
    }

    #[test]
    fn not_an_object_says_what_it_is() {
        let raw: Box<RawValue> = serde_json::from_str("[1]").unwrap();
        assert_eq!(
            CaseObject::index(&raw).unwrap_err(),
            "expected a JSON object, got a list"
        );
        let raw: Box<RawValue> = serde_json::from_str(" \"x\"").unwrap();
        assert!(CaseObject::index(&raw).unwrap_err().ends_with("a string"));
    }

    #[test]
    fn a_value_only_a_full_parse_refuses_is_an_error_when_checked() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let text = format!(r#"{{"big": 1e400, "deep": {deep}, "ok": 1}}"#);
        let obj = indexed(&text);
        assert!(
            obj.checked("big")
                .unwrap_err()
                .starts_with("big is not valid JSON")
        );
        assert!(obj.checked("deep").is_err());
        assert_eq!(obj.checked("ok"), Ok(Some(&json!(1))));
        assert_eq!(obj.checked("none"), Ok(None));
        assert_eq!(
            obj.get("big"),
            Some(&Value::Null),
            "read as null after a warning"
        );
    }
}
