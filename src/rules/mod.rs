//! Rules: a folder of `*.rhai` files compiled into a [`RuleSet`] (`build`, `compile`,
//! `meta`, checked by `lint`), the sandboxed engine and the functions rules call
//! (`engine`, `functions`, `view`, `matching`, with `collector` and `limits` for what one
//! evaluation knows, asks and may do), running them on cases (`eval`), and what the
//! commands do with rules offline: deciding saved cases (`offline`), comparing a candidate
//! folder with the live one (`diff`), and the rule tests (`testing`).

mod build;
mod collector;
mod compile;
pub mod diff;
mod engine;
mod eval;
mod functions;
pub mod limits;
mod lint;
mod matching;
mod meta;
pub mod offline;
pub mod testing;
mod view;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{AST, Engine, FnPtr, Position};

pub use collector::{Asked, EvalEnv};
pub use eval::{EvalError, SNOOZE_PREFIX, case_arg, exempt, hints_match};
pub use lint::did_you_mean as nearest;
pub use meta::locate;

/// A problem with one rule file, located as precisely as we can.
#[derive(Debug, Clone, Default, PartialEq, thiserror::Error)]
#[error("{}:{line}:{col}: {}{message}", file.display(), if *warning { "warning: " } else { "" })]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// A lint warning reported beside the errors of a file that has some, so one run shows
    /// everything (a rule set's own `warnings` do not stop it and are not flagged).
    pub warning: bool,
}

/// One compiled rule and its declared metadata.
pub struct Rule {
    pub name: String,
    pub description: String,
    pub schedule: Option<crate::cron::CronSchedule>,
    /// Server-side filter hints, re-checked on each case before evaluation.
    pub query: Vec<(String, String)>,
    pub enabled: bool,
    /// Shadow mode: its changes are recorded as dry-run rows and never sent, while the
    /// other rules apply theirs.
    pub dry_run: bool,
    /// Overrides `daemon.max_change_fraction` for this rule's guard.
    pub max_change_fraction: Option<f64>,
    /// At most this many of its changes per pass; the rest wait for the next pass.
    pub max_changes: Option<usize>,
    /// A case carrying one of these tags is left alone by this rule.
    pub exempt_tags: Vec<String>,
    /// `RULE.tenants`: the customers (`cust_id`) it runs on; empty: all.
    pub tenants: Vec<String>,
    /// `RULE.on_automation_revert = "reapply"`: a value another automation set back is set
    /// again (at most twice in all); else casewarden yields to it.
    pub reapply_over_automation: bool,
    /// Runs only on these servers (config instance names); empty: on every server.
    pub instances: Vec<String>,
    pub file: PathBuf,
    /// SHA-256 of the file's text, recorded with every audit row the rule causes.
    pub source_hash: String,
    /// The file's text, kept in the audit log once per distinct text.
    pub source: Arc<str>,
    /// The rule's functions as a module, each carrying its file's constants (`global::X`),
    /// so `evaluate` runs without re-running the file's top level.
    module: AST,
    evaluate: FnPtr,
    /// Where `evaluate`'s body starts: the position given for a stop Rhai does not locate.
    body: Position,
    /// Its top level read the clock: a constant may hold when the rules were loaded.
    clock_at_load: bool,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish()
    }
}

/// What rules may name that the config defines: calendars (`business_hours_since`) and
/// servers (`RULE.instances`).
pub struct ConfigNames<'a> {
    pub calendars: Vec<&'a str>,
    pub instances: Vec<&'a str>,
}

/// All rules of a folder, in file-name order, sharing one engine.
#[derive(Clone)]
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
    engine: Arc<Engine>,
    /// SHA-256 over every rule file's name and text.
    pub fingerprint: String,
    /// What the lint found that does not stop a rule (a field no case has, a returned
    /// value), to print at `check`, start-up and reload.
    pub warnings: Vec<RuleError>,
    /// Some rule or shared module may call `user_email`/`user_id`: a pass reads the
    /// server's users before evaluating.
    pub needs_users: bool,
    /// Some rule or shared module reads `tenant_name`: a pass reads the server's tenants
    /// to name the customer of cases that carry only its id.
    pub needs_tenants: bool,
    /// Bulky case fields no rule or module names (nor a helper that reads them): the
    /// mirror does not keep them.
    pub unread_fields: Vec<&'static str>,
    /// A rule's or shared module's top level read the clock, so a constant may hold when
    /// the rules were loaded: no evaluation is reused across passes.
    pub clock_at_load: bool,
    /// Calendar names given as literals, located, to check against the config.
    calendar_refs: Vec<RuleError>,
    /// Users given as literals to `assign` (the email or id in `message`), located, for
    /// `check` to look up on the servers.
    pub people_refs: Vec<RuleError>,
}

/// The folder of shared modules inside a rules folder.
pub const LIB_DIR: &str = "lib";

impl RuleSet {
    /// The rules that run when none is chosen by name.
    pub fn enabled(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rules.iter().filter(|r| r.enabled)
    }

