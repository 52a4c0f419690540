//! Active health checks: one `GET` of the fleet's `health_check.path` per backend and round,
//! sent over the backend's own peer (so TLS, SNI, certificate verification, ALPN and client
//! certificates are the ones its requests use), through one connector per fleet, on a fresh
//! connection each time (a check proves the backend accepts connections). A 2xx answer within
//! the timeout passes.

use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};
use prescale_config::FleetConfig;

/// The `Host` of a check to a backend without a server name.
const DEFAULT_HOST: &str = "localhost";

pub struct HealthProbe {
    connector: Connector,
    path: String,
    timeout: Duration,
}

impl HealthProbe {
    pub fn new(config: &FleetConfig) -> Self {
        HealthProbe {
            connector: Connector::new(None),
            path: config.health_check.path.clone(),
            timeout: Duration::from_millis(config.health_check.timeout_ms),
        }
    }

    /// Probes the backend `peer` connects to.
    pub async fn check(&self, peer: &HttpPeer) -> Result<()> {
        let mut peer = peer.clone();
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.total_connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        match pingora_timeout::timeout(self.timeout, self.exchange(&peer)).await {
            Ok(result) => result,
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                format!("no answer to the health check within {:?}", self.timeout),
            ),
        }
    }

    async fn exchange(&self, peer: &HttpPeer) -> Result<()> {
        let host = if peer.sni().is_empty() {
            DEFAULT_HOST
        } else {
            peer.sni()
        };
        let (mut session, _reused) = self.connector.get_http_session(peer).await?;
        // Over HTTP/2 pingora takes the `:authority` from `Host`.
        let mut request = RequestHeader::build("GET", self.path.as_bytes(), None)?;
        request.insert_header("Host", host)?;
        session.write_request_header(Box::new(request)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session
            .response_header()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if !(200..300).contains(&status) {
            return Error::e_explain(
                ErrorType::CustomCode("health check status", status),
                format!("health check answered {status}, not 2xx"),
            );
        }
        while session.read_response_body().await?.is_some() {}
        session.shutdown().await;
        Ok(())
    }
}
