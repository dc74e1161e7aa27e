//! The two text formats a Sonde `/metrics` endpoint speaks.

use prometheus_client::{
    encoding::{prometheus_text, text},
    registry::Registry,
};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics for clients that ask for it (Prometheus does), the
/// Prometheus text format for everyone else (`curl | promtool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsFormat {
    OpenMetrics,
    /// Prometheus text 0.0.4, which tools that predate OpenMetrics read.
    PrometheusText,
}

impl MetricsFormat {
    /// OpenMetrics if the client's `Accept` header names it.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }

    /// Encodes the registry; this is when its collectors read their values.
    pub fn encode(self, registry: &Registry) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        match self {
            Self::OpenMetrics => text::encode(&mut body, registry)?,
            Self::PrometheusText => prometheus_text::encode(&mut body, registry)?,
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked() {
        assert_eq!(
            MetricsFormat::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            MetricsFormat::OpenMetrics
        );
        assert_eq!(
            MetricsFormat::negotiate(Some("*/*")),
            MetricsFormat::PrometheusText
        );
        assert_eq!(
            MetricsFormat::negotiate(None),
            MetricsFormat::PrometheusText
        );
        let body = MetricsFormat::OpenMetrics
            .encode(&Registry::default())
            .expect("encodes");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
