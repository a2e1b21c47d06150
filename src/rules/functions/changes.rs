//! The change functions rules call (`set_priority`, `add_tag`, `comment`, ...): each
//! checks its value and records the change into the evaluation's collector.

use rhai::EvalAltResult;

use crate::plan::{Change, ChangeKind};
use crate::rules::collector::with;
use crate::rules::limits;
use crate::stellar::model::{PRIORITIES, RESOLUTIONS, STATUSES};
use crate::text::check_text;

pub(super) type Res = Result<(), Box<EvalAltResult>>;

/// Records one change, unless the rule has asked as much of this case as it may.
fn record(kind: ChangeKind, reason: &str) -> Res {
    with(
        |c| {
            let l = &c.env.limits;
            check_text("the reason", reason, l.comment_chars, true)?;
            if c.changes.len() >= l.changes_per_case {
                return Err(format!(
                    "stopped: the rule asked more than {} changes of one case (daemon.max_changes_per_rule_case)",
                    l.changes_per_case
                )
                .into());
            }
            if let ChangeKind::Comment(text) = &kind {
                let comments = c
                    .changes
                    .iter()
                    .filter(|ch| matches!(ch.kind, ChangeKind::Comment(_)))
                    .count();
                if comments >= l.comments_per_case {
                    return Err(format!(
                        "stopped: the rule asked more than {} comments on one case (daemon.max_comments_per_rule_case)",
                        l.comments_per_case
                    )
                    .into());
                }
                check_text("comment: the text", text, l.comment_chars, true)?;
            }
            c.changes.push(Change {
                kind,
                reason: reason.to_string(),
            });
            Ok(())
        },
        Ok(()),
    )
}

fn one_of(what: &str, value: &str, allowed: &[&str]) -> Res {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {value:?}: expected one of {}",
            allowed.join(", ")
        )
        .into())
    }
}

fn non_empty(what: &str, value: &str) -> Res {
    if value.trim().is_empty() {
        Err(format!("{what} must not be empty").into())
    } else {
        Ok(())
    }
}

pub(super) fn set_priority(p: &str, reason: &str) -> Res {
    one_of("priority", p, &PRIORITIES)?;
    record(ChangeKind::Priority(p.into()), reason)
}

pub(super) fn set_status(s: &str, reason: &str) -> Res {
    one_of("status", s, &STATUSES)?;
    record(ChangeKind::Status(s.into()), reason)
}

pub(super) fn resolve(resolution: &str, reason: &str) -> Res {
    one_of("resolution", resolution, &RESOLUTIONS)?;
    record(ChangeKind::Resolve(resolution.into()), reason)
}

pub(super) fn assign(user: &str, reason: &str) -> Res {
    non_empty("assign: the user", user)?;
    check_text("assign: the user", user, limits::MAX_TAG_CHARS, false)?;
    record(ChangeKind::Assign(user.trim().into()), reason)
}

pub(super) fn unassign(reason: &str) -> Res {
    record(ChangeKind::Assign(String::new()), reason)
}
pub(super) fn add_tag(t: &str, reason: &str) -> Res {
    non_empty("add_tag: the tag", t)?;
    check_text("add_tag: the tag", t, limits::MAX_TAG_CHARS, false)?;
    // A tag is exported to spreadsheets by analysts: one that reads as a formula is refused.
    if t.starts_with(['=', '+', '-', '@']) {
        return Err(format!(
            "add_tag: the tag {t:?} starts with {:?}, which a spreadsheet runs as a formula; start it with a letter or digit",
            &t[..1]
        )
        .into());
    }
    record(ChangeKind::AddTag(t.into()), reason)
}

pub(super) fn remove_tag(t: &str, reason: &str) -> Res {
    non_empty("remove_tag: the tag", t)?;
    check_text("remove_tag: the tag", t, limits::MAX_TAG_CHARS, false)?;
    record(ChangeKind::RemoveTag(t.into()), reason)
}

pub(super) fn set_description(text: &str, reason: &str) -> Res {
    check_text(
        "set_description: the text",
        text,
        limits::MAX_DESCRIPTION_CHARS,
        true,
    )?;
    record(ChangeKind::Description(text.into()), reason)
}

pub(super) fn comment(text: &str) -> Res {
    non_empty("comment: the text", text)?;
    record(ChangeKind::Comment(text.into()), "")
}
