//! What the process knows of its accounts' sending through Microsoft
//! Graph (see [`super::graph`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

/// What the process knows of its accounts' sending through Graph.
#[derive(Debug, Default)]
pub struct GraphState {
    /// Accounts of `smtp = "auto"` providers whose tenant refused SMTP
    /// AUTH (kept for the process's life; a restart learns it again at
    /// the first login).
    pub(super) switched: Mutex<HashSet<String>>,
    /// Accounts Graph throttled: not before this.
    pub(super) holds: Mutex<HashMap<String, Instant>>,
}
