//! The Cases API client against the simulator: paging, tokens, retries, updates, TLS.

use std::collections::HashSet;
use std::time::Duration;

use casewarden::config::ApiFlavor;
use casewarden::sim::Simulator;
use casewarden::stellar::{ApiError, Case, Client};
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn paging_returns_every_case_once() {
    let sim = start(sim_options(1234)).await;
    let mut s = settings(&sim);
    s.page_size = 500;
    let client = Client::new(s).unwrap();
    let cases = list_all(&client, vec![]).await.unwrap();
    assert_eq!(cases.len(), 1234);
    let ids: HashSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 1234);
    let pages: Vec<String> = sim
        .state()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/cases"))
        .map(|r| r.query.clone())
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages.iter().all(|q| q.contains("limit=500")));
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_are_sent_and_applied() {
    let sim = start(sim_options(300)).await;
    let client = client(&sim);
    let filters = vec![
        ("status".to_string(), "New,Escalated".to_string()),
        ("NOT~tags".to_string(), "vip".to_string()),
    ];
    let cases = list_all(&client, filters).await.unwrap();
    assert!(!cases.is_empty());
    assert!(
        cases
            .iter()
            .all(|c| (c.status() == "New" || c.status() == "Escalated") && !c.has_tag("vip"))
    );
    let expected = sim
        .state()
        .cases
        .iter()
        .filter(|c| matches!(c["status"].as_str(), Some("New" | "Escalated")))
        .filter(|c| !c["tags"].as_array().unwrap().iter().any(|t| t == "vip"))
        .count();
    assert_eq!(cases.len(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_renewed_when_they_expire_during_a_listing() {
    // Pages one at a time, 400 ms each: the 4 s token (renewed a quarter early) runs out
    // mid listing, with over a second to spare for a request delayed on a busy machine.
    let mut opts = sim_options(1000);
    opts.token_ttl_secs = 4;
    opts.faults.latency_ms = 400;
    let sim = start(opts).await;
    let client = client(&sim);
    let cases = list_all(&client, vec![]).await.unwrap();
    assert_eq!(cases.len(), 1000);
    let s = sim.state();
    assert!(
        s.issued_tokens.len() >= 2,
        "only {} token(s) issued",
        s.issued_tokens.len()
    );
    assert!(
        s.requests().iter().all(|r| r.status == 200),
        "a request failed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_mid_run_renews_once_and_succeeds() {
    let sim = start(sim_options(250)).await;
    let client = client(&sim);
    let mut pager = client.list_cases(vec![]);
    let first = pager.next_page().await.unwrap().unwrap();
    sim.state().expire_tokens();
    let second = pager.next_page().await.unwrap().unwrap();
    assert_eq!(first.cases.len() + second.cases.len(), 200);
    let s = sim.state();
    assert_eq!(s.issued_tokens.len(), 2);
    assert_eq!(s.requests().iter().filter(|r| r.status == 401).count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_is_a_clear_error() {
    let sim = start(sim_options(5)).await;
    let mut s = settings(&sim);
    s.credentials = casewarden::stellar::credentials(Some(USER), "wrong-key");
    let err = Client::new(s).unwrap().authenticate().await.unwrap_err();
    assert!(matches!(err, ApiError::KeyRejected { .. }));
    assert!(err.to_string().contains("API key was rejected"), "{err}");
    assert!(!err.to_string().contains("wrong-key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_per_user_keys_work() {
    let sim = start(sim_options(5)).await;
    let mut s = settings(&sim);
    s.credentials = casewarden::stellar::credentials(None, KEY);
    let cases = list_all(&Client::new(s).unwrap(), vec![]).await.unwrap();
    assert_eq!(cases.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    let mut opts = sim_options(50);
    opts.faults.throttle_next = 1;
    opts.faults.retry_after_secs = 1;
    let sim = start(opts).await;
    let client = client(&sim);
    let mut pager = client.list_cases(vec![]);
    let page = pager.next_page().await.unwrap().unwrap();
    assert_eq!(page.cases.len(), 50);
    let s = sim.state();
    let requests = s.requests();
    let api: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/cases"))
        .collect();
    assert_eq!(api[0].status, 429);
    let ok = api
        .iter()
        .find(|r| r.status == 200)
        .expect("the retry succeeded");
    assert!(
        ok.at.duration_since(api[0].at) >= Duration::from_millis(950),
        "retried before Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_then_succeed() {
    let sim = start(sim_options(30)).await;
    sim.state().faults.fail_next = 2;
    let cases = list_all(&client(&sim), vec![]).await.unwrap();
    assert_eq!(cases.len(), 30);
    let statuses: Vec<u16> = sim
        .state()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/cases"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_forever_give_a_clear_error_after_bounded_attempts() {
    let sim = start(sim_options(30)).await;
    client(&sim).authenticate().await.unwrap();
    sim.state().faults.fail_next = 1000;
    let err = list_all(&client(&sim), vec![]).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("HTTP 503 after 4 attempt(s)"), "{msg}");
    assert!(msg.contains("GET /connect/api/v1/cases"), "{msg}");
    assert_eq!(
        sim.state()
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/cases"))
            .count(),
        4
    );
}

async fn update_round_trip(flavor: ApiFlavor) {
    let mut opts = sim_options(20);
    opts.flavor = flavor;
    let sim = start(opts).await;
    let mut s = settings(&sim);
    s.flavor = Some(flavor);
    let client = Client::new(s).unwrap();
    let case = list_all(&client, vec![("status".into(), "New".into())])
        .await
        .unwrap()
        .remove(0);
    let target = if case.priority() == "Critical" {
        "Low"
    } else {
        "Critical"
    };
    let body = json!({"priority": target, "tags": {"add": ["x-test"], "delete": []}});
    let updated = client.update_case(&case.id, &body).await.unwrap().unwrap();
    assert_eq!(updated.priority(), target);
    assert!(updated.has_tag("x-test"));
    let s = sim.state();
    let stored = s.case(&case.id).unwrap();
    let key = if flavor == ApiFlavor::V5 {
        "severity"
    } else {
        "priority"
    };
    assert_eq!(stored[key], target);
    let api = s.api_changes(&case.id);
    assert!(api.iter().any(|h| h["field"] == key && h["to"] == target));
    assert!(api.iter().any(|h| h["field"] == "tags"));
    let requests = s.requests();
    let write = requests
        .iter()
        .rev()
        .find(|r| r.method != "GET" && r.path.contains("/cases"))
        .unwrap();
    match flavor {
        ApiFlavor::Legacy => assert_eq!(
            (write.method.as_str(), write.query.as_str()),
            ("POST", format!("id={}", case.id).as_str())
        ),
        ApiFlavor::V5 => assert_eq!(
            (write.method.as_str(), write.path.clone()),
            ("PUT", format!("/connect/api/v1/cases/{}", case.id))
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_updates_post_with_priority() {
    update_round_trip(ApiFlavor::Legacy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_updates_put_with_severity() {
    update_round_trip(ApiFlavor::V5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_values_get_a_400_with_a_message() {
    let sim = start(sim_options(3)).await;
    let client = client(&sim);
    let id = sim.state().cases[0]["_id"].as_str().unwrap().to_string();
    let err = client
        .update_case(&id, &json!({"status": "Done"}))
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(400));
    assert!(err.to_string().contains("invalid status"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn comments_users_and_tenants() {
    let sim = start(sim_options(3)).await;
    let client = client(&sim);
    let id = sim.state().cases[1]["_id"].as_str().unwrap().to_string();
    client.add_comment(&id, "hello from a test").await.unwrap();
    let comments = client.list_comments(&id).await.unwrap();
    assert_eq!(comments[0].text, "hello from a test");
    let users = client.list_users().await.unwrap();
    assert!(
        users
            .iter()
            .any(|u| u.email.as_deref() == Some(USER) && u.id.len() == 32)
    );
    assert_eq!(client.list_tenants().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_case_is_skipped_and_reported() {
    let sim = start(sim_options(10)).await;
    sim.state()
        .put_case(json!({"_id": "broken-1", "status": "New", "tags": "not-a-list"}));
    sim.state()
        .put_case(json!({"status": "New", "name": "no id at all"}));
    let mut pager = client(&sim).list_cases(vec![]);
    let page = pager.next_page().await.unwrap().unwrap();
    assert_eq!(page.cases.len(), 10);
    assert_eq!(page.skipped.len(), 2);
    assert_eq!(page.skipped[0].id.as_deref(), Some("broken-1"));
    assert!(page.skipped[0].reason.contains("tags"));
    assert_eq!(page.skipped[1].id, None);
}

/// Values whose syntax is JSON but that do not parse (a number out of range, a lone
/// surrogate) skip their case, naming the field, instead of reading as something else.
#[tokio::test(flavor = "multi_thread")]
async fn a_case_whose_field_does_not_parse_is_skipped_naming_it() {
    let sim = start(sim_options(0)).await;
    let body = r#"{"data": {"cases": [
        {"_id": "a", "status": "New", "modified_at": 1e400},
        {"_id": "b", "status": "New", "name": "x\ud800y"},
        {"_id": "c", "status": "New", "version": 1e999},
        {"_id": "d", "status": "New", "history": [{"field": "status", "timestamp": 1}]}
    ], "total": 4}}"#;
    sim.state().faults.list_answer = Some(casewarden::sim::RawAnswer {
        status: 200,
        content_type: "application/json".into(),
        body: body.as_bytes().to_vec(),
        drip_ms: 0,
    });
    let mut pager = client(&sim).list_cases(vec![]);
    let page = pager.next_page().await.unwrap().unwrap();
    let ids: Vec<&str> = page.cases.iter().map(|c| c.id.as_str()).collect();
    // `version` is nobody's business but the server's: passed through, even unreadable.
    assert_eq!(ids, ["c", "d"]);
    let reasons: Vec<(Option<&str>, &str)> = page
        .skipped
        .iter()
        .map(|e| (e.id.as_deref(), e.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].1.starts_with("modified_at is not valid JSON"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].1.starts_with("name is not valid JSON"),
        "{reasons:?}"
    );
    assert_eq!(page.cases[1].history().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_sample_case_parses_and_keeps_unknown_fields() {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/seed-page.json")).unwrap();
    let page: Value = serde_json::from_str(&text).unwrap();
    let original = page["data"]["cases"][0].clone();
    let case = Case::from_value(original.clone()).unwrap();
    assert_eq!(case.id, "62fceb4a48be7776c793a02a");
    assert_eq!(case.priority(), "Medium");
    assert_eq!(case.score(), Some(25.0));
    assert_eq!(case.ticket_id(), Some(67535));
    for (k, v) in original.as_object().unwrap() {
        assert_eq!(case.raw().get(k), Some(v), "field {k} did not survive");
    }
    // Served by the simulator and read back through the client, it is unchanged.
    let sim = start(sim_options(0)).await;
    sim.state().put_case(original.clone());
    let back = client(&sim).get_case(&case.id).await.unwrap();
    assert_eq!(back.raw().get("metadata"), original.get("metadata"));
    assert_eq!(back.raw().get("event_ids"), original.get("event_ids"));
}

async fn tls_sim() -> (Simulator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let sim = Simulator::start(sim_options(5), "127.0.0.1:0".parse().unwrap(), Some(&ca))
        .await
        .unwrap();
    (sim, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_self_signed_is_refused_by_default_and_accepted_with_ca_file() {
    let (sim, dir) = tls_sim().await;
    assert!(sim.url.starts_with("https://localhost:"));
    let err = client(&sim).authenticate().await.unwrap_err().to_string();
    assert!(err.contains("ca_file"), "{err}");
    let mut s = settings(&sim);
    s.ca_pem = Some(std::fs::read(dir.path().join("ca.pem")).unwrap());
    let cases = list_all(&Client::new(s).unwrap(), vec![]).await.unwrap();
    assert_eq!(cases.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vendor_sample_script_works_against_simulate() {
    // The vendor's script, copied verbatim from the seed page.
    let script = std::fs::read_to_string(repo().join("tests/fixtures/vendor-sample.py")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let case_id = "1674728869334287aba4486901d24c4189a6fe8eab6efe05";
    let cases = dir.path().join("cases.json");
    std::fs::write(&cases, json!([{"_id": case_id, "ticket_id": 1, "status": "New", "priority": "Low", "tags": [], "created_at": 1, "history": []}]).to_string()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"))
        .args(["simulate", "--listen", &format!("127.0.0.1:{port}"), "--cases-file", cases.to_str().unwrap(),
               "--user", "myuser@stellarcyber.ai",
               "--api-key", "2iRpBAyQYEfv77R2QtATlJN6Nvq6uzftBdzotSy2pjT-IvJTLw9aiHyh7Y2mo12IDSWc-FfHwUyPpmiHQnJrSH"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the host and the scheme change.
    let script = script
        .replace(
            "HOST = \"myserver.stellarcyber.cloud\"",
            &format!("HOST = \"127.0.0.1:{port}\""),
        )
        .replace("urlunparse((\"https\"", "urlunparse((\"http\"");
    let path = dir.path().join("sample.py");
    std::fs::write(&path, script).unwrap();
    let out = tokio::process::Command::new("python3")
        .arg(&path)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("October-event"), "{text}");
    let check = Client::new({
        let mut s = settings(&start(sim_options(0)).await);
        s.url = format!("http://127.0.0.1:{port}");
        s.credentials = casewarden::stellar::credentials(Some("myuser@stellarcyber.ai"), "2iRpBAyQYEfv77R2QtATlJN6Nvq6uzftBdzotSy2pjT-IvJTLw9aiHyh7Y2mo12IDSWc-FfHwUyPpmiHQnJrSH");
        s
    })
    .unwrap();
    let case = check.get_case(case_id).await.unwrap();
    assert!(case.has_tag("October-event"));
    let _ = sim.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_case_pushed_into_the_next_page_by_a_shifting_set_is_yielded_once() {
    let sim = start(sim_options(250)).await;
    let client = client(&sim);
    let sort = vec![
        ("sort".to_string(), "modified_at".to_string()),
        ("order".to_string(), "asc".to_string()),
    ];
    let mut pager = client.list_cases(sort);
    let mut ids: Vec<String> = pager
        .next_page()
        .await
        .unwrap()
        .unwrap()
        .cases
        .into_iter()
        .map(|c| c.id)
        .collect();
    // A new case sorts first: everything shifts by one, so page 2 starts with page 1's last case.
    sim.state()
        .put_case(json!({"_id": "newcomer", "status": "New", "modified_at": 0, "created_at": 0}));
    while let Some(page) = pager.next_page().await.unwrap() {
        ids.extend(page.cases.into_iter().map(|c| c.id));
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a case was yielded twice");
    assert_eq!(ids.len(), 250);
}

/// Cases in listing order, through a pager requesting `ahead` pages at once.
async fn listed_ids(client: &Client, ahead: usize) -> Vec<String> {
    let mut pager = client.list_cases(vec![]).ahead(ahead);
    let mut ids = Vec::new();
    while let Some(page) = pager.next_page().await.unwrap() {
        assert_eq!(page.total, Some(2_345));
        ids.extend(page.cases.into_iter().map(|c| c.id));
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_requested_several_at_a_time_and_yielded_in_order() {
    let mut opts = sim_options(2_345);
    opts.faults.latency_ms = 20;
    let sim = start(opts).await;
    let mut s = settings(&sim);
    s.page_size = 100;
    let client = Client::new(s).unwrap();
    let one_at_a_time = listed_ids(&client, 1).await;
    let first_run = sim.state().requests().len();
    let four_at_a_time = listed_ids(&client, 4).await;
    assert_eq!(one_at_a_time.len(), 2_345);
    assert_eq!(four_at_a_time, one_at_a_time, "same cases, same order");
    let requests = sim.state().requests().clone();
    let lists =
        |rs: &[casewarden::sim::SeenRequest]| -> Vec<(std::time::Instant, std::time::Instant)> {
            rs.iter()
                .filter(|r| r.path.ends_with("/cases"))
                .map(|r| (r.arrived, r.at))
                .collect()
        };
    // The most requests the server was answering at one moment.
    let most_at_once = |spans: &[(std::time::Instant, std::time::Instant)]| {
        spans
            .iter()
            .map(|(start, _)| {
                spans
                    .iter()
                    .filter(|(a, b)| a <= start && start < b)
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    let (before, after) = requests.split_at(first_run);
    assert_eq!(lists(before).len(), 24);
    assert_eq!(
        lists(after).len(),
        24,
        "no page requested twice, none past the total"
    );
    assert_eq!(most_at_once(&lists(before)), 1);
    let overlap = most_at_once(&lists(after));
    assert!((2..=4).contains(&overlap), "{overlap} requests at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_page_ends_a_concurrent_listing_with_its_error() {
    let mut opts = sim_options(1_000);
    opts.faults.latency_ms = 10;
    let sim = start(opts).await;
    let mut s = settings(&sim);
    s.page_size = 100;
    s.max_attempts = 1;
    let client = Client::new(s).unwrap();
    let mut pager = client.list_cases(vec![]).ahead(4);
    let mut cases = pager.next_page().await.unwrap().unwrap().cases.len();
    sim.state().faults.down = true;
    let err = loop {
        match pager.next_page().await {
            Ok(Some(page)) => cases += page.cases.len(),
            Ok(None) => panic!("the listing ended without an error"),
            Err(e) => break e,
        }
    };
    assert!(cases < 1_000, "{cases}");
    assert!(err.to_string().contains("503"), "{err}");
    assert!(
        pager.next_page().await.unwrap().is_none(),
        "nothing after the error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_token_service_is_retried() {
    let sim = start(sim_options(5)).await;
    sim.state().faults.token_fail_next = 2;
    let cases = list_all(&client(&sim), vec![]).await.unwrap();
    assert_eq!(cases.len(), 5);
    let tokens: Vec<u16> = sim
        .state()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/access_token"))
        .map(|r| r.status)
        .collect();
    assert_eq!(tokens, [503, 503, 200]);
}
