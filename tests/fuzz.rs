//! Property-based fuzzing (proptest): case JSON, config text and rule evaluation on
//! arbitrary input never panic, and whatever parses keeps every field it was given.
//! Longer runs: PROPTEST_CASES=100000 cargo test --test main fuzz::

use std::path::Path;
use std::sync::OnceLock;

use casewarden::config::Settings;
use casewarden::rules::{EvalEnv, RuleSet};
use casewarden::stellar::Case;
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A case-shaped object: the known fields with values of any type, plus random extras.
fn case_like() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "_id",
        "status",
        "priority",
        "severity",
        "assignee",
        "tags",
        "created_at",
        "modified_at",
        "acknowledged",
        "score",
        "case_score",
        "ticket_id",
        "metadata",
        "history",
        "cust_id",
        "name",
    ]);
    (
        prop::collection::vec((keys, json_value()), 0..12),
        prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
    )
        .prop_map(|(known, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("_id".into(), Value::String("fuzz".into()));
            for (k, v) in known {
                m.insert(k.to_string(), v);
            }
            Value::Object(m)
        })
}

fn examples() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| {
        RuleSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
            .expect("examples compile")
    })
}

proptest! {
    #[test]
    fn arbitrary_json_never_panics_the_case_parser(v in json_value()) {
        let _ = Case::from_value(v);
    }

    #[test]
    fn parsed_cases_keep_every_field(v in case_like()) {
        if let Ok(case) = Case::from_value(v.clone()) {
            for (k, val) in v.as_object().unwrap() {
                prop_assert_eq!(case.raw().get(k), Some(val));
            }
        }
    }

    #[test]
    fn example_rules_never_panic_on_odd_cases(v in case_like()) {
        if let Ok(case) = Case::from_value(v) {
            let set = examples();
            let _ = set.evaluate_case(&set.rules, &case, &EvalEnv::default());
        }
    }

    #[test]
    fn arbitrary_config_text_never_panics(text in "(?s).{0,200}") {
        let _ = Settings::parse(&text, Path::new("/etc/casewarden/casewarden.toml"));
    }

    #[test]
    fn mutated_configs_never_panic(pos in 0usize..400, insert in "[\\[\\]=\"a-z0-9 .\\n#]{0,6}") {
        let base = include_str!("../systemd/casewarden.toml");
        let mut at = pos.min(base.len());
        while !base.is_char_boundary(at) {
            at -= 1;
        }
        let text = format!("{}{}{}", &base[..at], insert, &base[at..]);
        let _ = Settings::parse(&text, Path::new("/etc/casewarden/casewarden.toml"));
    }
}
