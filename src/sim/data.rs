//! A deterministic, realistic population of cases, users and tenants for the simulator.

use std::path::Path;

use serde_json::{Value, json};

use super::error::SimError;
use crate::stellar::{ApiFlavor, cases_in_answer, parse_lenient, priority_rank};

/// A user of the simulated server.
#[derive(Debug, Clone)]
pub struct SimUser {
    pub user_id: String,
    pub email: String,
    pub name: String,
}

/// The customers of the default population (`simulate` without `--tenants`).
pub const TENANTS: [(&str, &str); 3] = [
    ("3b5cd2d5bd1c4b8a9b8a2f0e1d6c7a10", "Acme Corp"),
    ("7e2f6a0c3d9b4e1f8a5c2b7d0e4f6a21", "Globex"),
    ("c41d8a7e5f2b4c0d9e3a6b1f7c8d2e32", "Initech"),
];

const PEOPLE: [(&str, &str); 6] = [
    ("alice@example.com", "Alice Ng"),
    ("bob@example.com", "Bob Ortiz"),
    ("carol@example.com", "Carol Singh"),
    ("dave@example.com", "Dave Kim"),
    ("soc-phishing@example.com", "Phishing desk"),
    ("soc-tier2@example.com", "Tier 2 queue"),
];

const NAMES: [&str; 8] = [
    "Carbon Black:XDR Endpoint Indicator of Threat",
    "Suspicious PowerShell execution",
    "Phishing email reported by user",
    "Brute force login attempts",
    "Outbound traffic to known C2 domain",
    "Impossible travel sign-in",
    "Malware detected on endpoint",
    "Data exfiltration over DNS",
];

const TAGS: [&str; 7] = [
    "phishing",
    "malware",
    "vpn",
    "pci",
    "vip",
    "insider",
    "October-event",
];

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// A stable 32-hex id derived from a label, so the same seed always gives the same ids.
pub fn hex_id(label: &str, n: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(
        n ^ label.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        }),
    );
    (0..32)
        .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
        .collect()
}

/// A change history entry as a 5.x server's `/cases/{id}/activities` lists it: the
/// entry's field, values, time and user id, the user's name, and whether it came through
/// the API.
pub fn activity(case_id: &str, entry: Value, users: &[SimUser]) -> Value {
    let mut a = match entry {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let user = a
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = users
        .iter()
        .find(|u| u.user_id == user)
        .map_or(user.as_str(), |u| u.name.as_str())
        .to_string();
    let seq = a.get("timestamp").and_then(Value::as_u64).unwrap_or(0);
    a.insert("_id".into(), json!(hex_id(case_id, seq)[..24]));
    a.insert("case_id".into(), json!(case_id));
    a.insert("user_name".into(), json!(name));
    let api = a.get("api").and_then(Value::as_bool).unwrap_or(false);
    a.insert("api".into(), json!(api));
    Value::Object(a)
}

/// The server's users: the API user first, then the people cases are assigned to.
pub fn users(api_user: &str) -> Vec<SimUser> {
    std::iter::once((api_user, "casewarden automation"))
        .chain(PEOPLE)
        .enumerate()
        .map(|(i, (email, name))| SimUser {
            user_id: hex_id(email, i as u64),
            email: email.to_string(),
            name: name.to_string(),
        })
        .collect()
}

/// A customer of the simulated server: `cust_id` and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTenant {
    pub id: String,
    pub name: String,
}

/// The server's customers: [`TENANTS`] when `n` is 3, else `n` generated ones.
pub fn tenants(n: usize) -> Vec<SimTenant> {
    if n == TENANTS.len() {
        return TENANTS
            .iter()
            .map(|(id, name)| SimTenant {
                id: id.to_string(),
                name: name.to_string(),
            })
            .collect();
    }
    (0..n)
        .map(|i| SimTenant {
            id: hex_id("tenant", i as u64),
            name: format!("Customer {:02}", i + 1),
        })
        .collect()
}

/// `n` cases drawn from `seed`, with ages counted back from `now_ms`, spread over
/// `tenants` (at least one).
pub fn generate(
    n: usize,
    seed: u64,
    now_ms: i64,
    flavor: ApiFlavor,
    users: &[SimUser],
    tenants: &[SimTenant],
) -> Vec<Value> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let people = &users[1..];
    (0..n)
        .map(|i| one_case(&mut rng, i, now_ms, flavor, people, tenants))
        .collect()
}

