//! Sending OTLP requests: gRPC (tonic) or HTTP with protobuf bodies
//! (reqwest), TLS from the Export's settings and Secret material, headers
//! from its Secret. Answers are sorted into delivered (with the rows a
//! partial success rejected), worth retrying, or permanent failures, as the
//! OTLP specification says.

use std::{sync::Arc, time::Duration};

use crds::v1alpha1::{OtlpDestination, OtlpProtocol, Signal};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsServiceResponse, logs_service_client::LogsServiceClient},
    metrics::v1::{ExportMetricsServiceResponse, metrics_service_client::MetricsServiceClient},
    trace::v1::{ExportTraceServiceResponse, trace_service_client::TraceServiceClient},
};
use prost::Message;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tonic::{
    Code,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{Credentials, ExportError, encode::OtlpRequest};

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The back end accepted the request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Records a partial success rejected.
    pub rejected: u64,
    /// What the back end said about them.
    pub message: Option<String>,
}

/// A request that failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// Unavailable, throttled, timed out, refused: try again later.
    Retryable(String),
    /// The back end will never take this request.
    Permanent(String),
}

/// A client for one OTLP destination.
#[derive(Debug, Clone)]
pub(crate) enum OtlpClient {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
        endpoint: String,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: HeaderMap,
    },
}

impl OtlpClient {
    /// Builds the client; connects lazily, on the first request.
    pub fn new(otlp: &OtlpDestination, credentials: &Credentials) -> Result<Self, ExportError> {
        let https = otlp.endpoint.starts_with("https://");
        let insecure = otlp.tls.as_ref().is_some_and(|t| t.insecure_skip_verify);
        match otlp.protocol {
            OtlpProtocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(otlp.endpoint.clone())
                    .map_err(|source| ExportError::Endpoint {
                        endpoint: otlp.endpoint.clone(),
                        source: source.into(),
                    })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT);
                if https {
                    let mut tls = ClientTlsConfig::new();
                    if let Some((cert, key)) = &credentials.client_identity {
                        tls = tls.identity(Identity::from_pem(cert, key));
                    }
                    let configured = if insecure {
                        endpoint.tls_config_with_verifier(tls, Arc::new(AcceptAnyServerCert::new()))
                    } else {
                        tls = match &credentials.ca_pem {
                            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                            None => tls.with_native_roots(),
                        };
                        endpoint.tls_config(tls)
                    };
                    endpoint = configured.map_err(|source| ExportError::Endpoint {
                        endpoint: otlp.endpoint.clone(),
                        source: source.into(),
                    })?;
                }
                let mut metadata = MetadataMap::new();
                for (key, value) in &credentials.headers {
                    let name = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                        .map_err(|_| ExportError::Header {
                            key: key.clone(),
                            reason: "not a valid gRPC metadata key",
                        })?;
                    let value = MetadataValue::try_from(value.as_str()).map_err(|_| {
                        ExportError::Header {
                            key: key.clone(),
                            reason: "the value is not printable ASCII",
                        }
                    })?;
                    metadata.insert(name, value);
                }
                Ok(Self::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                    endpoint: otlp.endpoint.clone(),
                })
            }
            OtlpProtocol::Http => {
                let tls = rustls_config(https, insecure, credentials)?;
                let client = reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .map_err(|source| ExportError::HttpClient { source })?;
                let mut headers = HeaderMap::new();
                for (key, value) in &credentials.headers {
                    let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
                        ExportError::Header {
                            key: key.clone(),
                            reason: "not a valid HTTP header name",
                        }
                    })?;
                    let value = HeaderValue::from_str(value).map_err(|_| ExportError::Header {
                        key: key.clone(),
                        reason: "the value is not a valid HTTP header value",
                    })?;
                    headers.insert(name, value);
                }
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                let signal = match otlp.signal {
                    Signal::Logs => "logs",
                    Signal::Metrics => "metrics",
                    Signal::Traces => "traces",
                };
                Ok(Self::Http {
                    client,
                    url: format!("{}/v1/{signal}", otlp.endpoint.trim_end_matches('/')),
                    headers,
                })
            }
        }
    }

    /// Where requests go, for messages.
    pub fn target(&self) -> &str {
        match self {
            Self::Grpc { endpoint, .. } => endpoint,
            Self::Http { url, .. } => url,
        }
    }

    /// Sends one request once.
    pub async fn send(&self, request: &OtlpRequest) -> Result<Delivered, SendError> {
        match self {
            Self::Grpc {
                channel, metadata, ..
            } => send_grpc(channel, metadata, request).await,
            Self::Http {
                client,
                url,
                headers,
            } => send_http(client, url, headers, request).await,
        }
    }
}

