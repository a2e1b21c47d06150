//! The two generations of the Cases API, and how to tell them apart from what a server sends.

use serde_json::Value;

use super::object::Object;

/// Which generation of the update call the server speaks (see INTERFACE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApiFlavor {
    /// 4.3: `POST /cases?id=`, `priority`, `case_score`.
    #[default]
    Legacy,
    /// 4.3.7+: `PUT /cases/{id}`, `severity`, `score`.
    V5,
}

impl ApiFlavor {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFlavor::Legacy => "legacy",
            ApiFlavor::V5 => "v5",
        }
    }

    /// The other generation: where a server that refused one update call may answer.
    pub fn other(self) -> ApiFlavor {
        match self {
            ApiFlavor::Legacy => ApiFlavor::V5,
            ApiFlavor::V5 => ApiFlavor::Legacy,
        }
    }

    /// The flavour a case object's field names show: `severity` is v5's, `priority` (or
    /// `case_score`) without it legacy's; None when the object shows neither.
    pub fn of_case(case: &impl Object) -> Option<ApiFlavor> {
        if case.get("severity").is_some_and(Value::is_string) {
            Some(ApiFlavor::V5)
        } else if case.get("priority").is_some_and(Value::is_string)
            || case.get("case_score").is_some_and(Value::is_number)
        {
            Some(ApiFlavor::Legacy)
        } else {
            None
        }
    }

    /// The name this flavour gives the priority field.
    pub fn priority_key(self) -> &'static str {
        match self {
            ApiFlavor::Legacy => "priority",
            ApiFlavor::V5 => "severity",
        }
    }
}

impl std::fmt::Display for ApiFlavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
