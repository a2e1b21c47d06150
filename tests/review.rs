//! The audit review: `casewarden report` opened in headless Chromium and as JSON, and the
//! daemon's live view, each checked against `casewarden audit --format json` for a log
//! with applied and failed changes, a guard halt, rule errors and a breaker trip.

use std::collections::HashSet;

use serde_json::Value;

use crate::common::*;

/// Debian's `chromium` (`.ci/run` installs it); `CHROMIUM` names another.
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

async fn headless(args: &[&str]) -> std::process::Output {
    let out = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
        ])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); .ci/run installs Debian's chromium",
                chromium()
            )
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The number in the first element after `at` that carries `attr` (`data-count="applied"`).
fn number_after(html: &str, at: &str, attr: &str) -> i64 {
    let start = html
        .find(at)
        .unwrap_or_else(|| panic!("{at} is not on the page"));
    let from = start
        + html[start..]
            .find(attr)
            .unwrap_or_else(|| panic!("{attr} after {at}"));
    let text = &html[from + html[from..].find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].trim().parse().unwrap()
}

/// What the page says of each rule and in total, as (key, number) pairs.
fn page_numbers(html: &str, rules: &[&str]) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for key in COUNTS {
        out.push((
            format!("total {key}"),
            number_after(
                html,
                "<section><h2>Totals",
                &format!("data-total=\"{key}\""),
            ),
        ));
        for rule in rules {
            out.push((
                format!("{rule} {key}"),
                number_after(
                    html,
                    &format!("<tr data-rule=\"{rule}\">"),
                    &format!("data-count=\"{key}\""),
                ),
            ));
        }
    }
    out
}

/// The same numbers counted from the rows `casewarden audit --format json` prints.
fn counted(rows: &[Value], rules: &[&str]) -> Vec<(String, i64)> {
    let of = |rule: Option<&str>, key: &str| -> i64 {
        let mine = rows.iter().filter(|r| rule.is_none_or(|x| r["rule"] == x));
        let change = |r: &&Value| r["field"] != "rule";
        match key {
            "applied" | "failed" => {
                mine.filter(change).filter(|r| r["outcome"] == key).count() as i64
            }
            "guard_halts" => {
                let passes: HashSet<(String, String)> = mine
                    .filter(|r| r["field"] == "rule" && r["new"] == "halted")
                    .map(|r| (r["rule"].to_string(), r["run_id"].to_string()))
                    .collect();
                passes.len() as i64
            }
            "breaker_trips" => mine
                .filter(|r| r["field"] == "rule" && r["new"] == "disabled")
                .count() as i64,
            _ => mine
                .filter(|r| r["field"] == "rule" && r["new"] == "errors")
                .map(|r| r["old"].as_str().unwrap().parse::<i64>().unwrap())
                .sum(),
        }
    };
    let mut out = Vec::new();
    for key in COUNTS {
        out.push((format!("total {key}"), of(None, key)));
        for rule in rules {
            out.push((format!("{rule} {key}"), of(Some(rule), key)));
        }
    }
    out
}

const RULES: [&str; 3] = ["tagger", "greedy", "thrower"];

/// The numbers compared per rule and in total.
const COUNTS: [&str; 5] = [
    "applied",
    "failed",
    "guard_halts",
    "breaker_trips",
    "rule_errors",
];

