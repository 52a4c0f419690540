//! Binds the scaler's TCP listener and serves [`ScalerService`] on it (HTTP/2, gRPC), with TLS
//! when a certificate and key are given (rustls on ring, the crypto stack of the rest of
//! prescale), until the shutdown signal turns true.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::proto::external_scaler_server::ExternalScalerServer;
use crate::{Error, ScalerService};

/// PEM files of the server's certificate chain and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where and how the scaler listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalerListen {
    /// Port 0: one chosen at start (see [`RunningScaler::local_addr`]).
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
}

/// A scaler being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunningScaler {
    pub local_addr: SocketAddr,
    pub tls: bool,
}

impl RunningScaler {
    /// The address KEDA's `scalerAddress` takes (`host:port`).
    pub fn scaler_address(&self) -> String {
        self.local_addr.to_string()
    }
}

/// Binds `listen.addr` now (so a bad address or TLS file fails here, not later) and serves
/// `service` on `runtime` until `shutdown` turns true or its sender is dropped.
pub fn start(
    listen: &ScalerListen,
    service: ScalerService,
    mut shutdown: watch::Receiver<bool>,
    runtime: &tokio::runtime::Handle,
) -> Result<RunningScaler, Error> {
    let mut server = Server::builder();
    if let Some(tls) = &listen.tls {
        let cert = std::fs::read(&tls.cert).map_err(|source| Error::ReadCert {
            path: tls.cert.clone(),
            source,
        })?;
        let key = std::fs::read(&tls.key).map_err(|source| Error::ReadKey {
            path: tls.key.clone(),
            source,
        })?;
        server = server
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|source| Error::Tls { source })?;
    }
    let bind_error = |source| Error::Bind {
        addr: listen.addr,
        source,
    };
    let std_listener = std::net::TcpListener::bind(listen.addr).map_err(bind_error)?;
    std_listener.set_nonblocking(true).map_err(bind_error)?;
    let local_addr = std_listener.local_addr().map_err(bind_error)?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let tls = listen.tls.is_some();
    runtime.spawn(async move {
        let stopped = async move {
            // An error means the sender is gone: the node is stopping too.
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        let served = server
            .serve_with_incoming_shutdown(ExternalScalerServer::new(service), incoming, stopped)
            .await;
        match served {
            Ok(()) => tracing::info!(%local_addr, "KEDA external scaler stopped"),
            Err(e) => tracing::warn!(%local_addr, error = %e, "KEDA external scaler failed"),
        }
    });
    tracing::info!(%local_addr, tls, "KEDA external scaler listening");
    Ok(RunningScaler { local_addr, tls })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use tonic::Code;

    use super::*;
    use crate::proto::external_scaler_client::ExternalScalerClient;
    use crate::proto::{GetMetricsRequest, ScaledObjectRef};
    use crate::{
        FleetReading, FleetRef, LeadForecast, ScalerSource, ScalerStats, SourceError,
        StreamSettings,
    };

    /// One fleet, `eu/web`, whose reading the test changes.
    struct OneFleet(Mutex<FleetReading>);

    impl ScalerSource for OneFleet {
        fn reading(&self, fleet: &FleetRef) -> Result<FleetReading, SourceError> {
            if fleet.region != "eu" || fleet.fleet != "web" {
                return Err(SourceError::NotFound(format!("no fleet `{}`", fleet.fleet)));
            }
            Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
        }
    }

    fn reading(slo_upper: f64) -> FleetReading {
        FleetReading {
            lead_forecast: Some(LeadForecast {
                minute: 1_800_000_000,
                slo_upper,
            }),
            capacity_rps: 2.0,
            planned_instances: 0,
            running_instances: 0,
            hold: None,
        }
    }

    fn object(pairs: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef {
            name: "web".into(),
            namespace: "default".into(),
            scaler_metadata: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    struct Running {
        addr: SocketAddr,
        source: Arc<OneFleet>,
        stats: Arc<ScalerStats>,
        stop: watch::Sender<bool>,
    }

    fn serve(tls: Option<TlsFiles>, streams: StreamSettings) -> Running {
        let source = Arc::new(OneFleet(Mutex::new(reading(0.0))));
        let stats = Arc::new(ScalerStats::default());
        let (stop, stopped) = watch::channel(false);
        let service = ScalerService::new(source.clone(), stats.clone(), streams, stopped.clone());
        let listen = ScalerListen {
            addr: "127.0.0.1:0".parse().expect("address"),
            tls,
        };
        let running = start(
            &listen,
            service,
            stopped,
            &tokio::runtime::Handle::current(),
        )
        .expect("start the scaler");
        Running {
            addr: running.local_addr,
            source,
            stats,
            stop,
        }
    }

    #[tokio::test]
    async fn answers_over_a_real_socket_and_counts_by_outcome() {
        let server = serve(None, StreamSettings::default());
        let mut client = ExternalScalerClient::connect(format!("http://{}", server.addr))
            .await
            .expect("connect");
        *server.source.0.lock().expect("lock") = reading(300.0);
        let web = object(&[("region", "eu"), ("fleet", "web"), ("scalerAddress", "x:1")]);
        let spec = client
            .get_metric_spec(web.clone())
            .await
            .expect("spec")
            .into_inner();
        assert_eq!(spec.metric_specs[0].target_size_float, 2.0);
        let value = client
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(web.clone()),
                metric_name: spec.metric_specs[0].metric_name.clone(),
            })
            .await
            .expect("metrics")
            .into_inner();
        assert_eq!(value.metric_values[0].metric_value_float, 5.0);
        let status = client
            .is_active(object(&[("region", "eu")]))
            .await
            .expect_err("no fleet");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("scalerMetadata.fleet"),
            "{status:?}"
        );
        let status = client
            .is_active(object(&[("region", "eu"), ("fleet", "api")]))
            .await
            .expect_err("unknown fleet");
        assert_eq!(status.code(), Code::NotFound);
        let counts = server.stats.counts();
        let count = |method, outcome| {
            counts
                .iter()
                .find(|(m, o, _)| *m == method && *o == outcome)
                .map(|(_, _, n)| *n)
        };
        assert_eq!(count("GetMetricSpec", "ok"), Some(1));
        assert_eq!(count("GetMetrics", "ok"), Some(1));
        assert_eq!(count("IsActive", "invalid_argument"), Some(1));
        assert_eq!(count("IsActive", "not_found"), Some(1));
    }

    /// The stream's next message, with a guard against hanging forever.
    async fn next<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a message within the hang guard")
    }

    #[tokio::test]
    async fn streams_push_changes_repeat_and_end_at_shutdown() {
        let server = serve(
            None,
            StreamSettings {
                check_every: Duration::from_millis(20),
                repeat_every: Duration::from_millis(200),
            },
        );
        let mut client = ExternalScalerClient::connect(format!("http://{}", server.addr))
            .await
            .expect("connect");
        let web = object(&[("region", "eu"), ("fleet", "web")]);
        let mut stream = client
            .stream_is_active(web.clone())
            .await
            .expect("open")
            .into_inner();
        let first: Option<crate::proto::IsActiveResponse> = next(&mut stream).await.expect("first");
        assert_eq!(first.map(|m| m.result), Some(false));
        *server.source.0.lock().expect("lock") = reading(60.0);
        let changed = next(&mut stream).await.expect("changed");
        assert_eq!(changed.map(|m| m.result), Some(true));
        // Unchanged, it comes again after `repeat_every`.
        let repeated = next(&mut stream).await.expect("repeated");
        assert_eq!(repeated.map(|m| m.result), Some(true));
        let _ = server.stop.send(true);
        // Messages already on their way may come first; then the stream ends.
        while let Ok(Some(_)) = next(&mut stream).await {}
    }

    #[tokio::test]
    async fn serves_tls_with_the_given_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("self-signed certificate");
        let files = TlsFiles {
            cert: dir.path().join("scaler.pem"),
            key: dir.path().join("scaler.key.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, signing_key.serialize_pem()).expect("write key");
        let server = serve(Some(files), StreamSettings::default());
        let channel = Channel::from_shared(format!("https://{}", server.addr))
            .expect("uri")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(cert.pem()))
                    .domain_name("localhost"),
            )
            .expect("client TLS")
            .connect()
            .await
            .expect("TLS connect");
        let mut client = ExternalScalerClient::new(channel);
        let spec = client
            .get_metric_spec(object(&[("region", "eu"), ("fleet", "web")]))
            .await
            .expect("spec over TLS")
            .into_inner();
        assert_eq!(spec.metric_specs[0].metric_name, "prescale-eu-web");
        // A plaintext client gets nowhere.
        let plain = async {
            let mut client = ExternalScalerClient::connect(format!("http://{}", server.addr))
                .await
                .map_err(|e| e.to_string())?;
            client
                .get_metric_spec(object(&[("region", "eu"), ("fleet", "web")]))
                .await
                .map_err(|e| e.to_string())
                .map(|_| ())
        };
        assert!(plain.await.is_err());
    }

    #[test]
    fn an_unreadable_key_is_an_error_naming_the_file() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate").expect("write");
        let listen = ScalerListen {
            addr: "127.0.0.1:0".parse().expect("address"),
            tls: Some(TlsFiles {
                cert: cert.clone(),
                key: dir.path().join("missing.key.pem"),
            }),
        };
        let (_stop, stopped) = watch::channel(false);
        let source = Arc::new(OneFleet(Mutex::new(reading(0.0))));
        let service = ScalerService::new(
            source,
            Arc::new(ScalerStats::default()),
            StreamSettings::default(),
            stopped.clone(),
        );
        match start(&listen, service, stopped, runtime.handle()) {
            Err(Error::ReadKey { path, .. }) => assert!(path.ends_with("missing.key.pem")),
            other => panic!("expected a key read error, got {other:?}"),
        }
    }
}
