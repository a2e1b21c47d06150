//! Settings from text: defaults, relative paths, located errors, and docs/config.md
//! against the code's keys and defaults.

use std::path::Path;
use std::time::Duration;

use super::raw::RawConfig;
use super::*;

const MINIMAL: &str = "[stellar]\nurl = \"https://stellar.example.com\"\n";

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::parse(text, Path::new("/etc/casewarden/casewarden.toml"))
}

#[test]
fn a_server_name_that_cannot_be_one_is_refused_with_its_key() {
    let text = format!("{MINIMAL}name = \"eu west\"\n");
    let err = Settings::parse(&text, Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stellar.name") && err.contains("\"eu west\""),
        "{err}"
    );
}

#[test]
fn defaults_and_relative_paths() {
    let c = parse(&format!(
        "{MINIMAL}api_key_file = \"key\"\n[audit]\npath = \"a.db\"\n"
    ))
    .unwrap();
    assert_eq!(c.stellar.page_size, 100);
    assert_eq!(c.stellar.api_flavor, FlavorSetting::Auto);
    assert_eq!(c.daemon.max_changes_per_run, 500);
    assert_eq!(c.audit.path, Path::new("/etc/casewarden/a.db"));
    assert_eq!(c.daemon.rules_dir, Path::new("/etc/casewarden/rules"));
    // The key file was looked for beside the config.
    let err = c.stellar.api_key().unwrap_err().to_string();
    assert!(err.contains("/etc/casewarden/key"), "{err}");
}

