//! Rule evaluation throughput on one core: the example rules against a rule that only reads
//! one field as the baseline, both on the same generated cases in the same run.
//!
//! cargo bench --bench engine

use std::path::PathBuf;
use std::time::Instant;

use casewarden::config::ApiFlavor;
use casewarden::rules::{EvalEnv, RuleSet};
use casewarden::sim::data;
use casewarden::stellar::Case;

const CASES: usize = 20_000;
const ROUNDS: usize = 3;

/// Case-rule evaluations per second over `cases`, single-threaded, best of ROUNDS.
fn rate(set: &RuleSet, cases: &[Case], env: &EvalEnv) -> (f64, usize) {
    let mut best = 0.0f64;
    let mut changes = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut evals = 0usize;
        changes = 0;
        for case in cases {
            for (_, result) in set.evaluate_case(&set.rules, case, env) {
                evals += 1;
                changes += result.map(|c| c.changes.len()).unwrap_or(0);
            }
        }
        best = best.max(evals as f64 / start.elapsed().as_secs_f64());
    }
    (best, changes)
}

fn main() {
    let users = data::users("demo@example.com");
    let tenants = data::tenants(data::TENANTS.len());
    let cases: Vec<Case> = data::generate(
        CASES,
        7,
        casewarden::now_ms(),
        ApiFlavor::Legacy,
        &users,
        &tenants,
    )
    .into_iter()
    .map(|v| Case::from_value(v).expect("generated cases parse"))
    .collect();
    let env = EvalEnv::default();
    let rules_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let examples = RuleSet::load_dir(&rules_dir).expect("example rules compile");
    let baseline = RuleSet::from_sources(vec![(
        PathBuf::from("read-one-field.rhai"),
        "const RULE = #{ name: \"read-one-field\" };\nfn evaluate(c) { c.status }\n".into(),
    )])
    .expect("baseline compiles");
    let (base_rate, _) = rate(&baseline, &cases, &env);
    let (rate_examples, changes) = rate(&examples, &cases, &env);
    println!("rule evaluation, one core, {CASES} generated cases, best of {ROUNDS}:");
    println!(
        "  baseline (reads c.status): {:>10.0} case-rule evaluations/s",
        base_rate
    );
    println!(
        "  example rules ({} rules):   {:>10.0} case-rule evaluations/s ({changes} changes requested)",
        examples.rules.len(),
        rate_examples
    );
    println!(
        "  ratio example/baseline:    {:>10.2}",
        rate_examples / base_rate
    );
    println!("  per rule (each alone):");
    for rule in &examples.rules {
        let text = std::fs::read_to_string(&rule.file).expect("rule file");
        let one = RuleSet::from_sources(vec![(rule.file.clone(), text)]).expect("compiles");
        let (r, _) = rate(&one, &cases, &env);
        println!("    {:<22} {:>10.0} evaluations/s", rule.name, r);
    }
}

// The same allocator as the binary, so the numbers are the product's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