fn pick<'a, T>(rng: &mut fastrand::Rng, weighted: &'a [(T, u32)]) -> &'a T {
    let total: u32 = weighted.iter().map(|(_, w)| w).sum();
    let mut roll = rng.u32(0..total);
    for (item, w) in weighted {
        if roll < *w {
            return item;
        }
        roll -= w;
    }
    &weighted[0].0
}

/// Log-uniform between `lo` and `hi` ms: many young cases, a long tail of old ones.
fn age(rng: &mut fastrand::Rng, lo: i64, hi: i64) -> i64 {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    (l + rng.f64() * (h - l)).exp() as i64
}

fn one_case(
    rng: &mut fastrand::Rng,
    i: usize,
    now: i64,
    flavor: ApiFlavor,
    people: &[SimUser],
    tenants: &[SimTenant],
) -> Value {
    let (status, priority) = status_and_priority(rng);
    let (created, modified) = created_and_modified(rng, status, now);
    let status_by = people[rng.usize(0..4)].clone();
    let acknowledged = if status == "New" && rng.u32(0..100) < 70 {
        0
    } else {
        created + (rng.f64() * (modified - created) as f64) as i64
    };
    let closed = if matches!(status, "Resolved" | "Cancelled") {
        modified
    } else {
        0
    };
    let assignee = if status == "New" && rng.u32(0..100) < 75 {
        String::new()
    } else {
        people[rng.usize(0..4)].user_id.clone()
    };
    let tags: Vec<&str> = TAGS.into_iter().filter(|_| rng.u32(0..100) < 10).collect();
    let entity_id = entity_id(rng);
    let SimTenant {
        id: tenant,
        name: tenant_name,
    } = &tenants[rng.usize(0..tenants.len().max(1))];
    let score = rng.u32(1..=100);
    let mut history = vec![json!({"field": "created_at", "timestamp": created, "user": "System"})];
    if !assignee.is_empty() {
        history.push(json!({"field": "assignee", "from": "", "to": assignee, "timestamp": acknowledged.max(created + 1), "user": people[rng.usize(0..4)].user_id}));
    }
    if status != "New" {
        history.push(json!({"field": "status", "from": "New", "to": status, "timestamp": modified, "user": status_by.user_id}));
    }
    let event_ids = event_ids(rng);
    let mut case = json!({
        "_id": hex_id("case", i as u64 ^ 0x5eed),
        "ticket_id": 60000 + i as i64,
        "name": NAMES[rng.usize(0..NAMES.len())],
        "status": status,
        "priority_num": priority_rank(priority),
        "assignee": assignee,
        "tags": tags,
        "created_at": created,
        "created_by": "System",
        "modified_at": modified,
        "modified_by": "System",
        "acknowledged": acknowledged,
        "closed": closed,
        "size": event_ids.len(),
        "cust_id": tenant,
        "resolution": "",
        "start_timestamp": created - 600_000,
        "end_timestamp": modified,
        "metadata": {"entity_id": entity_id, "algorithm": "algorithm_4.0", "description_auto": "generated by casewarden simulate"},
        "history": history,
        "event_ids": event_ids,
        "version": if status == "New" { 1 } else { 3 },
    });
    let obj = case.as_object_mut().expect("json! object");
    match flavor {
        ApiFlavor::Legacy => {
            obj.insert("priority".into(), json!(priority));
            obj.insert("case_score".into(), json!(score));
        }
        ApiFlavor::V5 => to_v5(obj, rng, people, &status_by, tenant_name, priority, score),
    }
    case
}

/// A status and a priority, weighted as a SOC's queue looks.
fn status_and_priority(rng: &mut fastrand::Rng) -> (&'static str, &'static str) {
    let status = *pick(
        rng,
        &[
            ("New", 30),
            ("In Progress", 25),
            ("Escalated", 10),
            ("Resolved", 25),
            ("Cancelled", 10),
        ],
    );
    let priority = *pick(
        rng,
        &[("Low", 30), ("Medium", 35), ("High", 25), ("Critical", 10)],
    );
    (status, priority)
}

/// One to four events of the case, as `event_ids` names them.
fn event_ids(rng: &mut fastrand::Rng) -> Vec<Value> {
    (0..rng.usize(1..5))
        .map(|_| json!({"_id": hex_id("event", rng.u64(..)), "_index": "aella-ser-1658966542094-"}))
        .collect()
}