/// Every key serde accepts, found from its own "expected one of" list, is in the
/// reference.
#[test]
fn every_config_key_is_in_the_reference() {
    let docs = docs();
    let mut missing = Vec::new();
    for section in ["stellar", "daemon", "audit", "calendars.soc", "notify"] {
        let text = match section {
            "stellar" => format!("{MINIMAL}no_such_key = 1\n"),
            "notify" => {
                format!("{MINIMAL}[[notify]]\nurl = \"https://h.example\"\nno_such_key = 1\n")
            }
            _ => format!("{MINIMAL}[{section}]\nno_such_key = 1\n"),
        };
        let err = parse(&text).unwrap_err().to_string();
        let expected = err
            .split("expected")
            .nth(1)
            .unwrap_or_else(|| panic!("{err}"));
        let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(keys.len() > 3, "{section}: {err}");
        for key in keys {
            if !docs.contains(&format!("`{key}`")) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in docs/config.md: {missing:?}");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let err = parse(&format!("{MINIMAL}page_sise = 5\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("page_sise"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn out_of_range_values_are_rejected() {
    let err = parse(&format!("{MINIMAL}page_size = 900\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stellar.page_size"), "{err}");
    let err = parse("[stellar]\nurl = \"http://stellar.example.com\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("loopback"), "{err}");
    let err = parse(&format!("{MINIMAL}[daemon]\nschedule = \"every minute\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("daemon.schedule"), "{err}");
}

#[test]
fn missing_key_env_is_a_clear_error() {
    let c = parse(&format!(
        "{MINIMAL}api_key_env = \"CASEWARDEN_TEST_UNSET_VAR\"\n"
    ))
    .unwrap();
    let err = c.stellar.api_key().unwrap_err().to_string();
    assert!(err.contains("CASEWARDEN_TEST_UNSET_VAR"), "{err}");
}

#[test]
fn values_are_parsed_once_and_secrets_read_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "k-1\n").unwrap();
    std::fs::write(dir.path().join("token"), "0123456789abcdef\n").unwrap();
    let text = format!(
        "{MINIMAL}api_key_file = \"key\"\n[daemon]\nlisten = \"127.0.0.1:9187\"\n\
         ui_token_file = \"token\"\n[calendars.soc]\ntimezone = \"Europe/Berlin\"\n"
    );
    let c = Settings::parse(&text, &dir.path().join("c.toml")).unwrap();
    assert_eq!(c.daemon.listen, Some("127.0.0.1:9187".parse().unwrap()));
    assert!(c.calendars().contains_key("soc"));
    // A rotated file is seen by the next load, not by these settings.
    std::fs::write(dir.path().join("key"), "k-2\n").unwrap();
    assert_eq!(c.stellar.api_key().unwrap().expose(), "k-1");
    assert_eq!(
        c.daemon.ui_token().unwrap().unwrap().expose(),
        "0123456789abcdef"
    );
    assert!(!format!("{c:?}").contains("k-1"));
}

#[test]
fn a_missing_secret_fails_only_the_command_that_needs_it() {
    let text = format!("{MINIMAL}[daemon]\nui_token_file = \"/nonexistent/token\"\n");
    let c = parse(&text).unwrap();
    let err = c.daemon.ui_token().unwrap_err().to_string();
    assert!(
        err.contains("daemon.ui_token_file") && err.contains("/nonexistent/token"),
        "{err}"
    );
}

fn docs() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap()
}

/// The TOML a section's block starts with, by the heading of its table in the docs.
fn block_of(heading: &str) -> Option<&'static str> {
    Some(match heading {
        "[stellar]" => "[stellar]",
        "[daemon]" => "[daemon]",
        "[audit]" => "[audit]",
        "[calendars.NAME]" => "[calendars.x]",
        "[tenants.\"CUST_ID\"]" => "[tenants.\"x\"]",
        "[[notify]]" => "[[notify]]",
        _ => return None,
    })
}

/// The Debug text of the section under `heading` alone, so a key is looked up in its own
/// section and not in another that has a key of the same name.
fn section_of(heading: &str, c: &RawConfig) -> String {
    match heading {
        "[stellar]" => format!("{:?}", c.stellar),
        "[daemon]" => format!("{:?}", c.daemon),
        "[audit]" => format!("{:?}", c.audit),
        "[calendars.NAME]" => format!("{:?}", c.calendars),
        "[tenants.\"CUST_ID\"]" => format!("{:?}", c.tenants),
        _ => format!("{:?}", c.notify),
    }
}

/// The documented default as TOML, for the defaults the table says in words.
fn as_toml(key: &str, documented: &str) -> String {
    match (key, documented) {
        ("events", "all") => serde_json::to_string(&crate::notify::EventKind::ALL).unwrap(),
        ("days", "Mon–Fri") => format!("{:?}", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        _ => documented.to_string(),
    }
}

/// Each key's default in docs/config.md is the code's: a section with the key set to
/// the documented value reads the same as the section without it; `none` and
/// `required` are keys that are unset by default.
#[test]
fn documented_defaults_are_the_codes() {
    let docs = docs();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for part in docs.split("\n## `").skip(1) {
        let heading = part.split('`').next().unwrap_or_default();
        let Some(block) = block_of(heading) else {
            continue;
        };
        let unset: RawConfig = toml::from_str(block).unwrap();
        for row in part.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            let key = cells[0].trim_start_matches("| ").trim_matches('`');
            let documented = cells[1].trim_matches('`');
            checked += 1;
            // An unnamed `[stellar]` is the instance `default`.
            let unset_means = if key == "name" {
                format!("{DEFAULT_INSTANCE:?}")
            } else {
                "none".into()
            };
            if documented == unset_means || documented == "required" {
                if !section_of(heading, &unset).contains(&format!(" {key}: None")) {
                    wrong.push(format!("{heading} {key}: documented {documented}"));
                }
                continue;
            }
            let set = format!("{block}\n{key} = {}\n", as_toml(key, documented));
            match toml::from_str::<RawConfig>(&set) {
                Ok(set) if set == unset => {}
                _ => wrong.push(format!("{heading} {key}: documented {documented}")),
            }
        }
    }
    assert!(checked > 40, "only {checked} keys found in docs/config.md");
    assert!(
        wrong.is_empty(),
        "defaults in docs/config.md differ from the code's: {wrong:?}"
    );
}

#[test]
fn key_and_ca_errors_name_the_server_block_they_belong_to() {
    let text = format!(
        "{MINIMAL}api_key_env = \"K\"\n[[instance]]\nname = \"eu\"\nurl = \"https://eu.example.com\"\n\
         api_key_env = \"CASEWARDEN_TEST_UNSET_VAR\"\nca_file = \"/nonexistent/ca.pem\"\n"
    );
    let c = parse(&text).unwrap();
    let eu = c.servers()[1];
    let err = eu.api_key().unwrap_err().to_string();
    assert!(err.contains("instance.eu.api_key_env"), "{err}");
    let err = eu.ca_pem().unwrap_err().to_string();
    assert!(
        err.contains("casewarden.toml: instance.eu.ca_file /nonexistent/ca.pem:"),
        "{err}"
    );
    // The I/O cause is in the message once, not repeated as its source.
    assert!(std::error::Error::source(&eu.ca_pem().unwrap_err()).is_none());
}

#[test]
fn an_empty_webhook_secret_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "\n").unwrap();
    let text =
        format!("{MINIMAL}[[notify]]\nurl = \"https://h.example\"\nsecret_file = \"secret\"\n");
    let c = Settings::parse(&text, &dir.path().join("c.toml")).unwrap();
    let err = c.notify_targets().unwrap_err().to_string();
    assert!(
        err.contains("notify[0].secret_file") && err.contains("the file is empty"),
        "{err}"
    );
}

#[test]
fn a_realert_window_is_a_duration_of_at_most_thirty_days() {
    let with = |v: &str| {
        parse(&format!(
            "{MINIMAL}[[notify]]\nurl = \"https://h.example\"\nrealert = \"{v}\"\n"
        ))
    };
    assert_eq!(
        with("15m").unwrap().notify[0].realert,
        Duration::from_secs(900)
    );
    assert_eq!(with("0s").unwrap().notify[0].realert, Duration::ZERO);
    for bad in ["hourly", "31d"] {
        let err = with(bad).unwrap_err().to_string();
        assert!(
            err.contains("notify[0].realert") && err.contains(bad),
            "{err}"
        );
    }
}