    /// Loads every `*.rhai` in `dir`. All problems are returned, not only the first.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
        let at_dir = |message: String| {
            vec![RuleError {
                file: dir.to_path_buf(),
                line: 0,
                col: 0,
                message,
                warning: false,
            }]
        };
        let (files, mut errors) = read_rhai_files(dir).map_err(|e| {
            at_dir(format!(
                "cannot read the rules folder: {e} (daemon.rules_dir)"
            ))
        })?;
        if files.is_empty() && errors.is_empty() {
            return Err(at_dir(
                "no *.rhai rule files here; copy one from the project's rules/ folder".into(),
            ));
        }
        let libs = read_libs(dir, &mut errors);
        let set = RuleSet::build(files, libs);
        match set {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(errors),
            Err(mut more) => {
                errors.append(&mut more);
                Err(errors)
            }
        }
    }

    /// Loads `dir` as [`RuleSet::load_dir`] does, and checks that every calendar a rule
    /// names is among `calendars` (the config's).
    pub fn load_dir_for(dir: &Path, names: &ConfigNames) -> Result<RuleSet, Vec<RuleError>> {
        let set = RuleSet::load_dir(dir)?;
        let calendars = &names.calendars;
        let mut unknown: Vec<RuleError> = set
            .calendar_refs
            .iter()
            .filter(|r| !calendars.contains(&r.message.as_str()))
            .map(|r| RuleError {
                message: format!(
                    "no calendar {:?} in the config: define [calendars.{}] (defined: {})",
                    r.message,
                    r.message,
                    if calendars.is_empty() {
                        "none".to_string()
                    } else {
                        calendars.join(", ")
                    }
                ),
                ..r.clone()
            })
            .collect();
        for r in &set.rules {
            for i in r
                .instances
                .iter()
                .filter(|i| !names.instances.contains(&i.as_str()))
            {
                let text = std::fs::read_to_string(&r.file).unwrap_or_default();
                let (line, col) = meta::locate(&text, "instances");
                unknown.push(RuleError {
                    file: r.file.clone(),
                    line,
                    col,
                    message: format!(
                        "RULE.instances: no server named {i:?} in the config (servers: {})",
                        names.instances.join(", ")
                    ),
                    warning: false,
                });
            }
        }
        if unknown.is_empty() {
            Ok(set)
        } else {
            Err(unknown)
        }
    }

    /// Loads one rule file, with the shared modules of its folder's `lib/`.
    pub fn load_file(file: &Path) -> Result<RuleSet, Vec<RuleError>> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            vec![RuleError {
                file: file.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("cannot read the rule: {e}"),
                warning: false,
            }]
        })?;
        let mut errors = Vec::new();
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
        let libs = read_libs(dir.unwrap_or(Path::new(".")), &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        RuleSet::build(vec![(file.to_path_buf(), text)], libs)
    }

    /// Logs what the lint found that does not stop a rule (start-up and reload).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(file = %w.file.display(), line = w.line, col = w.col, "rule: {}", w.message);
        }
    }

    /// Compiles rules from (file name, text) pairs, already in the order they run in.
    pub fn from_sources(sources: Vec<(PathBuf, String)>) -> Result<RuleSet, Vec<RuleError>> {
        RuleSet::build(sources, Vec::new())
    }

    /// Compiles the shared modules (in order, each may import the ones before it), then the
    /// rules, which may import any of them as `import "NAME" as NAME;` (NAME: the file name
    /// without `.rhai`).
    pub fn build(sources: Vec<Source>, libs: Vec<Source>) -> Result<RuleSet, Vec<RuleError>> {
        build::Build::new()
            .libs(&libs)
            .rules(&sources)
            .finish(&sources, &libs)
    }
}

/// A file's name and text.
type Source = (PathBuf, String);

/// The `*.rhai` files of `dir`, sorted, read; files that cannot be read are errors.
fn read_rhai_files(dir: &Path) -> std::io::Result<(Vec<Source>, Vec<RuleError>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rhai") && p.is_file())
        .collect();
    files.sort();
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => loaded.push((file, text)),
            Err(e) => errors.push(RuleError {
                file,
                line: 0,
                col: 0,
                message: format!("cannot read: {e}"),
                warning: false,
            }),
        }
    }
    Ok((loaded, errors))
}

/// The shared modules of `rules_dir/lib`, if that folder exists.
fn read_libs(rules_dir: &Path, errors: &mut Vec<RuleError>) -> Vec<Source> {
    let dir = rules_dir.join(LIB_DIR);
    if !dir.is_dir() {
        return Vec::new();
    }
    match read_rhai_files(&dir) {
        Ok((libs, mut e)) => {
            errors.append(&mut e);
            libs
        }
        Err(e) => {
            errors.push(RuleError {
                file: dir,
                line: 0,
                col: 0,
                message: format!("cannot read the shared modules folder: {e}"),
                warning: false,
            });
            Vec::new()
        }
    }
}
