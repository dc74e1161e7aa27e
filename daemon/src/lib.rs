//! What every Sonde daemon (the operator, the agent, the query service)
//! shares, so each concern has one implementation: logging setup
//! ([`init_logging`]), the shutdown signal ([`Shutdown`]), error chains on
//! one line ([`ErrorChain`]) and the formats of a `/metrics` endpoint
//! ([`MetricsFormat`]).

mod error_chain;
mod logging;
mod metrics_format;
mod shutdown;

pub use error_chain::{ErrorChain, chain};
pub use logging::init_logging;
pub use metrics_format::MetricsFormat;
pub use shutdown::{Shutdown, ShutdownSignal};
