//! Reading and updating one case, in either API flavour, and its change history.

use reqwest::Method;
use serde_json::Value;
use serde_json::value::RawValue;

use super::Client;
use super::call::{Call, data_of, short, urlencode};
use crate::stellar::history::{self, HistoryEntry};
use crate::stellar::model::{Case, CaseParseError};
use crate::stellar::{ApiError, ApiFlavor};

impl Client {
    pub async fn get_case(&self, id: &str) -> Result<Case, ApiError> {
        let what = format!("GET case {id}");
        let data = self
            .call_with(
                Call {
                    method: Method::GET,
                    path: format!("/connect/api/v1/cases/{}", urlencode(id)),
                    query: &[],
                    body: None,
                },
                decode_data,
            )
            .await?;
        // `auto`: a case read says which flavour the server speaks, so the update that
        // follows it (`apply`, `revert`) goes in that flavour first.
        if self.known_flavor().is_none()
            && let Some(f) = data.flavor()
        {
            self.detect_flavor(f, &format!("case {id} carries `{}`", f.priority_key()));
        }
        data.into_case(self.known_flavor(), &what)?
            .map_err(|e| ApiError::BadResponse {
                what,
                detail: e.to_string(),
            })
    }

    /// Sends one update. `body` uses `priority`; on v5 servers it is sent as `severity`.
    /// With `api_flavor = "auto"`, an update call the server answers 405 (nothing applied)
    /// is sent once more in the other flavour, which is kept from then on; with a
    /// configured flavour, a 405 is [`ApiError::WrongFlavor`]. `Ok(Err(_))`: the server
    /// accepted the update and answered with JSON that is not a case.
    pub async fn update_case(
        &self,
        id: &str,
        body: &Value,
    ) -> Result<Result<Case, CaseParseError>, ApiError> {
        let flavor = self.flavor();
        match self.update_as(flavor, id, body).await {
            Err(ApiError::Status { status: 405, .. }) if !self.inner.flavor_fixed => {
                self.detect_flavor(
                    flavor.other(),
                    &format!(
                        "the server answered 405 to the {} update call",
                        flavor.as_str()
                    ),
                );
                self.update_as(flavor.other(), id, body).await
            }
            Err(ApiError::Status {
                status: 405, what, ..
            }) => Err(ApiError::WrongFlavor {
                what,
                configured: flavor,
            }),
            other => other,
        }
    }

    async fn update_as(
        &self,
        flavor: ApiFlavor,
        id: &str,
        body: &Value,
    ) -> Result<Result<Case, CaseParseError>, ApiError> {
        let what = format!("update case {id}");
        let (method, path, query, body) = match flavor {
            ApiFlavor::Legacy => (
                Method::POST,
                "/connect/api/v1/cases".to_string(),
                vec![("id".to_string(), id.to_string())],
                body.clone(),
            ),
            ApiFlavor::V5 => {
                let mut b = body.clone();
                if let Some(obj) = b.as_object_mut()
                    && let Some(p) = obj.remove("priority")
                {
                    obj.insert("severity".into(), p);
                }
                (
                    Method::PUT,
                    format!("/connect/api/v1/cases/{}", urlencode(id)),
                    vec![],
                    b,
                )
            }
        };
        let data = self
            .call_with(
                Call {
                    method,
                    path,
                    query: &query,
                    body: Some(&body),
                },
                decode_data,
            )
            .await?;
        data.into_case(Some(flavor), &what)
    }

    /// A case's change history (5.x: `GET /cases/{id}/activities`), newest or oldest first
    /// as the server sends it.
    pub async fn list_activities(&self, id: &str) -> Result<Vec<HistoryEntry>, ApiError> {
        let path = format!("/connect/api/v1/cases/{}/activities", urlencode(id));
        let what = format!("GET {path}");
        let v = self
            .call(Call {
                method: Method::GET,
                path,
                query: &[],
                body: None,
            })
            .await?;
        let data = data_of(v, &what)?;
        // Seen as a bare list, or a list under one key, depending on the server version.
        let items = match &data {
            Value::Array(items) => Some(items),
            Value::Object(obj) => ["activities", "docs", "items", "data"]
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_array)),
            _ => None,
        };
        match items {
            Some(items) => Ok(history::activities_of(items)),
            None => Err(ApiError::BadResponse {
                what,
                detail: format!("data should be a list of activities, got {}", short(&data)),
            }),
        }
    }

    /// Whether the server takes `flavor`'s update call, asked without changing anything:
    /// an empty update of a case id that does not exist. 405 means it does not.
    pub async fn probe_update_route(&self, flavor: ApiFlavor) -> Result<bool, ApiError> {
        const NO_CASE: &str = "000000000000000000000000";
        match self
            .update_as(flavor, NO_CASE, &serde_json::json!({}))
            .await
        {
            Err(ApiError::Status { status: 405, .. }) => Ok(false),
            Err(ApiError::Status { .. }) | Ok(_) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// An answer's `data`: its text when the answer is `{"data": ...}`, else the whole answer
/// parsed, for [`data_of`] to report.
enum Data {
    Text(Box<RawValue>),
    Other(Value),
}

fn decode_data(body: &[u8]) -> serde_json::Result<Data> {
    #[derive(serde::Deserialize)]
    struct Answer {
        data: Box<RawValue>,
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(a) => Ok(Data::Text(a.data)),
        Err(_) => serde_json::from_slice(body).map(Data::Other),
    }
}

impl Data {
    /// The flavour the case in the answer shows by its field names.
    fn flavor(&self) -> Option<ApiFlavor> {
        match self {
            Data::Text(text) => Case::index(text).ok().and_then(|o| ApiFlavor::of_case(&o)),
            Data::Other(_) => None,
        }
    }

    /// The case the answer holds, read one field at a time; Err: the answer has no `data`;
    /// `Ok(Err(_))`: its `data` is not a case.
    fn into_case(
        self,
        flavor: Option<ApiFlavor>,
        what: &str,
    ) -> Result<Result<Case, CaseParseError>, ApiError> {
        Ok(match self {
            Data::Text(text) => Case::index(&text).and_then(|o| Case::from_object(o, flavor)),
            Data::Other(v) => Case::parse(data_of(v, what)?, flavor),
        })
    }
}
