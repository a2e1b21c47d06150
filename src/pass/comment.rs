//! The comment text contract: what casewarden writes on a case, and how it finds its own
//! comments again.

use crate::stellar::{ApiError, Client};

/// A rule's `comment(..)` as it appears in the posted comment.
pub(super) fn rule_comment(rule: &str, text: Option<&str>) -> String {
    format!("[{rule}] {}", text.unwrap_or(""))
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
