//! What the gateway tells its operator: Prometheus metrics and logs.

pub mod logging;
pub mod metrics;
pub mod store_metrics;
