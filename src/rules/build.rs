//! Compiling a whole rule set: the shared modules of `lib/` first (each may import the
//! ones before it), then the rules, into one engine, one fingerprint and every error.

use std::path::Path;
use std::sync::Arc;

use rhai::Engine;
use rhai::module_resolvers::StaticModuleResolver;
use sha2::{Digest, Sha256};

use super::compile::{compile, compile_lib};
use super::engine::MAX_MODULES;
use super::lint::Library;
use super::meta::locate;
use super::{LIB_DIR, Rule, RuleError, RuleSet, Source, engine};

/// A rule set being compiled: what the files compiled so far add up to.
pub(super) struct Build {
    engine: Engine,
    library: Library,
    hasher: Sha256,
    errors: Vec<RuleError>,
    rules: Vec<Arc<Rule>>,
    warnings: Vec<RuleError>,
    /// Calendar names given as literals, located: the rules' first, then the modules'.
    calendar_refs: Vec<RuleError>,
    /// Users given as literals to `assign`, located.
    people_refs: Vec<RuleError>,
    lib_calendar_refs: Vec<RuleError>,
    /// A shared module's top level read the clock.
    lib_clock: bool,
}

impl Build {
    pub(super) fn new() -> Build {
        let engine = engine::engine();
        Build {
            library: Library::of(&engine),
            engine,
            hasher: Sha256::new(),
            errors: Vec::new(),
            rules: Vec::new(),
            warnings: Vec::new(),
            calendar_refs: Vec::new(),
            people_refs: Vec::new(),
            lib_calendar_refs: Vec::new(),
            lib_clock: false,
        }
    }

    /// Compiles the shared modules, each importable by the ones after it and by the rules.
    pub(super) fn libs(mut self, libs: &[Source]) -> Build {
        if libs.len() > MAX_MODULES {
            self.errors.push(RuleError {
                file: libs[MAX_MODULES].0.clone(),
                line: 0,
                col: 0,
                message: format!("more than {MAX_MODULES} shared modules in {LIB_DIR}/"),
                warning: false,
            });
        }
        let mut resolver = StaticModuleResolver::new();
        for (file, text) in libs.iter().take(MAX_MODULES) {
            hash_file(&mut self.hasher, "lib/", file, text);
            let name = module_name(file);
            match compile_lib(&self.engine, &self.library, file, text) {
                Ok((module, ast, mut calendars, clock_at_load)) => {
                    self.lib_calendar_refs.append(&mut calendars);
                    self.lib_clock |= clock_at_load;
                    self.library.add_module(&name, &ast);
                    resolver.insert(name, module);
                    self.engine.set_module_resolver(resolver.clone());
                }
                Err(mut e) => self.errors.append(&mut e),
            }
        }
        self.engine.set_module_resolver(resolver);
        self
    }

    /// Compiles the rules, in the order they run in; their names must be unique.
    pub(super) fn rules(mut self, sources: &[Source]) -> Build {
        for (file, text) in sources {
            hash_file(&mut self.hasher, "", file, text);
            match compile(&self.engine, &self.library, file, text) {
                Ok((rule, mut found)) => {
                    self.warnings.append(&mut found.warnings);
                    self.calendar_refs.append(&mut found.calendars);
                    self.people_refs.append(&mut found.people);
                    self.add(rule, text);
                }
                Err(mut e) => self.errors.append(&mut e),
            }
        }
        self
    }

    fn add(&mut self, rule: Rule, text: &str) {
        match self.rules.iter().find(|r| r.name == rule.name) {
            Some(first) => {
                let (line, col) = locate(text, "name");
                self.errors.push(RuleError {
                    file: rule.file.clone(),
                    line,
                    col,
                    message: format!(
                        "duplicate rule name {:?}: {} already uses it; names must be unique",
                        rule.name,
                        first.file.display()
                    ),
                    warning: false,
                });
            }
            None => self.rules.push(Arc::new(rule)),
        }
    }

    /// The rule set, or every error of every file; `sources` and `libs` say what the
    /// passes must read for it.
    pub(super) fn finish(
        mut self,
        sources: &[Source],
        libs: &[Source],
    ) -> Result<RuleSet, Vec<RuleError>> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let texts = || sources.iter().chain(libs).map(|(_, text)| text);
        self.calendar_refs.append(&mut self.lib_calendar_refs);
        let clock_at_load = self.lib_clock || self.rules.iter().any(|r| r.clock_at_load);
        Ok(RuleSet {
            rules: self.rules,
            engine: Arc::new(self.engine),
            fingerprint: hex::encode(self.hasher.finalize()),
            warnings: self.warnings,
            needs_users: texts().any(|t| t.contains("user_email") || t.contains("user_id")),
            needs_tenants: texts().any(|t| t.contains("tenant_name")),
            clock_at_load,
            unread_fields: UNREAD_UNLESS_NAMED
                .iter()
                .filter(|(_, words)| !texts().any(|t| words.iter().any(|w| t.contains(w))))
                .map(|(field, _)| *field)
                .collect(),
            calendar_refs: self.calendar_refs,
            people_refs: self.people_refs,
        })
    }
}

/// Bulky fields the mirror leaves out unless a rule's text names one of the words (the
/// field, a helper that reads it, or a function that sees the whole case).
const UNREAD_UNLESS_NAMED: [(&str, &[&str]); 2] = [
    ("event_ids", &["event_ids", "keys", "values", "to_json"]),
    (
        "metadata",
        &["metadata", "entit", "keys", "values", "to_json"],
    ),
];

/// Adds a file's name (after `prefix`) and text to the rule set's fingerprint.
fn hash_file(hasher: &mut Sha256, prefix: &str, file: &Path, text: &str) {
    hasher.update(prefix.as_bytes());
    hasher.update(
        file.file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b""),
    );
    hasher.update([0]);
    hasher.update(text.as_bytes());
    hasher.update([0]);
}

/// The name a shared module is imported under: its file name without `.rhai`.
fn module_name(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
