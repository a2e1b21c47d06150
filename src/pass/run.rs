//! What the stages of one pass share: its context, id, the rules that run and whose
//! decisions it records.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{PassContext, PassOptions};
use crate::rules::{Rule, RuleSet};

/// One pass as its stages see it.
pub(super) struct Run<'a> {
    pub ctx: &'a PassContext,
    pub set: &'a RuleSet,
    pub opts: &'a PassOptions,
    pub run_id: String,
    /// Nothing is sent: the work is a dry run or `daemon.dry_run` is set.
    pub dry_run: bool,
    /// The due rules of this server.
    pub rules: Vec<Arc<Rule>>,
    /// The rules first, in the same order, then any other name a given plan carries.
    pub actors: Vec<Actor>,
    index_of: HashMap<String, usize>,
}

/// Whose decisions a pass records: a rule, or a command acting like one (`revert:PASS`).
pub(super) struct Actor {
    pub name: String,
    /// The rule file's SHA-256 (empty for a command).
    pub hash: String,
    /// The rule file and its text (None for a command).
    pub source: Option<(PathBuf, Arc<str>)>,
    /// A shadow rule: recorded, never sent.
    pub shadow: bool,
}

impl<'a> Run<'a> {
    pub fn new(
        ctx: &'a PassContext,
        set: &'a RuleSet,
        opts: &'a PassOptions,
        run_id: String,
    ) -> Run<'a> {
        let rules: Vec<Arc<Rule>> = set
            .rules
            .iter()
            .filter(|r| match opts.only.is_empty() {
                true => r.enabled,
                false => opts.only.contains(&r.name),
            })
            .filter(|r| r.instances.is_empty() || r.instances.contains(&ctx.instance))
            .cloned()
            .collect();
        let mut actors: Vec<Actor> = rules
            .iter()
            .map(|r| Actor {
                name: r.name.clone(),
                hash: r.source_hash.clone(),
                source: Some((r.file.clone(), r.source.clone())),
                shadow: r.dry_run,
            })
            .collect();
        for d in opts
            .work
            .given()
            .into_iter()
            .flatten()
            .flat_map(|p| &p.decisions)
        {
            if !actors.iter().any(|a| a.name == d.rule) {
                actors.push(Actor {
                    name: d.rule.clone(),
                    hash: String::new(),
                    source: None,
                    shadow: false,
                });
            }
        }
        let index_of = actors
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        Run {
            ctx,
            set,
            opts,
            run_id,
            dry_run: opts.work.is_dry_run() || ctx.settings.dry_run,
            rules,
            actors,
            index_of,
        }
    }

    /// The actor of that name and its place in [`Run::actors`].
    pub fn actor(&self, name: &str) -> Option<(usize, &Actor)> {
        let &i = self.index_of.get(name)?;
        Some((i, &self.actors[i]))
    }

    /// The hash of the named actor's rule file (empty for a command or an unknown name).
    pub fn hash_of(&self, name: &str) -> &str {
        self.actor(name).map_or("", |(_, a)| a.hash.as_str())
    }
}
