//! The comment text contract: what casewarden writes on a case, and how it finds its own
//! comments again.

use crate::plan::{self, Decision};
use crate::stellar::{ApiError, Client};

/// A rule's `comment(..)` as it appears in the posted comment.
pub(super) fn rule_comment(rule: &str, text: Option<&str>) -> String {
    format!("[{rule}] {}", text.unwrap_or(""))
}

/// The comment an analyst sees in the UI: which rules changed what, and why.
pub(super) fn change_summary<'a>(changes: impl IntoIterator<Item = &'a Decision>) -> String {
    let mut lines = vec!["casewarden changed this case:".to_string()];
    for d in changes {
        let what = format!(
            "{}: {}",
            d.field,
            plan::describe_change(d.field, d.old.as_deref(), d.new.as_deref())
        );
        let why = if d.reason.is_empty() {
            String::new()
        } else {
            format!(" — {}", d.reason)
        };
        lines.push(format!("- {what} (rule {}){why}", d.rule));
    }
    lines.join("\n")
}

/// The last line of every comment casewarden posts: the pass that wrote it, for the analyst
/// (`casewarden audit --pass ID`) and for telling this pass's comment from earlier ones.
pub(super) fn comment_trailer(run_id: &str) -> String {
    format!("(casewarden pass {run_id})")
}

/// The texts of a case's comments.
pub(super) async fn comment_texts(client: &Client, case_id: &str) -> Result<Vec<String>, ApiError> {
    Ok(client
        .list_comments(case_id)
        .await?
        .into_iter()
        .map(|c| c.text)
        .collect())
}
