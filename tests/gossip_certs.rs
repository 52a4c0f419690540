//! `prescale certs` end to end: the files it writes carry a real mutual-TLS QUIC exchange, and
//! bad input exits with status 2.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prescale_gossip::{
    Error, NodeIdentity, ReceiverConfig, SenderConfig, Sketch, SketchReceiver, SketchSender,
    SketchSink,
};

fn prescale() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prescale"))
}

#[derive(Default)]
struct Sink(Mutex<Vec<u64>>);

impl SketchSink for Sink {
    fn last_sequence(&self, _node: &str) -> Result<Option<u64>, Error> {
        Ok(self.0.lock().unwrap().last().copied())
    }

    async fn accept(&self, sketch: Sketch) -> Result<(), Error> {
        self.0.lock().unwrap().push(sketch.sequence);
        Ok(())
    }
}

#[tokio::test]
async fn written_certificates_carry_a_mutual_tls_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let out = prescale()
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--node", "fc-eu", "--node", "proxy-eu-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = |f: &str| dir.path().join(f);
    for f in [
        "ca.pem",
        "ca.key.pem",
        "fc-eu.pem",
        "fc-eu.key.pem",
        "proxy-eu-1.pem",
        "proxy-eu-1.key.pem",
    ] {
        assert!(p(f).is_file(), "{f} missing");
    }
    let fc = NodeIdentity::load(&p("ca.pem"), &p("fc-eu.pem"), &p("fc-eu.key.pem")).unwrap();
    let px =
        NodeIdentity::load(&p("ca.pem"), &p("proxy-eu-1.pem"), &p("proxy-eu-1.key.pem")).unwrap();

    let sink = Arc::new(Sink::default());
    let rx = SketchReceiver::start(
        ReceiverConfig::new("127.0.0.1:0".parse().unwrap(), fc),
        sink.clone(),
    )
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let tx = SketchSender::start(SenderConfig::new(
        "proxy-eu-1",
        "eu",
        rx.local_addr().unwrap(),
        "fc-eu",
        px,
        spool.path(),
    ))
    .unwrap();
    let sequence = tx
        .submit(Sketch::new("proxy-eu-1", "eu", 0, 10_000))
        .unwrap();
    assert!(tx.flush(Duration::from_secs(20)).await, "{:?}", tx.stats());
    assert_eq!(*sink.0.lock().unwrap(), vec![sequence]);
}

#[test]
fn bad_node_name_exits_2_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = prescale()
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--node", "../etc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"../etc\""));
    let out = prescale()
        .args(["certs", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
