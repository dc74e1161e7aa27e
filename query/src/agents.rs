//! The agents sonde-query can reach: node name → the agent's Flight URL
//! (which also serves its distributed worker), and how to call them.
//!
//! [`AgentDirectory`] is read synchronously by the planner (the worker
//! resolver cannot await) and replaced whole by discovery. [`Connections`]
//! holds one lazily connected channel per URL, each call carrying the
//! agents' bearer token, and checks each worker's plan dialect once.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use arrow_flight::flight_service_client::FlightServiceClient;
use datafusion::common::DataFusionError;
use datafusion_distributed::{
    ChannelResolver, GetWorkerInfoRequest, WorkerChannel,
    grpc::{BoxCloneSyncChannel, create_worker_client},
};
use http::{HeaderValue, header::AUTHORIZATION};
use tonic::{
    body::Body,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use url::Url;

use crate::Error;

/// How long a call to an agent may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The agents by node, kept current by discovery (or fixed by flags).
#[derive(Clone, Default)]
pub struct AgentDirectory {
    agents: Arc<RwLock<BTreeMap<String, Url>>>,
}

impl AgentDirectory {
    pub fn new(agents: BTreeMap<String, Url>) -> Self {
        Self {
            agents: Arc::new(RwLock::new(agents)),
        }
    }

    /// Every agent, by node.
    pub fn snapshot(&self) -> BTreeMap<String, Url> {
        // A panic while writing leaves a whole map (writes replace it).
        self.agents
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, agents: BTreeMap<String, Url>) {
        *self
            .agents
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = agents;
    }

    pub fn url(&self, node: &str) -> Option<Url> {
        self.agents
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .cloned()
    }

    /// The node an agent URL belongs to.
    pub fn node_of(&self, url: &Url) -> Option<String> {
        self.agents
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(_, u)| *u == url)
            .map(|(n, _)| n.clone())
    }
}

/// How sonde-query calls agents.
#[derive(Clone, Debug, Default)]
pub struct AgentAuth {
    /// The agents' bearer token (the worker port takes the same one).
    pub token: Option<String>,
    /// PEM CA certificate that signed the agents' certificates; with it,
    /// `https://` agent URLs are verified against it.
    pub ca: Option<Vec<u8>>,
}

/// One channel per agent URL, each call carrying the bearer token.
#[derive(Clone)]
pub struct Connections {
    auth: Arc<AgentAuth>,
    header: Option<HeaderValue>,
    channels: Arc<Mutex<HashMap<Url, Channel>>>,
    /// The worker version each URL reported, once known.
    versions: Arc<Mutex<HashMap<Url, String>>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl Connections {
    pub fn new(auth: AgentAuth) -> Result<Self, Error> {
        let header = match &auth.token {
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| Error::TokenNotAscii)?,
            ),
            None => None,
        };
        Ok(Self {
            auth: Arc::new(auth),
            header,
            channels: Arc::default(),
            versions: Arc::default(),
        })
    }

    fn channel(&self, url: &Url) -> Result<Channel, Error> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let invalid = |source| Error::AgentUrl {
            url: url.to_string(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(invalid)?
            .connect_timeout(CONNECT_TIMEOUT);
        if url.scheme() == "https" {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &self.auth.ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            endpoint = endpoint.tls_config(tls).map_err(invalid)?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(url.clone(), channel.clone());
        Ok(channel)
    }

    /// The channel to `url` with the bearer token on every request.
    pub fn authorized(&self, url: &Url) -> Result<BoxCloneSyncChannel, Error> {
        let header = self.header.clone();
        let channel = self.channel(url)?;
        Ok(BoxCloneSyncChannel::new(
            tower::ServiceBuilder::new()
                .map_request(move |mut request: http::Request<Body>| {
                    if let Some(header) = &header {
                        request.headers_mut().insert(AUTHORIZATION, header.clone());
                    }
                    request
                })
                .service(channel),
        ))
    }

    /// A Flight client of the agent at `url`.
    pub fn flight(&self, url: &Url) -> Result<FlightServiceClient<BoxCloneSyncChannel>, Error> {
        Ok(FlightServiceClient::new(self.authorized(url)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// The plan dialect of the worker at `url`, asked once and remembered
    /// for the URL (an agent of another build comes back on a new pod
    /// address; a restarted agent is asked again after a failure).
    pub async fn worker_version(&self, url: &Url) -> Result<String, DataFusionError> {
        if let Some(version) = self
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(url)
        {
            return Ok(version.clone());
        }
        let channel = self
            .authorized(url)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut client = create_worker_client(channel);
        let version = client
            .get_worker_info(GetWorkerInfoRequest {})
            .await?
            .version;
        self.versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(url.clone(), version.clone());
        Ok(version)
    }

    /// Forgets what an agent reported, after a call to it failed.
    pub fn forget(&self, url: &Url) {
        self.versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(url);
    }
}

#[tonic::async_trait]
impl ChannelResolver for Connections {
    async fn get_worker_client_for_url(
        &self,
        url: &Url,
    ) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        let channel = self
            .authorized(url)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(create_worker_client(channel))
    }
}
