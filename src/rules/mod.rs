//! Rules: a folder of `*.rhai` files compiled into a [`RuleSet`] (`compile`), the
//! sandboxed engine and the functions rules call (`engine`, `limits`, `view`), and running
//! them on cases (`eval`).

mod compile;
mod engine;
mod eval;
pub mod limits;
mod lint;
mod matching;
mod view;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{AST, Engine, FnPtr, Position};
use sha2::{Digest, Sha256};

pub use engine::{Asked, EvalEnv};
pub use eval::{EvalError, case_arg, hints_match};

use compile::{compile, locate};

/// A problem with one rule file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// One compiled rule and its declared metadata.
pub struct Rule {
    pub name: String,
    pub description: String,
    pub schedule: Option<String>,
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
    pub file: PathBuf,
    /// SHA-256 of the file's text, recorded with every audit row the rule causes.
    pub source_hash: String,
    /// The rule's functions as a module, each carrying its file's constants (`global::X`),
    /// so `evaluate` runs without re-running the file's top level.
    module: AST,
    evaluate: FnPtr,
    /// Where `evaluate`'s body starts: the position given for a stop Rhai does not locate.
    body: Position,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish()
    }
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
}

impl RuleSet {
    /// Loads every `*.rhai` in `dir`. All problems are returned, not only the first.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
        let at_dir = |message: String| {
            vec![RuleError {
                file: dir.to_path_buf(),
                line: 0,
                col: 0,
                message,
            }]
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            at_dir(format!(
                "cannot read the rules folder: {e} (daemon.rules_dir)"
            ))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rhai") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(at_dir(
                "no *.rhai rule files here; copy one from the project's rules/ folder".into(),
            ));
        }
        let sources = files
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(&f);
                (f, text)
            })
            .collect::<Vec<_>>();
        let mut errors = Vec::new();
        let mut loaded = Vec::new();
        for (file, text) in sources {
            match text {
                Ok(text) => loaded.push((file, text)),
                Err(e) => errors.push(RuleError {
                    file,
                    line: 0,
                    col: 0,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        let set = RuleSet::from_sources(loaded);
        match set {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(errors),
            Err(mut more) => {
                errors.append(&mut more);
                Err(errors)
            }
        }
    }

    /// Logs what the lint found that does not stop a rule (start-up and reload).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(file = %w.file.display(), line = w.line, col = w.col, "rule: {}", w.message);
        }
    }

    /// Compiles rules from (file name, text) pairs, already in the order they run in.
    pub fn from_sources(sources: Vec<(PathBuf, String)>) -> Result<RuleSet, Vec<RuleError>> {
        let engine = engine::engine();
        let library = lint::Library::of(&engine);
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        let mut rules: Vec<Arc<Rule>> = Vec::new();
        let mut hasher = Sha256::new();
        for (file, text) in &sources {
            hasher.update(
                file.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or(b""),
            );
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            match compile(&engine, &library, file, text) {
                Ok((rule, mut found)) => {
                    warnings.append(&mut found);
                    if let Some(first) = rules.iter().find(|r| r.name == rule.name) {
                        let (line, col) = locate(text, "name");
                        errors.push(RuleError {
                            file: file.clone(),
                            line,
                            col,
                            message: format!(
                                "duplicate rule name {:?}: {} already uses it; names must be unique",
                                rule.name,
                                first.file.display()
                            ),
                        });
                    } else {
                        rules.push(Arc::new(rule));
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RuleSet {
            rules,
            engine: Arc::new(engine),
            fingerprint: hex::encode(hasher.finalize()),
            warnings,
        })
    }
}
