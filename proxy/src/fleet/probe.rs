//! Active health checks: one `GET` of the fleet's `health_check.path` per backend and round,
//! or with `health_check.grpc_service` one call of the gRPC health protocol
//! (`grpc.health.v1.Health/Check`), sent over the backend's own peer (so TLS, SNI, certificate
//! verification, ALPN and client certificates are the ones its requests use), through one
//! connector per fleet, on a fresh connection each time (a check proves the backend accepts
//! connections). A 2xx answer within the timeout passes; a gRPC check passes on `grpc-status`
//! 0 with the status SERVING.

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};
use prescale_config::FleetConfig;

/// The `Host` of a check to a backend without a server name.
const DEFAULT_HOST: &str = "localhost";
/// The gRPC health protocol's method.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// Most bytes of a gRPC health answer read (the message is a few bytes).
const GRPC_ANSWER_LIMIT: usize = 4096;

pub struct HealthProbe {
    connector: Connector,
    kind: ProbeKind,
    timeout: Duration,
}

enum ProbeKind {
    /// `GET path`, any 2xx.
    Http { path: String },
    /// `grpc.health.v1.Health/Check` of `service`, SERVING.
    Grpc { service: String },
}

impl HealthProbe {
    pub fn new(config: &FleetConfig) -> Self {
        let kind = match &config.health_check.grpc_service {
            Some(service) => ProbeKind::Grpc {
                service: service.clone(),
            },
            None => ProbeKind::Http {
                path: config.health_check.path.clone(),
            },
        };
        HealthProbe {
            connector: Connector::new(None),
            kind,
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
        let path = match &self.kind {
            ProbeKind::Http { path } => path,
            ProbeKind::Grpc { service } => return grpc_check(&mut session, host, service).await,
        };
        // Over HTTP/2 pingora takes the `:authority` from `Host`.
        let mut request = RequestHeader::build("GET", path.as_bytes(), None)?;
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

/// One `grpc.health.v1.Health/Check` call on `session`: passes when the call succeeds
/// (`grpc-status` 0, in the trailers or a trailers-only answer) with the status SERVING.
async fn grpc_check(session: &mut HttpSession, host: &str, service: &str) -> Result<()> {
    if !matches!(session, HttpSession::H2(_)) {
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "the gRPC health check needs HTTP/2, and the backend answered over HTTP/1.1",
        );
    }
    let mut request = RequestHeader::build("POST", GRPC_HEALTH_CHECK.as_bytes(), None)?;
    request.insert_header("Host", host)?;
    request.insert_header("content-type", "application/grpc")?;
    request.insert_header("te", "trailers")?;
    session.write_request_header(Box::new(request)).await?;
    session
        .write_request_body(Bytes::from(grpc_check_request(service)), true)
        .await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let head = session.response_header().cloned();
    let status = head.as_ref().map(|r| r.status.as_u16()).unwrap_or(0);
    if status != 200 {
        return Error::e_explain(
            ErrorType::CustomCode("health check status", status),
            format!("gRPC health check answered HTTP {status}, not 200"),
        );
    }
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await? {
        if body.len() + chunk.len() > GRPC_ANSWER_LIMIT {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "gRPC health answer longer than 4096 bytes",
            );
        }
        body.extend_from_slice(&chunk);
    }
    let trailers = match session {
        HttpSession::H2(h2) => h2.read_trailers().await?,
        _ => None,
    };
    let field = |name: &str| {
        trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| head.as_ref().and_then(|h| h.headers.get(name)))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    session.shutdown().await;
    match field("grpc-status").as_deref() {
        Some("0") => {}
        Some(code) => {
            let message = field("grpc-message").unwrap_or_default();
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                format!("gRPC health check failed: grpc-status {code} {message}"),
            );
        }
        None => {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "gRPC health answer without grpc-status",
            )
        }
    }
    match serving_status(&body) {
        Ok(SERVING) => Ok(()),
        Ok(other) => Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            format!("gRPC health check answered {}", status_name(other)),
        ),
        Err(why) => Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            format!("gRPC health answer unreadable: {why}"),
        ),
    }
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".to_string(),
        1 => "SERVING".to_string(),
        2 => "NOT_SERVING".to_string(),
        3 => "SERVICE_UNKNOWN".to_string(),
        other => format!("status {other}"),
    }
}

/// A gRPC message frame (uncompressed) holding `HealthCheckRequest { service }`.
fn grpc_check_request(service: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(service.len() + 4);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0); // not compressed
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> std::result::Result<u64, &'static str> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes")
}

/// The `status` of the one `HealthCheckResponse` in `body` (a gRPC frame); fields other than
/// `status` are skipped, and an absent status is UNKNOWN (0), as protobuf decodes it.
fn serving_status(body: &[u8]) -> std::result::Result<u64, &'static str> {
    let header = body.get(..5).ok_or("shorter than a gRPC frame header")?;
    if header[0] != 0 {
        return Err("compressed message");
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let message = body.get(5..5 + len).ok_or("frame longer than the body")?;
    if body.len() != 5 + len {
        return Err("more than one message");
    }
    let mut at = 0;
    let mut status = 0;
    while at < message.len() {
        let tag = read_varint(message, &mut at)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = read_varint(message, &mut at)?,
            (_, 0) => {
                read_varint(message, &mut at)?;
            }
            (_, 1) => at = at.checked_add(8).ok_or("field past the end")?,
            (_, 2) => {
                let len = read_varint(message, &mut at)? as usize;
                at = at.checked_add(len).ok_or("field past the end")?;
            }
            (_, 5) => at = at.checked_add(4).ok_or("field past the end")?,
            _ => return Err("unknown wire type"),
        }
        if at > message.len() {
            return Err("field past the end");
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_request_is_one_uncompressed_frame_of_the_service_name() {
        assert_eq!(grpc_check_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_check_request("api"),
            vec![0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'i']
        );
    }

    #[test]
    fn the_serving_status_is_read_and_bad_answers_are_errors() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(SERVING));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Ok(0), "absent: UNKNOWN");
        // An unknown field before the status is skipped.
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
            Ok(SERVING)
        );
        assert!(serving_status(&[0, 0, 0]).is_err());
        assert!(serving_status(&[1, 0, 0, 0, 2, 0x08, 1]).is_err());
        assert!(serving_status(&[0, 0, 0, 0, 9, 0x08, 1]).is_err());
        assert!(serving_status(&[0, 0, 0, 0, 1, 0x08]).is_err());
        assert!(serving_status(&[0, 0, 0, 0, 2, 0x12, 9]).is_err());
        assert!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1, 0]).is_err());
        assert!(serving_status(&[
            0, 0, 0, 0, 11, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
        ])
        .is_err());
    }
}
