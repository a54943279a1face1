//! Connections to the agents: one lazily connected channel per address, over mutual TLS
//! unless the gateway runs in plaintext mode.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use edgewise_proto as pb;
use tonic::transport::{Channel, Endpoint};

/// The agent connections.
#[derive(Default)]
pub struct AgentPool {
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<edgewise_tls::net::ClientConfigSource>,
}

pub type AgentClient = pb::agent_client::AgentClient<Channel>;

impl AgentPool {
    pub fn new(tls: Option<edgewise_tls::net::ClientConfigSource>) -> Self {
        Self {
            channels: Mutex::default(),
            tls,
        }
    }

    pub fn client(&self, addr: &str) -> Result<AgentClient, String> {
        let mut m = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(addr) {
            return Ok(AgentClient::new(c.clone()));
        }
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("bad agent address `{addr}`: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let ch = match &self.tls {
            Some(tls) => edgewise_tls::net::channel_lazy(endpoint, tls.clone()),
            None => endpoint.connect_lazy(),
        };
        m.insert(addr.to_string(), ch.clone());
        Ok(AgentClient::new(ch))
    }
}
