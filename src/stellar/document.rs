//! Cases in saved documents: a case, a list of cases or an API answer, in JSON as the
//! vendor's pages print it (trailing commas included). `test-rule` and the simulator's
//! `--cases-file` read these.

use serde_json::Value;

use super::object::Kind;

/// The case objects of a saved document: one case, an array of cases, or an API answer
/// (`{"data": {"cases": [...]}}`, `{"data": {"incidents": [...]}}`, `{"data": {case}}`,
/// `{"data": [...]}`). An answer whose `data` is not a case (a `/summary` text, say)
/// holds no case. Err: the document is none of these.
pub fn cases_in_answer(v: Value) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Object(mut obj) => match obj.remove("data") {
            Some(Value::Object(mut data)) => {
                match ["cases", "incidents"].iter().find_map(|k| data.remove(*k)) {
                    Some(Value::Array(items)) => Ok(items),
                    Some(other) => Err(format!(
                        "data.cases should be a list, got {}",
                        Kind::of(&other).name()
                    )),
                    None => Ok(vec![Value::Object(data)]),
                }
            }
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Ok(Vec::new()),
            None => Ok(vec![Value::Object(obj)]),
        },
        other => Err(format!(
            "expected a case object, an array of cases, or an API answer like {{\"data\":{{\"cases\":[...]}}}}, got {}",
            Kind::of(&other).name()
        )),
    }
}

/// JSON as real documentation and servers write it: strict JSON, or else JSON with
/// trailing commas (`[1, 2,]`), which the vendor's own pages print. The flag says whether
/// commas had to be dropped. The error is strict JSON's, with its line and column.
pub fn parse_lenient(text: &str) -> Result<(Value, bool), serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(v) => Ok((v, false)),
        Err(strict) => match serde_json::from_str(&without_trailing_commas(text)) {
            Ok(v) => Ok((v, true)),
            Err(_) => Err(strict),
        },
    }
}

/// `text` with every comma that closes a list or object (outside strings) removed.
fn without_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for (i, ch) in text.char_indices() {
        if in_string {
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if ch == '"' {
            in_string = true;
        } else if ch == ',' {
            let rest = text[i + 1..].trim_start();
            if rest.starts_with('}') || rest.starts_with(']') {
                continue;
            }
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn saved_answers_of_every_shape() {
        let case = json!({"_id": "a"});
        for doc in [
            case.clone(),
            json!([case.clone()]),
            json!({"data": {"cases": [case.clone()], "total": 1}}),
            json!({"data": {"incidents": [case.clone()], "total": 1}}),
            json!({"data": case.clone()}),
        ] {
            assert_eq!(
                cases_in_answer(doc.clone()),
                Ok(vec![case.clone()]),
                "{doc}"
            );
        }
        assert_eq!(
            cases_in_answer(json!({"data": "Observed 1 tactic"})),
            Ok(vec![])
        );
        assert!(cases_in_answer(json!(42)).is_err());
    }

    #[test]
    fn trailing_commas_are_forgiven_elsewhere_errors_stay_located() {
        let (v, repaired) = parse_lenient("{\"a\": [1, 2,], \"s\": \"x,]\",\n}").unwrap();
        assert!(repaired);
        assert_eq!(v, json!({"a": [1, 2], "s": "x,]"}));
        let e = parse_lenient("{\n\"a\": }").unwrap_err();
        assert_eq!(e.line(), 2);
    }
}
