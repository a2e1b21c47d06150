//! The review as one HTML page that needs nothing else: inline CSS, inline SVG charts, a
//! little inline script for the case timelines; no fonts, images or scripts from anywhere.
//! Every number a test or a person checks sits in an element with a `data-` name.

use std::fmt::Write;

use super::{Counts, Day, PassReview, Review, RuleReview};
use crate::audit::GroupCount;

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:18px 28px}header h1{margin:0 0 6px;font-size:20px}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;font-size:13px}
header dt{opacity:.7}main{padding:18px 28px;max-width:1300px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:14px 18px;margin:0 0 18px}
h2{font-size:16px;margin:0 0 10px}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{color:#5b6472;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17803d}.bad{color:#b42318;font-weight:600}.muted{color:#8a93a0}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #dde1e7;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}code{font-size:12px;word-break:break-all}
tr.click{cursor:pointer}tr.click:hover{background:#f0f4ff}input{font:inherit;padding:4px 8px;width:340px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
"#;

const SCRIPT: &str = r#"
const data = JSON.parse(document.getElementById('timelines').textContent);
const live = document.body.dataset.live === 'true';
function esc(s){return String(s ?? '').replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));}
function table(id, steps){
  if(!steps.length){return '<p>No rows for case '+esc(id)+' in this period.</p>';}
  let h='<h3>Case <code>'+esc(id)+'</code></h3><table><tr><th>#</th><th>recorded (UTC)</th><th>pass</th><th>rule</th><th>field</th><th>old</th><th>new</th><th>reason</th><th>outcome</th><th>error</th></tr>';
  for(const s of steps){h+='<tr data-step><td class="n">'+s.seq+'</td><td>'+esc(s.recorded_at)+'</td><td>'+esc(s.run_id)+'</td><td>'+esc(s.rule)+'</td><td>'+esc(s.field)+'</td><td>'+esc(s.old)+'</td><td>'+esc(s.new)+'</td><td>'+esc(s.reason)+'</td><td>'+esc(s.outcome)+(s.dry_run?' (dry)':'')+'</td><td>'+esc(s.error)+'</td></tr>';}
  return h+'</table>';
}
function show(id){
  const out=document.getElementById('timeline');
  if(data[id]){out.innerHTML=table(id,data[id]);return;}
  const q=document.getElementById('q').value.trim();
  let found=Object.keys(data).find(k=>data[k].some(s=>String(s.ticket_id??'')===q));
  if(found){out.innerHTML=table(found,data[found]);return;}
  if(live){
    const param=/^\d+$/.test(id)?'ticket='+id:'case='+encodeURIComponent(id);
    fetch('api/audit?'+param+'&limit=500').then(r=>r.json()).then(j=>{out.innerHTML=table(id,j.rows.filter(s=>s.outcome!=='planned'||s.dry_run));}).catch(e=>{out.textContent='Cannot load: '+e;});
    return;
  }
  out.innerHTML='<p>Case '+esc(id)+' is not among the cases this report carries (the busiest and the failed ones). Its rows: <code>casewarden audit --case '+esc(id)+'</code> or <code>--ticket N</code>.</p>';
}
document.getElementById('q').addEventListener('keydown',e=>{if(e.key==='Enter'){show(e.target.value.trim());}});
for(const tr of document.querySelectorAll('tr[data-case]')){tr.addEventListener('click',()=>show(tr.dataset.case));}
const linked=location.hash.match(/^#case=(.+)$/);
if(linked){show(decodeURIComponent(linked[1]));}
"#;

/// JSON for inside a `<script>` element: `<`, `>` and `&` as `\u003c`..., so no case text
/// can end the element or put the HTML parser in a script-escape state (`<!--<script>`),
/// and U+2028/U+2029 escaped for older JavaScript parsers. The same value once parsed.
fn script_json(value: &impl serde::Serialize) -> String {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// HTML-escapes text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The page; `live` when served by the daemon (the search then asks `/api/audit` for cases
/// the page does not carry).
pub fn render(r: &Review, live: bool) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let title = format!(
        "casewarden audit report{}",
        r.rule
            .as_deref()
            .map(|x| format!(" — rule {x}"))
            .unwrap_or_default()
    );
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:\">\
         <title>{}</title><style>{STYLE}</style></head><body data-live=\"{live}\">",
        esc(&title)
    );
    header(&mut h, r, &title);
    h.push_str("<main>");
    totals(&mut h, &r.totals, r);
    rules(&mut h, &r.rules);
    passes(&mut h, &r.passes, r.passes_total);
    failures(&mut h, r);
    servers(&mut h, r);
    customers(&mut h, &r.tenants);
    cases(&mut h, r);
    let json = script_json(&r.timelines);
    let _ = write!(
        h,
        "</main><script type=\"application/json\" id=\"timelines\">{json}</script><script>{SCRIPT}</script></body></html>"
    );
    h
}