async fn send_grpc(
    channel: &Channel,
    metadata: &MetadataMap,
    request: &OtlpRequest,
) -> Result<Delivered, SendError> {
    fn with_metadata<T>(message: T, metadata: &MetadataMap) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = metadata.clone();
        request
    }
    let partial = match request {
        OtlpRequest::Logs(r) => LogsServiceClient::new(channel.clone())
            .export(with_metadata(r.clone(), metadata))
            .await
            .map(|a| logs_partial(&a.into_inner())),
        OtlpRequest::Metrics(r) => MetricsServiceClient::new(channel.clone())
            .export(with_metadata(r.clone(), metadata))
            .await
            .map(|a| metrics_partial(&a.into_inner())),
        OtlpRequest::Traces(r) => TraceServiceClient::new(channel.clone())
            .export(with_metadata(r.clone(), metadata))
            .await
            .map(|a| traces_partial(&a.into_inner())),
    };
    match partial {
        Ok(delivered) => Ok(delivered),
        Err(status) => {
            let message = format!("gRPC {:?}: {}", status.code(), status.message());
            // The codes the OTLP specification calls retryable.
            let retryable = matches!(
                status.code(),
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::OutOfRange
                    | Code::DataLoss
            );
            Err(if retryable {
                SendError::Retryable(message)
            } else {
                SendError::Permanent(message)
            })
        }
    }
}

async fn send_http(
    client: &reqwest::Client,
    url: &str,
    headers: &HeaderMap,
    request: &OtlpRequest,
) -> Result<Delivered, SendError> {
    let body = match request {
        OtlpRequest::Logs(r) => r.encode_to_vec(),
        OtlpRequest::Metrics(r) => r.encode_to_vec(),
        OtlpRequest::Traces(r) => r.encode_to_vec(),
    };
    let response = client
        .post(url)
        .headers(headers.clone())
        .body(body)
        .send()
        .await
        .map_err(|e| SendError::Retryable(format!("POST {url}: {}", error_chain(&e))))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| SendError::Retryable(format!("POST {url}: reading the answer: {e}")))?;
    if status.is_success() {
        // An empty or undecodable body is a full success.
        return Ok(match request {
            OtlpRequest::Logs(_) => ExportLogsServiceResponse::decode(bytes)
                .map(|a| logs_partial(&a))
                .unwrap_or(FULL_SUCCESS),
            OtlpRequest::Metrics(_) => ExportMetricsServiceResponse::decode(bytes)
                .map(|a| metrics_partial(&a))
                .unwrap_or(FULL_SUCCESS),
            OtlpRequest::Traces(_) => ExportTraceServiceResponse::decode(bytes)
                .map(|a| traces_partial(&a))
                .unwrap_or(FULL_SUCCESS),
        });
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    let message = format!("POST {url}: HTTP {status}: {}", text.trim());
    let retryable = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    );
    Err(if retryable {
        SendError::Retryable(message)
    } else {
        SendError::Permanent(message)
    })
}

const FULL_SUCCESS: Delivered = Delivered {
    rejected: 0,
    message: None,
};

fn partial(rejected: i64, message: &str) -> Delivered {
    Delivered {
        rejected: rejected.max(0) as u64,
        message: (rejected > 0 || !message.is_empty()).then(|| message.to_owned()),
    }
}

