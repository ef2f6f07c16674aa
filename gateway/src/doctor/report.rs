//! The report's lines.

use super::table;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Line {
    pub status: Status,
    pub check: String,
    pub detail: String,
    /// What to do, when the failure is a known one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what_to_do: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub see: Option<String>,
}

impl Line {
    pub fn new(status: Status, check: impl Into<String>, detail: impl Into<String>) -> Line {
        let detail = detail.into();
        let known = if matches!(status, Status::Fail | Status::Warn) {
            table::explain(&detail)
        } else {
            None
        };
        Line {
            status,
            check: check.into(),
            what_to_do: known.map(|k| format!("{}: {}", k.meaning, k.what_to_do)),
            see: known.map(table::Known::link),
            detail,
        }
    }

    /// The line as text (and, under it, what to do).
    pub fn render(&self) -> String {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        let mut s = format!("{tag} {}: {}", self.check, self.detail);
        if let Some(w) = &self.what_to_do {
            s.push_str(&format!("\n     → {w}"));
        }
        if let Some(l) = &self.see {
            s.push_str(&format!("\n     see {l}"));
        }
        s
    }
}
