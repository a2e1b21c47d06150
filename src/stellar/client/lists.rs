//! The small lists the server answers whole under `data`: a case's comments (and posting
//! one), the server's users and its tenants.

use reqwest::Method;
use serde_json::Value;

use super::Client;
use super::call::{Call, data_of, short, urlencode};
use crate::stellar::ApiError;
use crate::stellar::model::{Comment, Tenant, User};

impl Client {
    pub async fn add_comment(&self, id: &str, text: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({ "comment": text });
        self.call(Call {
            method: Method::POST,
            path: format!("/connect/api/v1/cases/{}/comments", urlencode(id)),
            query: &[],
            body: Some(&body),
        })
        .await
        .map(|_| ())
    }

    pub async fn list_comments(&self, id: &str) -> Result<Vec<Comment>, ApiError> {
        let path = format!("/connect/api/v1/cases/{}/comments", urlencode(id));
        Ok(typed(
            self.list_of(&path).await?,
            Comment::from_value,
            "comment",
        ))
    }

    /// The server's users; an item without an id is left out.
    pub async fn list_users(&self) -> Result<Vec<User>, ApiError> {
        let items = self.list_of("/connect/api/v1/users").await?;
        Ok(typed(items, User::from_value, "user"))
    }

    /// The server's tenants (customers); an item without a `cust_id` is left out.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, ApiError> {
        let items = self.list_of("/connect/api/v1/tenants").await?;
        Ok(typed(items, Tenant::from_value, "tenant"))
    }

    async fn list_of(&self, path: &str) -> Result<Vec<Value>, ApiError> {
        let what = format!("GET {path}");
        let v = self
            .call(Call {
                method: Method::GET,
                path: path.to_string(),
                query: &[],
                body: None,
            })
            .await?;
        match data_of(v, &what)? {
            Value::Array(items) => Ok(items),
            other => Err(ApiError::BadResponse {
                what,
                detail: format!("data should be a list, got {}", short(&other)),
            }),
        }
    }
}

/// The items of a list answer that parse as `T`; the others are logged and left out.
fn typed<T>(items: Vec<Value>, parse: fn(&Value) -> Option<T>, what: &str) -> Vec<T> {
    items
        .iter()
        .filter_map(|v| {
            let item = parse(v);
            if item.is_none() {
                tracing::debug!(item = %short(v), "a {what} the server listed lacks the fields casewarden reads; left out");
            }
            item
        })
        .collect()
}
