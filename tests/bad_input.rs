//! The bad-input catalogue: each entry is one piece of bad input (config, rule, API
//! answer, command line) and the clear error it must produce, through the real binary.
//! README's "Reliability" section lists these entries; keep the two in step.

use std::process::Output;

use casewarden::sim::RawAnswer;
use serde_json::json;

use crate::common::*;

const OK_RULE: &str = "const RULE = #{ name: \"ok\" };\nfn evaluate(c) { add_tag(\"x\"); }\n";

/// (what, config text after the [stellar] url line, expected exit code, expected text)
const CONFIGS: [(&str, &str, i32, &str); 7] = [
    (
        "TOML syntax error",
        "api_key_env = \"K\"\npage_size = = 3\n",
        2,
        "line 4",
    ),
    (
        "unknown key",
        "api_key_env = \"K\"\npage_sise = 3\n",
        2,
        "unknown field `page_sise`",
    ),
    (
        "wrong type",
        "api_key_env = \"K\"\npage_size = \"ten\"\n",
        2,
        "invalid type",
    ),
    (
        "missing key file",
        "api_key_file = \"no-such-key\"\n",
        2,
        "no-such-key",
    ),
    (
        "world-readable key file (a warning; then the server cannot be reached: exit 3)",
        "api_key_file = \"open_key\"\nmax_attempts = 1\n",
        3,
        "readable by every user",
    ),
    (
        "bad cron",
        "api_key_env = \"K\"\n[daemon]\nschedule = \"61 * * * * *\"\n",
        2,
        "daemon.schedule",
    ),
    (
        "page size over the API's 500",
        "api_key_env = \"K\"\npage_size = 501\n",
        2,
        "stellar.page_size",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn bad_configs() {
    for (what, tail, code, needle) in CONFIGS {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        std::fs::write(dir.path().join("rules/ok.rhai"), OK_RULE).unwrap();
        let open_key = dir.path().join("open_key");
        std::fs::write(&open_key, "k").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!("[stellar]\nurl = \"http://127.0.0.1:1\"\n{tail}"),
        )
        .unwrap();
        let out = run_bin(
            &["--config", config.to_str().unwrap(), "check"],
            &[("K", "key")],
        )
        .await;
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(code), "{what}: {text}");
        assert!(
            text.contains(needle),
            "{what}: expected {needle:?} in {text}"
        );
        assert!(!text.contains("panicked"), "{what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_config_and_bad_url() {
    let out = run_bin(&["--config", "/nonexistent/casewarden.toml", "check"], &[]).await;
    assert_fails_with(
        &out,
        2,
        "cannot read config file /nonexistent/casewarden.toml",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[stellar]\nurl = \"stellar.example.com\"\napi_key_env = \"K\"\n",
    )
    .unwrap();
    let out = run_bin(
        &["--config", config.to_str().unwrap(), "once"],
        &[("K", "key")],
    )
    .await;
    assert_fails_with(&out, 2, "stellar.url: not a URL");
}

/// (what, rule file text, expected text) — each through `casewarden check`.
const RULES: [(&str, &str, &str); 6] = [
    (
        "syntax error",
        "const RULE = #{ name: \"a\" };\nfn evaluate(c) { let = 1; }\n",
        "bad.rhai:2:",
    ),
    (
        "missing evaluate",
        "const RULE = #{ name: \"a\" };\nfn judge(c) { }\n",
        "no `fn evaluate(c)`",
    ),
    ("missing RULE", "fn evaluate(c) { }\n", "no `const RULE"),
    (
        "RULE without name",
        "const RULE = #{ description: \"x\" };\nfn evaluate(c) { }\n",
        "RULE.name is missing",
    ),
    (
        "unknown RULE key",
        "const RULE = #{ name: \"a\", shedule: \"x\" };\nfn evaluate(c) { }\n",
        "unknown RULE key \"shedule\"",
    ),
    (
        "eval is disabled",
        "const RULE = #{ name: \"a\" };\nfn evaluate(c) { eval(\"1\") }\n",
        "bad.rhai:2:",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn bad_rules() {
    for (what, text, needle) in RULES {
        let ws = Workspace::new(
            "https://stellar.example.com",
            "legacy",
            "",
            Some(&[("bad.rhai", text)]),
        );
        let out = ws.run(&["check"]).await;
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(
            stderr(&out).contains(needle),
            "{what}: expected {needle:?} in {}",
            stderr(&out)
        );
    }
    let ws = Workspace::new(
        "https://stellar.example.com",
        "legacy",
        "",
        Some(&[("a.rhai", OK_RULE), ("b.rhai", OK_RULE)]),
    );
    let out = ws.run(&["check"]).await;
    assert!(
        stderr(&out).contains("duplicate rule name \"ok\""),
        "{}",
        stderr(&out)
    );
}

/// (what, answer to the listing, expected exit code, expected text in stdout+stderr)
fn answers() -> Vec<(&'static str, RawAnswer, i32, &'static str)> {
    let raw = |status: u16, ct: &str, body: Vec<u8>| RawAnswer {
        status,
        content_type: ct.into(),
        body,
        drip_ms: 0,
    };
    let case = |id: &str| json!({"_id": id, "status": "New", "priority": "Low", "tags": [], "created_at": 1, "history": []});
    let big = json!({"data": {"cases": [{"_id": "big", "status": "New", "tags": [], "description": "x".repeat(10 << 20)}], "total": 1}});
    vec![
        (
            "non-JSON body",
            raw(200, "text/plain", b"hello".to_vec()),
            1,
            "not JSON",
        ),
        (
            "HTML error page",
            raw(
                502,
                "text/html",
                b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
            ),
            1,
            "HTTP 502",
        ),
        (
            "JSON with wrong types",
            raw(
                200,
                "application/json",
                br#"{"data": {"cases": "none", "total": "many"}}"#.to_vec(),
            ),
            1,
            "data.cases should be a list",
        ),
        (
            "missing data",
            raw(200, "application/json", br#"{"cases": []}"#.to_vec()),
            1,
            "no `data` field",
        ),
        (
            "total smaller than the cases sent",
            raw(
                200,
                "application/json",
                json!({"data": {"cases": [case("a"), case("b"), case("c")], "total": 1}})
                    .to_string()
                    .into_bytes(),
            ),
            0,
            "3 case(s) seen",
        ),
        (
            "a case without _id",
            raw(
                200,
                "application/json",
                json!({"data": {"cases": [case("a"), {"status": "New"}], "total": 2}})
                    .to_string()
                    .into_bytes(),
            ),
            0,
            "1 skipped: not parseable",
        ),
        (
            "a 10 MB body",
            raw(200, "application/json", big.to_string().into_bytes()),
            0,
            "1 case(s) seen",
        ),
        (
            "slow-loris body",
            RawAnswer {
                status: 200,
                content_type: "application/json".into(),
                body: vec![b' '; 64 * 1024],
                drip_ms: 200,
            },
            1,
            "timed out",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_api_answers() {
    for (what, answer, code, needle) in answers() {
        let sim = start(sim_options(0)).await;
        sim.state().faults.list_answer = Some(answer);
        let ws = Workspace::new(
            &sim.url,
            "legacy",
            "comment_changes = false",
            Some(&[("ok.rhai", OK_RULE)]),
        );
        ws.edit_config(
            "timeout_secs = 5\nmax_attempts = 3",
            "timeout_secs = 2\nmax_attempts = 1",
        );
        let out = ws.run(&["once", "--dry-run"]).await;
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(code), "{what}: {text}");
        assert!(
            text.contains(needle),
            "{what}: expected {needle:?} in {text}"
        );
        assert!(!text.contains("panicked"), "{what}: {text}");
        assert!(
            text.len() < 20_000,
            "{what}: the error repeats the whole body"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_command_lines() {
    let out = run_bin(&["once", "--dry-rn"], &[]).await;
    assert_fails_with(&out, 2, "unexpected argument '--dry-rn'");
    let out = run_bin(&["audit", "--format", "xml", "--db", "x.db"], &[]).await;
    assert_fails_with(&out, 2, "invalid value 'xml'");

    let dir = tempfile::tempdir().unwrap();
    let unreadable = dir.path().join("cases.json");
    std::fs::create_dir(&unreadable).unwrap();
    let rule = repo().join("rules/10-escalate-aged-new.rhai");
    let out = run_bin(
        &[
            "test-rule",
            rule.to_str().unwrap(),
            unreadable.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_fails_with(&out, 2, "cannot read case file");

    let ws = Workspace::new("https://stellar.example.com", "legacy", "", Some(&[]));
    let out = ws.run(&["check"]).await;
    assert_fails_with(&out, 2, "no *.rhai rule files");

    let ws = Workspace::new("https://stellar.example.com", "legacy", "", None);
    let out = ws.run(&["once", "--rule", "no-such-rule"]).await;
    assert_fails_with(&out, 2, "--rule \"no-such-rule\": no such rule");

    let out = run_bin(&["audit", "--db", "/nonexistent/audit.db"], &[]).await;
    assert_fails_with(&out, 2, "does not exist");
}

/// `casewarden test-rule ... | head`: the reader going away is not an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_pipe_is_not_an_error() {
    for format in ["table", "json"] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"))
            .args(["test-rule", "--format", format])
            .arg(repo().join("rules/10-escalate-aged-new.rhai"))
            .arg(repo().join("tests/fixtures/cases.json"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{format}: {}", stderr(&out));
        assert!(!stderr(&out).contains("Broken pipe"), "{}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_without_scheme_says_what_to_write() {
    let ws = Workspace::new("stellar.example.com", "legacy", "", None);
    let out = ws.run(&["check", "--offline"]).await;
    assert_fails_with(
        &out,
        2,
        "has no scheme: write it as https://stellar.example.com",
    );
}

/// A key written into a URL is refused (exit 2), and the error never repeats it: the
/// server's, an instance's (even one that does not parse) and a webhook's.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_with_credentials_is_refused_without_showing_them() {
    let secret = "Zq9SECRETkey";
    for url in [
        format!("https://demo%40example.com:{secret}@stellar.example.com"),
        format!("https://{secret}@stellar.example.com"),
        format!("https://user:{secret}@stellar example.com"),
    ] {
        let ws = Workspace::new(&url, "legacy", "", None);
        let out = ws.run(&["check", "--offline"]).await;
        assert_eq!(out.status.code(), Some(2), "{url}");
        let err = stderr(&out);
        assert!(
            !err.contains(secret) && !stdout(&out).contains(secret),
            "{err}"
        );
        assert!(err.contains("stellar.url") && err.contains("***@"), "{err}");
    }
    let ws = Workspace::new("https://stellar.example.com", "legacy", "", None);
    let config = std::fs::read_to_string(ws.config()).unwrap();
    std::fs::write(
        ws.config(),
        format!("{config}\n[[notify]]\nurl = \"https://hook:{secret}@hooks.example.com/x\"\n"),
    )
    .unwrap();
    let out = ws.run(&["check", "--offline"]).await;
    assert_fails_with(&out, 2, "notify[0].url");
    assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
}

/// Messages that say what to do: a token call answered 404 names the URL it called and the
/// base-URL mistake; https against a plain-HTTP server says so; `rules_dir = "."` names
/// files without `./.`.
#[tokio::test(flavor = "multi_thread")]
async fn connection_mistakes_are_explained() {
    let sim = start(sim_options(1)).await;
    let with_path = Workspace::new(&format!("{}/stellar", sim.url), "legacy", "", None);
    let out = with_path.run(&["check"]).await;
    assert_fails_with(
        &out,
        3,
        &format!(
            "POST {}/stellar/connect/api/v1/access_token: HTTP 404",
            sim.url
        ),
    );
    assert_fails_with(&out, 3, "without a path");
    let https = sim.url.replace("http://", "https://");
    let tls = Workspace::new(&https, "legacy", "", None);
    let out = tls.run(&["check"]).await;
    assert_fails_with(&out, 3, "does not speak TLS");
    // Nothing listens: the error counts every attempt it made (max_attempts = 3).
    let down = Workspace::new(
        &format!("http://127.0.0.1:{}", free_port()),
        "legacy",
        "",
        None,
    );
    let out = down.run(&["once"]).await;
    assert_fails_with(&out, 3, "cannot connect");
    assert_fails_with(&out, 3, "(gave up after 3 attempt(s))");
    let here = Workspace::new(&sim.url, "legacy", "", None);
    std::fs::write(
        here.dir.path().join("bad.rhai"),
        "const RULE = #{ name: \"b\" };\nfn evaluate(c) { add_tagg(\"x\"); }\n",
    )
    .unwrap();
    here.edit_config("rules_dir = \"rules\"", "rules_dir = \".\"");
    let out = here.run(&["check", "--offline"]).await;
    let err = stderr(&out);
    let expected = format!("{}:2:18", here.dir.path().join("bad.rhai").display());
    assert!(err.contains(&expected) && !err.contains("/./"), "{err}");
}

/// The exit code `casewarden CMD --help` states for `code`, with its meaning.
async fn stated(cmd: &[&str], code: i32) -> Vec<String> {
    let mut args = cmd.to_vec();
    args.push("--help");
    let help = stdout(&run_bin(&args, &[]).await);
    let (_, status) = help
        .split_once("Exit status:\n")
        .unwrap_or_else(|| panic!("no exit status in `{cmd:?} --help`:\n{help}"));
    status
        .lines()
        .filter_map(|l| l.trim().split_once("  "))
        .filter(|(c, _)| c.parse() == Ok(code))
        .map(|(_, what)| what.trim().to_string())
        .collect()
}

/// What each command's `--help` says of its exit codes is what it does: each case runs
/// the command into a state and finds the code it exits with stated, with that meaning;
/// every man page has an EXIT STATUS.
#[tokio::test(flavor = "multi_thread")]
async fn help_texts_state_the_exit_codes_the_commands_give() {
    let sim = start(sim_options(30)).await;
    let ws = Workspace::new(&sim.url, "legacy", "max_change_fraction = 1.0", None);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let down = Workspace::new(&dead, "legacy", "", None);
    let heads = ws.dir.path().join("heads");
    let pending = ws.run(&["once", "--dry-run", "--detailed-exitcode"]).await;
    assert_exit(&ws.run(&["once"]).await, 0);
    std::fs::write(&heads, format!("pass x head {}\n", "ab".repeat(32))).unwrap();
    let verify = ws
        .run(&["audit", "verify", "--heads", heads.to_str().unwrap()])
        .await;
    let cases: Vec<(&[&str], Output, &str)> = vec![
        (&["once"], down.run(&["once"]).await, "server"),
        (&["once"], pending, "pending"),
        (&["check"], down.run(&["check"]).await, "server"),
        (&["audit", "verify"], verify, "head missing"),
        (&["status"], ws.run(&["status"]).await, "printed"),
        (
            &["diff"],
            ws.run(&["diff", "--rules-dir", "nowhere"]).await,
            "error",
        ),
    ];
    for (cmd, out, meaning) in cases {
        let code = out.status.code().unwrap();
        let said = stated(cmd, code).await;
        assert!(
            said.iter().any(|w| w.contains(meaning)),
            "`{cmd:?}` exited {code} ({}), its help says of {code}: {said:?}",
            stderr(&out)
        );
    }
    let man = stdout(&run_bin(&["man"], &[]).await);
    let pages = man.matches("\n.TH ").count() + usize::from(man.starts_with(".TH "));
    assert!(pages > 15, "{pages}");
    assert_eq!(man.matches(".SH \"EXIT STATUS\"").count(), pages);
}