fn header(h: &mut String, r: &Review, title: &str) {
    let period = format!(
        "{} — {}",
        r.since.as_deref().unwrap_or("the first row"),
        r.until.as_deref().unwrap_or("now")
    );
    let integrity = if r.integrity.intact {
        format!(
            "<span class=\"ok\" data-integrity=\"intact\">intact</span>: {} row(s), hash chain verified",
            r.integrity.rows
        )
    } else {
        format!(
            "<span class=\"bad\" data-integrity=\"broken\">BROKEN</span>: {}",
            esc(r.integrity.problem.as_deref().unwrap_or(""))
        )
    };
    let _ = write!(
        h,
        "<header><h1>{}</h1><dl>\
         <dt>period</dt><dd data-period>{}</dd>\
         <dt>generated</dt><dd>{} by casewarden {}</dd>\
         <dt>servers</dt><dd>{}</dd><dt>audit log</dt><dd>{}</dd>\
         <dt>audit verify</dt><dd>{integrity}</dd>\
         <dt>chain head</dt><dd><code data-head>{}</code></dd></dl></header>",
        esc(title),
        esc(&period),
        esc(&r.generated_at),
        esc(&r.version),
        esc(&servers_line(r)),
        esc(&r.source.audit_db),
        esc(r.integrity.head.as_deref().unwrap_or("-")),
    );
}

/// The header's servers: every configured one, with its URL.
fn servers_line(r: &Review) -> String {
    if r.source.servers.is_empty() {
        return "(no config read)".into();
    }
    let each: Vec<String> = r
        .source
        .servers
        .iter()
        .map(|s| format!("{} {}", s.name, s.url))
        .collect();
    each.join(", ")
}

fn card(h: &mut String, key: &str, label: &str, n: i64) {
    let _ = write!(
        h,
        "<div class=\"card\"><b data-total=\"{key}\">{n}</b>{label}</div>"
    );
}

fn totals(h: &mut String, t: &Counts, r: &Review) {
    h.push_str("<section><h2>Totals</h2><div class=\"cards\">");
    card(h, "applied", "changes applied", t.applied);
    card(h, "failed", "changes failed", t.failed);
    card(h, "skipped", "changes skipped", t.skipped);
    card(h, "unknown", "outcome unknown", t.unknown);
    card(h, "dry_run_planned", "planned, dry run", t.dry_run_planned);
    card(h, "guard_halts", "guard halts", t.guard_halts);
    card(h, "breaker_trips", "breaker trips", t.breaker_trips);
    card(h, "rule_errors", "rule errors (cases)", t.rule_errors);
    card(
        h,
        "automation_yields",
        "set back by automations",
        t.automation_yields,
    );
    card(h, "fights", "fights with automations", t.fights);
    card(h, "passes", "passes", r.passes_total as i64);
    h.push_str("</div></section>");
}

const COLORS: [(&str, &str); 4] = [
    ("applied", "#2f9e55"),
    ("failed", "#d92d20"),
    ("skipped", "#98a2b3"),
    ("dry run", "#7aa2f7"),
];