/// When a case of `status` was created and last modified.
fn created_and_modified(rng: &mut fastrand::Rng, status: &str, now: i64) -> (i64, i64) {
    let case_age = match (status, rng.u32(0..100)) {
        ("New", 0..70) => age(rng, 5 * 60_000, 20 * HOUR),
        ("New", 70..90) => age(rng, DAY, 10 * DAY),
        // Some New cases nobody picked up for weeks: what the escalation rule is for.
        ("New", _) => age(rng, 14 * DAY, 45 * DAY),
        ("In Progress" | "Escalated", _) => age(rng, HOUR, 90 * DAY),
        _ => age(rng, DAY, 180 * DAY),
    };
    let created = now - case_age;
    (
        created,
        created + (rng.f64() * case_age as f64 * 0.3) as i64,
    )
}

/// `metadata.entity_id` in the forms real servers send: `asset,,IP`, `user,NAME,,IP`,
/// `host,NAME,ID,IP`.
fn entity_id(rng: &mut fastrand::Rng) -> String {
    let octet = *pick(rng, &[(10u8, 8), (20, 8), (30, 44), (40, 40)]);
    let ip = format!("10.{octet}.{}.{}", rng.u8(0..=254), rng.u8(1..=254));
    match rng.u32(0..10) {
        0..=5 => format!("asset,,{ip}"),
        6..=7 => format!(
            "user,{}{},,{ip}",
            ["jdoe", "asmith", "mlee"][rng.usize(0..3)],
            rng.u8(1..99)
        ),
        _ => format!(
            "host,{},{},{ip}",
            ["vpn-gw", "web", "db", "mail", "dc"][rng.usize(0..5)],
            hex_id("host", rng.u64(..))
        ),
    }
}

/// The 5.x shape of a generated case, as recorded servers send it: 24-hex ids, `severity`,
/// float scores, user ids and names, and no `acknowledged`/`closed` on some cases.
fn to_v5(
    obj: &mut serde_json::Map<String, Value>,
    rng: &mut fastrand::Rng,
    people: &[SimUser],
    status_by: &SimUser,
    tenant_name: &str,
    priority: &str,
    score: u32,
) {
    let id = obj["_id"].as_str().unwrap_or("")[..24].to_string();
    obj.insert("_id".into(), json!(id));
    obj.insert("severity".into(), json!(priority));
    obj.insert(
        "score".into(),
        json!(score as f64 - rng.u32(0..10) as f64 / 10.0),
    );
    let name_of = |user: &str| {
        people
            .iter()
            .find(|p| p.user_id == user)
            .map_or("Unassigned", |p| p.name.as_str())
            .to_string()
    };
    let assignee = obj["assignee"].as_str().unwrap_or("").to_string();
    obj.insert("assignee_name".into(), json!(name_of(&assignee)));
    obj.insert("created_by_name".into(), json!("System"));
    let (modifier, modifier_name) = if obj["status"] == "New" {
        (String::new(), "System".to_string())
    } else {
        (status_by.user_id.clone(), status_by.name.clone())
    };
    obj.insert("modified_by".into(), json!(modifier));
    obj.insert("modified_by_name".into(), json!(modifier_name));
    obj.insert("tenant_name".into(), json!(tenant_name));
    if rng.u32(0..100) < 30 {
        obj.remove("acknowledged");
        obj.remove("closed");
    }
}

/// Cases from a file: a case, an array, or any saved answer that holds cases (see
/// [`cases_in_answer`]), strict JSON or with the trailing commas real documentation prints.
pub(super) fn load_cases(path: &Path) -> Result<Vec<Value>, SimError> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::CasesFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let (v, repaired) = parse_lenient(&text).map_err(|error| SimError::NotJson {
        path: path.to_path_buf(),
        error,
    })?;
    if repaired {
        tracing::warn!(file = %path.display(), "not strict JSON (trailing commas); read without them");
    }
    let cases = cases_in_answer(v).map_err(|detail| SimError::CasesFile {
        path: path.to_path_buf(),
        detail,
    })?;
    if cases.is_empty() {
        tracing::warn!(file = %path.display(), "the file holds no case; serving none");
    }
    Ok(cases)
}