fn logs_partial(answer: &ExportLogsServiceResponse) -> Delivered {
    answer.partial_success.as_ref().map_or(FULL_SUCCESS, |p| {
        partial(p.rejected_log_records, &p.error_message)
    })
}

fn metrics_partial(answer: &ExportMetricsServiceResponse) -> Delivered {
    answer.partial_success.as_ref().map_or(FULL_SUCCESS, |p| {
        partial(p.rejected_data_points, &p.error_message)
    })
}

fn traces_partial(answer: &ExportTraceServiceResponse) -> Delivered {
    answer.partial_success.as_ref().map_or(FULL_SUCCESS, |p| {
        partial(p.rejected_spans, &p.error_message)
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    sonde_daemon::chain(error)
}

/// The TLS configuration of the HTTP client: ring, and either the Secret's
/// CA or the system's roots (none for plain http), a client certificate if
/// given, or no verification at all if asked.
fn rustls_config(
    https: bool,
    insecure: bool,
    credentials: &Credentials,
) -> Result<ClientConfig, ExportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|source| ExportError::Tls {
            what: "protocol versions",
            source,
        })?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        if https {
            match &credentials.ca_pem {
                Some(pem) => {
                    for cert in CertificateDer::pem_slice_iter(pem) {
                        let cert = cert.map_err(|_| ExportError::Pem {
                            what: "CA certificate",
                        })?;
                        roots.add(cert).map_err(|source| ExportError::Tls {
                            what: "CA certificate",
                            source,
                        })?;
                    }
                    if roots.is_empty() {
                        return Err(ExportError::Pem {
                            what: "CA certificate",
                        });
                    }
                }
                None => {
                    // Unreadable system certificates are skipped, as
                    // every TLS client does.
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    match &credentials.client_identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ExportError::Pem {
                    what: "client certificate",
                })?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| ExportError::Pem { what: "client key" })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| ExportError::Tls {
                    what: "client certificate",
                    source,
                })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `insecureSkipVerify`: accepts any server certificate, still checking
/// that the handshake is signed by it.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl AcceptAnyServerCert {
    fn new() -> Self {
        Self(Arc::new(rustls::crypto::ring::default_provider()))
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otlp(endpoint: &str, protocol: OtlpProtocol) -> OtlpDestination {
        OtlpDestination {
            endpoint: endpoint.to_owned(),
            protocol,
            signal: Signal::Logs,
            headers_from: None,
            tls: None,
        }
    }

    // gRPC channels start a task, so this needs a runtime.
    #[tokio::test]
    async fn tls_material_and_headers_are_checked_when_the_client_is_built() {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("a self-signed certificate");
        let good = Credentials {
            headers: vec![("Authorization".into(), "Bearer abc".into())],
            ca_pem: Some(pair.cert.pem().into_bytes()),
            client_identity: Some((
                pair.cert.pem().into_bytes(),
                pair.signing_key.serialize_pem().into_bytes(),
            )),
        };
        let http = otlp("https://localhost:4318", OtlpProtocol::Http);
        let client = OtlpClient::new(&http, &good).expect("valid TLS material");
        assert_eq!(client.target(), "https://localhost:4318/v1/logs");

        let bad_ca = Credentials {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..Credentials::default()
        };
        let error = OtlpClient::new(&http, &bad_ca).expect_err("no PEM certificate");
        assert_eq!(error.to_string(), "the CA certificate is not valid PEM");
        let bad_header = Credentials {
            headers: vec![("bad header".into(), "x".into())],
            ..Credentials::default()
        };
        let grpc = otlp("http://127.0.0.1:4317", OtlpProtocol::Grpc);
        let error = OtlpClient::new(&grpc, &bad_header).expect_err("a space in a key");
        assert_eq!(
            error.to_string(),
            "header \"bad header\" from the Secret: not a valid gRPC metadata key"
        );
    }
}