/// Changes per day as stacked bars.
fn day_chart(days: &[Day]) -> String {
    let max = days
        .iter()
        .map(|d| d.applied + d.failed + d.skipped + d.dry_run_planned)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bar = 8;
    let height = 40.0;
    let mut svg = format!(
        "<svg width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"changes per day\">",
        days.len().max(1) * bar
    );
    for (i, d) in days.iter().enumerate() {
        let mut y = height;
        for (value, (_, color)) in [d.applied, d.failed, d.skipped, d.dry_run_planned]
            .into_iter()
            .zip(COLORS)
        {
            let hgt = value as f64 / max * height;
            if hgt > 0.0 {
                y -= hgt;
                let _ = write!(
                    svg,
                    "<rect x=\"{}\" y=\"{y:.1}\" width=\"{}\" height=\"{hgt:.1}\" fill=\"{color}\"><title>{}: {} applied, {} failed, {} skipped, {} dry run</title></rect>",
                    i * bar,
                    bar - 1,
                    esc(&d.day),
                    d.applied,
                    d.failed,
                    d.skipped,
                    d.dry_run_planned
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

fn rules(h: &mut String, rules: &[RuleReview]) {
    h.push_str("<section><h2>Rules</h2><p class=\"legend muted\">per day:");
    for (name, color) in COLORS {
        let _ = write!(h, "<span style=\"background:{color}\"></span>{name}");
    }
    h.push_str("</p><table><tr><th>rule</th><th class=\"n\">applied</th><th class=\"n\">failed</th><th class=\"n\">skipped</th><th class=\"n\">dry run</th><th class=\"n\">guard halts</th><th class=\"n\">breaker trips</th><th class=\"n\">rule errors</th><th class=\"n\">automation set back</th><th class=\"n\">fights</th><th>versions</th><th>per day</th></tr>");
    if rules.is_empty() {
        h.push_str(
            "<tr><td colspan=\"12\" class=\"muted\">No audit rows in this period.</td></tr>",
        );
    }
    for r in rules {
        let c = &r.counts;
        let rule = esc(&r.rule);
        let _ = write!(h, "<tr data-rule=\"{rule}\"><td>{rule}</td>");
        for (key, n) in [
            ("applied", c.applied),
            ("failed", c.failed),
            ("skipped", c.skipped),
            ("dry_run_planned", c.dry_run_planned),
            ("guard_halts", c.guard_halts),
            ("breaker_trips", c.breaker_trips),
            ("rule_errors", c.rule_errors),
            ("automation_yields", c.automation_yields),
            ("fights", c.fights),
        ] {
            let class = if n > 0 && key != "applied" && key != "skipped" && key != "dry_run_planned"
            {
                "n bad"
            } else {
                "n"
            };
            let _ = write!(h, "<td class=\"{class}\" data-count=\"{key}\">{n}</td>");
        }
        let versions: Vec<String> = r
            .versions
            .iter()
            .map(|v| {
                format!(
                    "<code title=\"{}\">{}</code> from {}",
                    esc(&v.rule_hash),
                    esc(v.rule_hash.get(..12).unwrap_or(&v.rule_hash)),
                    esc(v.first_seen.get(..16).unwrap_or(&v.first_seen))
                )
            })
            .collect();
        let _ = write!(
            h,
            "<td data-versions=\"{}\">{}</td><td>{}</td></tr>",
            r.versions.len(),
            versions.join("<br>"),
            day_chart(&r.days)
        );
    }
    h.push_str("</table></section>");
}

fn status_color(status: &str) -> &'static str {
    match status {
        "ok" | "dry-run" => "#2f9e55",
        "degraded" | "budget-exhausted" | "interrupted" => "#f79009",
        _ => "#d92d20",
    }
}

fn passes(h: &mut String, passes: &[PassReview], total: usize) {
    let _ = write!(
        h,
        "<section><h2>Passes</h2><p class=\"muted\">{total} pass(es) in the period{}; each bar is one pass (oldest left), its height the changes applied and failed, its colour the status.</p>",
        if total > passes.len() {
            format!(", the newest {} shown", passes.len())
        } else {
            String::new()
        }
    );
    let max = passes
        .iter()
        .map(|p| p.applied + p.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let width = 3;
    let _ = write!(
        h,
        "<svg width=\"{}\" height=\"60\" role=\"img\" aria-label=\"passes\">",
        (passes.len() * width).max(1)
    );
    for (i, p) in passes.iter().rev().enumerate() {
        let hgt = 4.0 + (p.applied + p.failed) as f64 / max * 56.0;
        let _ = write!(
            h,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"{}\" height=\"{hgt:.1}\" fill=\"{}\"><title>{} {} {} applied {} failed</title></rect>",
            i * width,
            60.0 - hgt,
            width - 1,
            status_color(&p.status),
            esc(&p.id),
            esc(&p.status),
            p.applied,
            p.failed
        );
    }
    h.push_str("</svg><table><tr><th>pass</th><th>server</th><th>started (UTC)</th><th class=\"n\">seconds</th><th>status</th><th>trigger</th><th class=\"n\">cases seen</th><th class=\"n\">applied</th><th class=\"n\">failed</th><th class=\"n\">skipped</th></tr>");
    for p in passes.iter().take(200) {
        let _ = write!(
            h,
            "<tr data-pass=\"{}\"><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td style=\"color:{}\" title=\"{}\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\" data-count=\"applied\">{}</td><td class=\"n\" data-count=\"failed\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&p.id),
            esc(&p.id),
            if p.dry_run { " (dry run)" } else { "" },
            esc(&p.instance),
            esc(&p.started_at),
            p.seconds
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(|| "-".into()),
            status_color(&p.status),
            esc(p.error.as_deref().unwrap_or("")),
            esc(&p.status),
            esc(&p.trigger),
            p.cases_seen,
            p.applied,
            p.failed,
            p.skipped
        );
    }
    if passes.len() > 200 {
        let _ = write!(
            h,
            "<tr><td colspan=\"10\" class=\"muted\">{} more in the chart above and in the JSON report</td></tr>",
            passes.len() - 200
        );
    }
    h.push_str("</table></section>");
}

fn failures(h: &mut String, r: &Review) {
    h.push_str("<section><h2>Failed changes</h2><table><tr><th>rule</th><th>error</th><th class=\"n\">changes</th><th>last</th><th>example case</th></tr>");
    if r.failures.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"ok\">No change failed in this period.</td></tr>");
    }
    for f in &r.failures {
        let _ = write!(
            h,
            "<tr class=\"click\" data-case=\"{}\" data-failure><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td><code>{}</code>{}</td></tr>",
            esc(&f.example_case),
            esc(&f.rule),
            esc(&f.error),
            f.rows,
            esc(&f.last_at),
            esc(&f.example_case),
            f.ticket_id
                .map(|t| format!(" ticket {t}"))
                .unwrap_or_default()
        );
    }
    h.push_str("</table></section>");
}

/// The columns of every group's row: the same as the totals', so each adds up to them.
const GROUP_COLUMNS: &str = "<th class=\"n\">applied</th><th class=\"n\">failed</th><th class=\"n\">unknown</th><th class=\"n\">skipped</th><th class=\"n\">planned, dry run</th><th class=\"n\">cases</th>";

fn group_cells(g: &GroupCount) -> String {
    format!(
        "<td class=\"n\" data-count=\"applied\">{}</td><td class=\"n\" data-count=\"failed\">{}</td><td class=\"n\">{}</td><td class=\"n\" data-count=\"skipped\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
        g.applied, g.failed, g.unknown, g.skipped, g.dry_run_planned, g.cases
    )
}

/// A section per server: its numbers, its passes and the failed ones with their errors.
fn servers(h: &mut String, r: &Review) {
    for s in &r.servers {
        let _ = write!(
            h,
            "<section data-server=\"{0}\"><h2>Server {0}</h2><p class=\"muted\">{1} · {2} pass(es), {3} failed</p><table><tr>{GROUP_COLUMNS}</tr><tr>{4}</tr></table>",
            esc(&s.name),
            esc(s.url.as_deref().unwrap_or("not in the config")),
            s.passes,
            s.failed_passes.len(),
            group_cells(&s.counts)
        );
        if !s.failed_passes.is_empty() {
            h.push_str("<table><tr><th>failed pass</th><th>started (UTC)</th><th>status</th><th class=\"n\">changes failed</th><th>error</th></tr>");
            for p in &s.failed_passes {
                let _ = write!(
                    h,
                    "<tr><td><code>{}</code></td><td>{}</td><td style=\"color:{}\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                    esc(&p.id),
                    esc(&p.started_at),
                    status_color(&p.status),
                    esc(&p.status),
                    p.failed,
                    esc(p.error.as_deref().unwrap_or("-"))
                );
            }
            h.push_str("</table>");
        }
        h.push_str("</section>");
    }
}

/// Changes per customer, by name and `cust_id`, when the cases name customers.
fn customers(h: &mut String, groups: &[GroupCount]) {
    if groups.iter().all(|g| g.name.is_empty()) {
        return;
    }
    let _ = write!(
        h,
        "<section><h2>Customers</h2><table><tr><th>customer</th><th>cust_id</th>{GROUP_COLUMNS}</tr>"
    );
    for t in groups {
        let name = match (&t.cust_name, t.name.as_str()) {
            (_, "") => "(no customer)",
            (Some(n), _) => n.as_str(),
            (None, _) => "?",
        };
        let _ = write!(
            h,
            "<tr data-group=\"{0}\"><td>{1}</td><td><code>{0}</code></td>{2}</tr>",
            esc(&t.name),
            esc(name),
            group_cells(t)
        );
    }
    h.push_str("</table></section>");
}

fn cases(h: &mut String, r: &Review) {
    h.push_str("<section><h2>Cases touched most</h2><p><input id=\"q\" placeholder=\"case id or ticket number, then Enter\" aria-label=\"find a case\"> <span class=\"muted\">or click a row</span></p><div id=\"timeline\"></div>\
        <table><tr><th>case</th><th class=\"n\">ticket</th><th class=\"n\">changes applied</th><th class=\"n\">rules</th><th>last</th></tr>");
    for c in &r.busiest_cases {
        let _ = write!(
            h,
            "<tr class=\"click\" data-case=\"{}\"><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&c.case_id),
            esc(&c.case_id),
            c.ticket_id.map(|t| t.to_string()).unwrap_or_default(),
            c.rows,
            c.rules,
            esc(&c.last_at)
        );
    }
    h.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_data_cannot_end_or_derail_its_element() {
        let hostile = "<!--<script></script><script>alert(1)</script>&\u{2028}\u{2029}";
        let json = script_json(&serde_json::json!({ "name": hostile }));
        for c in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!json.contains(c), "{c:?} in {json}");
        }
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["name"], hostile, "the same data once parsed");
    }

    #[test]
    fn text_cannot_become_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\u{1b}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;\u{FFFD}"
        );
    }
}
