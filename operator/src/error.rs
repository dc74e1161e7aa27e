//! Why a reconcile failed; it is retried with backoff.

use crds::Tracepoint;
use kube::runtime::finalizer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed")]
    Kube(#[from] kube::Error),
    #[error("{kind} has no {field}")]
    MissingMetadata {
        kind: &'static str,
        field: &'static str,
    },
    #[error("the finalizer of Tracepoint {name} failed")]
    Finalizer {
        name: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },
}

impl Error {
    pub fn finalizer(tp: &Tracepoint, source: finalizer::Error<Error>) -> Self {
        use kube::ResourceExt;
        Self::Finalizer {
            name: format!("{}/{}", tp.namespace().unwrap_or_default(), tp.name_any()),
            source: Box::new(source),
        }
    }
}