/// A rule that tags every case, one the guard halts, one that fails on every case.
const TROUBLE: [(&str, &str); 3] = [
    (
        "10-tagger.rhai",
        "const RULE = #{ name: \"tagger\", max_change_fraction: 1.0 };\nfn evaluate(c) { add_tag(\"seen\", \"looked at\"); }\n",
    ),
    (
        "20-greedy.rhai",
        "const RULE = #{ name: \"greedy\" };\nfn evaluate(c) { add_tag(\"greedy\", \"everything\"); }\n",
    ),
    (
        "30-thrower.rhai",
        "const RULE = #{ name: \"thrower\" };\nfn evaluate(c) { throw \"always\"; }\n",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_report_and_the_live_view_show_what_the_audit_log_holds() {
    let sim = start(sim_options(40)).await;
    let failing = sim.state().cases[0]["_id"].as_str().unwrap().to_string();
    sim.state().faults.fail_updates_for.insert(failing.clone());
    let port = free_port();
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!(
            "{EVERY_SECOND}\nbreaker_passes = 2\nguard_min_cases = 10\ncomment_changes = false\nlisten = \"127.0.0.1:{port}\""
        ),
        Some(&TROUBLE),
    );
    // A 500 may come after the server applied: the failing case's update is sent again
    // only once settle_after_secs have passed.
    ws.edit_config(
        "timeout_secs = 5",
        "timeout_secs = 1\nsettle_after_secs = 2",
    );
    let d = Daemon::start(&ws, &[]);
    d.wait_log("CIRCUIT BREAKER", 30).await;
    // From here on the log stops growing: the failing case heals, the greedy rule is
    // switched off, the thrower stays disabled and the tagger has tagged everything.
    sim.state().faults.fail_updates_for.clear();
    std::fs::write(
        ws.dir.path().join("rules/20-greedy.rhai"),
        "const RULE = #{ name: \"greedy\", enabled: false };\nfn evaluate(c) { add_tag(\"greedy\", \"everything\"); }\n",
    )
    .unwrap();
    d.wait_log("rules reloaded", 15).await;
    let seen = |n: usize| {
        sim.state()
            .cases
            .iter()
            .filter(|c| c["tags"].as_array().unwrap().iter().any(|t| t == "seen"))
            .count()
            == n
    };
    assert!(until(15, || seen(40)).await, "{}", d.log());
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;

    let audit = ws.run(&["audit", "--format", "json"]).await;
    assert_exit(&audit, 0);
    let rows: Vec<Value> = stdout(&audit)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = counted(&rows, &RULES);
    let want = |key: &str| expected.iter().find(|(k, _)| k == key).unwrap().1;
    assert!(
        want("tagger applied") >= 40 && want("tagger failed") >= 1,
        "{expected:?}"
    );
    assert!(want("greedy guard_halts") >= 1, "{expected:?}");
    assert_eq!(want("thrower breaker_trips"), 1, "{expected:?}");
    assert!(
        want("thrower rule_errors") >= 80,
        "40 cases, 2 passes: {expected:?}"
    );

    // The live view and its API, from the running daemon.
    let base = format!("http://127.0.0.1:{port}");
    let live = reqwest::get(format!("{base}/?since=1h")).await.unwrap();
    assert_eq!(live.status(), 200);
    let live = live.text().await.unwrap();
    assert_eq!(page_numbers(&live, &RULES), expected, "the live view");
    assert!(live.contains("data-integrity=\"intact\""));
    let api: Value = reqwest::get(format!(
        "{base}/api/audit?rule=tagger&outcome=failed&limit=1000"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        api["rows"].as_array().unwrap().len() as i64,
        want("tagger failed")
    );
    assert!(
        api["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["case_id"] == failing.as_str())
    );
    let page: Value = reqwest::get(format!("{base}/api/passes?limit=2"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["passes"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_offset"], 2);
    let bad = reqwest::get(format!("{base}/api/audit?since=yesterday"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(20).await, 0);

    // The report file, as Chromium renders it (scripts run, nothing fetched).
    let html = ws.dir.path().join("report.html");
    let out = ws
        .run(&["report", "--since", "1h", "--out", html.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);
    let text = std::fs::read_to_string(&html).unwrap();
    for outside in ["src=", "href=", "@import", "url("] {
        assert!(
            !text.contains(outside),
            "the page loads nothing ({outside})"
        );
    }
    let url = format!("file://{}", html.display());
    let dom = String::from_utf8(headless(&["--dump-dom", &url]).await.stdout).unwrap();
    assert_eq!(
        page_numbers(&dom, &RULES),
        expected,
        "the report in Chromium"
    );
    let shot = ws.dir.path().join("report.png");
    headless(&[
        "--window-size=1280,2400",
        &format!("--screenshot={}", shot.display()),
        &url,
    ])
    .await;
    let size = std::fs::metadata(&shot).unwrap().len();
    assert!(
        size > 30_000,
        "a screenshot of a rendered page, not a blank one: {size} bytes"
    );

    // The JSON twin carries the same numbers.
    let json = ws
        .run(&["report", "--since", "1h", "--format", "json"])
        .await;
    assert_exit(&json, 0);
    let report: Value = serde_json::from_str(&stdout(&json)).unwrap();
    for rule in RULES {
        let r = report["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .unwrap();
        for key in [
            "applied",
            "failed",
            "guard_halts",
            "breaker_trips",
            "rule_errors",
        ] {
            assert_eq!(
                r[key].as_i64().unwrap(),
                want(&format!("{rule} {key}")),
                "{rule} {key}"
            );
        }
    }
    assert_eq!(report["integrity"]["intact"], true);
    assert!(
        report["timelines"][&failing]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["outcome"] == "failed")
    );
}

/// Webhooks for each event, with the right body and a valid signature, Slack's shape for
/// a Slack target, nothing secret in any body, and a slow, failing receiver that never
/// holds a pass up: its attempts are retried and counted in `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn notifications_arrive_signed_and_never_hold_a_pass() {
    let sim = start(sim_options(30)).await;
    let failing = sim.state().cases[0]["_id"].as_str().unwrap().to_string();
    sim.state().faults.fail_updates_for.insert(failing);
    let mut dead = sim_options(1);
    dead.faults.hook_status = Some(500);
    dead.faults.hook_delay_ms = 1_500;
    let receiver_down = start(dead).await;
    let port = free_port();
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!(
            "{EVERY_SECOND}\nbreaker_passes = 2\nguard_min_cases = 10\nmax_changes_per_run = 8\ncomment_changes = false\nlisten = \"127.0.0.1:{port}\""
        ),
        Some(&TROUBLE),
    );
    let secret = "hook-secret-7f3a9";
    std::fs::write(ws.dir.path().join("hook_secret"), format!("{secret}\n")).unwrap();
    let mut config = std::fs::read_to_string(ws.config()).unwrap();
    config.push_str(&format!(
        "\n[[notify]]\nurl = \"{0}/hooks/ops\"\nsecret_file = \"hook_secret\"\ndigest_schedule = \"*/2 * * * * *\"\n\n\
         [[notify]]\nurl = \"{0}/hooks/slack\"\nkind = \"slack\"\nevents = [\"guard_halt\"]\n\n\
         [[notify]]\nurl = \"{1}/hooks/down\"\nretry_base_ms = 50\n",
        sim.url, receiver_down.url
    ));
    std::fs::write(ws.config(), config).unwrap();
    let check = ws.run(&["check", "--offline"]).await;
    assert_exit(&check, 0);

    let d = Daemon::start(&ws, &[]);
    d.wait_log("CIRCUIT BREAKER", 30).await;
    let wanted = [
        "daemon_start",
        "guard_halt",
        "budget_exhausted",
        "pass_failed",
        "breaker_trip",
        "daily_digest",
    ];
    let arrived = |event: &str| {
        sim.state()
            .webhooks
            .iter()
            .any(|h| h.name == "ops" && h.event.as_deref() == Some(event))
    };
    for event in wanted {
        assert!(
            until(10, || arrived(event)).await,
            "no {event} webhook:\n{}",
            d.log()
        );
    }
    assert!(
        until(10, || receiver_down.state().webhooks.len() >= 3).await,
        "the failing receiver is tried again"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("casewarden_notifications_total{event=\"guard_halt\",outcome=\"delivered\"}")
            && metrics.contains("outcome=\"attempt_failed\""),
        "{metrics}"
    );
    // The audit log stops taking rows (as a full disk would): the next pass cannot record
    // its intents and says so.
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(ws.audit_db()),
    )
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER full BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(
        until(10, || arrived("audit_failure")).await,
        "no audit_failure webhook:\n{}",
        d.log()
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(20).await, 0);
    assert!(
        arrived("daemon_stop"),
        "the stop notice goes out before the daemon exits"
    );

    let hooks = sim.state().webhooks.clone();
    let mut secrets = vec![KEY.to_string(), secret.to_string()];
    secrets.extend(sim.state().issued_tokens.clone());
    for h in &hooks {
        let text = String::from_utf8(h.body.clone()).unwrap();
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "a secret in a webhook body: {text}"
            );
        }
        let body: Value = serde_json::from_str(&text).unwrap();
        match h.name.as_str() {
            "ops" => {
                assert_eq!(body["event"].as_str(), h.event.as_deref(), "{text}");
                let expected = casewarden::notify::signature(
                    &casewarden::secret::Secret::new(secret),
                    h.timestamp.as_deref().unwrap(),
                    &h.body,
                );
                assert_eq!(h.signature.as_deref(), Some(expected.as_str()));
            }
            "slack" => {
                assert_eq!(h.event.as_deref(), Some("guard_halt"));
                assert!(h.signature.is_none());
                let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["text"], "{text}");
                assert!(
                    body["text"]
                        .as_str()
                        .unwrap()
                        .contains("rule greedy was halted")
                );
            }
            other => panic!("unexpected hook {other}"),
        }
    }
    let of = |event: &str| {
        hooks
            .iter()
            .filter(|h| h.name == "ops" && h.event.as_deref() == Some(event))
            .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(of("guard_halt")[0]["details"]["rule"], "greedy");
    assert_eq!(of("breaker_trip")[0]["details"]["rule"], "thrower");
    assert_eq!(of("pass_failed")[0]["details"]["status"], "failed-changes");
    // The first digest may go out before the first pass: a later one has the rules.
    let digests = of("daily_digest");
    assert!(
        digests.iter().any(|d| d["details"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule"] == "tagger")),
        "{digests:?}"
    );
    assert!(digests.iter().all(|d| d["details"]["link"]
        == format!("http://127.0.0.1:{port}/?since=24h").as_str()));

    // Every pass ran while a receiver answered 500 after 1.5 s: none waited for it.
    let store = casewarden::audit::AuditStore::open(&ws.audit_db())
        .await
        .unwrap();
    for p in store.passes().await.unwrap() {
        let took = |t: &Option<String>| {
            chrono::DateTime::parse_from_rfc3339(t.as_deref().unwrap()).unwrap()
        };
        let secs = (took(&p.finished_at) - took(&Some(p.started_at.clone()))).num_milliseconds();
        assert!(secs < 1_000, "pass {} took {secs} ms", p.id);
    }
}

/// The live view on a non-loopback address: refused without `ui_token_file`; with it, only
/// for the bearer token, which no page carries; the probes stay open either way.
#[tokio::test(flavor = "multi_thread")]
async fn the_live_view_needs_its_token_off_loopback() {
    let sim = start(sim_options(5)).await;
    let token = "ui-token-3b9f1c2d8e7a";
    for with_token in [false, true] {
        let port = free_port();
        let ws = Workspace::new(
            &sim.url,
            "legacy",
            &format!("{EVERY_SECOND}\nlisten = \"0.0.0.0:{port}\""),
            Some(&[(
                "a.rhai",
                "const RULE = #{ name: \"a\" };\nfn evaluate(c) { }\n",
            )]),
        );
        if with_token {
            std::fs::write(ws.dir.path().join("ui_token"), format!("{token}\n")).unwrap();
            ws.edit_config("[daemon]\n", "[daemon]\nui_token_file = \"ui_token\"\n");
        }
        let d = Daemon::start(&ws, &[]);
        d.wait_log("serving /healthz", 15).await;
        let http = reqwest::Client::new();
        let get = |path: &str, bearer: Option<&str>| {
            let mut r = http.get(format!("http://127.0.0.1:{port}{path}"));
            if let Some(b) = bearer {
                r = r.bearer_auth(b);
            }
            r.send()
        };
        assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
        assert_eq!(get("/metrics", None).await.unwrap().status(), 200);
        if with_token {
            assert_eq!(get("/", None).await.unwrap().status(), 401);
            assert_eq!(
                get("/api/audit", Some("wrong-token-000000"))
                    .await
                    .unwrap()
                    .status(),
                401
            );
            let page = get("/", Some(token)).await.unwrap();
            assert_eq!(page.status(), 200);
            assert!(!page.text().await.unwrap().contains(token));
            assert_eq!(get("/api/passes", Some(token)).await.unwrap().status(), 200);
        } else {
            let refused = get("/", None).await.unwrap();
            assert_eq!(refused.status(), 403);
            assert!(
                refused
                    .text()
                    .await
                    .unwrap()
                    .contains("daemon.ui_token_file")
            );
            assert!(
                d.log().contains("the live view is not served"),
                "{}",
                d.log()
            );
        }
        assert!(!d.log().contains(token));
        d.signal(libc::SIGTERM);
        assert_eq!(d.exit_code(20).await, 0);
    }
}

/// Case text that would end or derail the report's script (`<!--<script>`, a closing tag,
/// U+2028, a very long name) reaches the page as data: in Chromium the script still runs,
/// the case's timeline shows the text as text, and nothing of it executes.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_case_text_stays_data_in_the_report_in_a_browser() {
    let sim = start(sim_options(3)).await;
    let payload = format!(
        "<!--<script> x </script><script>document.body.dataset.pwned='1'</script> \u{2028}\u{2029} {}",
        "long ".repeat(600)
    );
    let mut hostile = sim.state().cases[0].clone();
    hostile["_id"] = serde_json::json!("hostile");
    hostile["ticket_id"] = serde_json::json!(777);
    hostile["name"] = serde_json::json!(payload);
    hostile["modified_at"] = serde_json::json!(casewarden::now_ms());
    sim.state().put_case(hostile);
    let rule = "const RULE = #{ name: \"describe\" };\nfn evaluate(c) {\n    if c.name.contains(\"<!--\") { set_description(c.name, c.name); }\n}\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "comment_changes = false",
        Some(&[("describe.rhai", rule)]),
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    let html = ws.dir.path().join("report.html");
    let out = ws
        .run(&["report", "--since", "1h", "--out", html.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(
        !text.contains("<!--<script>"),
        "the raw text is not in the page source"
    );
    let url = format!("file://{}#case=hostile", html.display());
    let dom = String::from_utf8(headless(&["--dump-dom", &url]).await.stdout).unwrap();
    assert!(
        dom.contains("<h3>Case <code>hostile</code></h3>"),
        "the script ran and parsed its data: {}",
        &dom[dom.len().saturating_sub(3000)..]
    );
    assert!(dom.contains(
        "&lt;!--&lt;script&gt; x &lt;/script&gt;&lt;script&gt;document.body.dataset.pwned"
    ));
    assert!(dom.contains(&"long ".repeat(600)), "the long text whole");
    assert!(!dom.contains("data-pwned"), "nothing of the case text ran");
    assert!(dom.contains("data-total=\"applied\">1<"), "the totals");
    assert!(dom.contains("<svg"), "the charts");
}

/// Cron's `once` alerts too: a guard halt reaches the webhook naming the rule and the
/// server, a second `once` within the realert window sends none, and once the rule no
/// longer trips the guard a `resolved` follows, once.
#[tokio::test(flavor = "multi_thread")]
async fn once_alerts_a_guard_halt_once_per_window_and_resolves_it() {
    let sim = start(sim_options(30)).await;
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "guard_min_cases = 10\ncomment_changes = false",
        Some(&TROUBLE[1..2]),
    );
    let mut config = std::fs::read_to_string(ws.config()).unwrap();
    config.push_str(&format!(
        "\n[[notify]]\nurl = \"{}/hooks/ops\"\nretry_base_ms = 50\n",
        sim.url
    ));
    std::fs::write(ws.config(), config).unwrap();
    let hooks = |event: &str| -> Vec<Value> {
        sim.state()
            .webhooks
            .iter()
            .filter(|h| h.event.as_deref() == Some(event))
            .map(|h| serde_json::from_slice(&h.body).unwrap())
            .collect()
    };

    let first = ws.run(&["once"]).await;
    assert_exit(&first, 1);
    // `once` waits for the delivery before it exits.
    let halts = hooks("guard_halt");
    assert_eq!(halts.len(), 1, "{}", stderr(&first));
    let host = sim.url.trim_start_matches("http://");
    let text = halts[0]["text"].as_str().unwrap();
    assert!(
        text.contains("rule greedy") && text.contains(host) && text.contains("default"),
        "{text}"
    );
    assert_eq!(halts[0]["details"]["rule"], "greedy");
    assert_eq!(halts[0]["details"]["instance"], "default");
    assert_eq!(halts[0]["details"]["server"], host);
    assert!(halts[0]["details"]["pass"].is_string());
    assert!(
        stderr(&first).contains("notifications: 1 delivered"),
        "{}",
        stderr(&first)
    );

    assert_exit(&ws.run(&["once"]).await, 1);
    assert_eq!(hooks("guard_halt").len(), 1, "not again within the hour");
    assert!(hooks("resolved").is_empty());

    // The rule is made precise: the next pass clears the alert.
    std::fs::write(
        ws.dir.path().join("rules/20-greedy.rhai"),
        "const RULE = #{ name: \"greedy\" };\nfn evaluate(c) { if c.ticket_id == 1 { add_tag(\"greedy\", \"one\"); } }\n",
    )
    .unwrap();
    assert_exit(&ws.run(&["once"]).await, 0);
    assert_exit(&ws.run(&["once"]).await, 0);
    let resolved = hooks("resolved");
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0]["details"]["resolved"], "guard_halt");
    assert_eq!(resolved[0]["details"]["rule"], "greedy");
}
