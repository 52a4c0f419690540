//! Replays the fuzz seed corpus (`fuzz/corpus/response/`) through the front door's reading of a
//! backend response, as a normal test: `valid-*` inputs are accepted, `invalid-*` refused, any
//! other file (e.g. one a fuzzer added) must just not panic; and for every input the outcome is
//! the same however the body is split into reads.

use std::path::PathBuf;

use prescale_proxy::read_backend_response;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/response")
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("file name")
                .to_string();
            (name, std::fs::read(&path).expect("read seed"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_reads_as_its_name_says_whatever_the_split() {
    let files = corpus();
    assert!(files.len() >= 10, "seed corpus missing: {}", files.len());
    for (name, data) in files {
        let Some((&control, stream)) = data.split_first() else {
            continue;
        };
        let head_only = control & 1 == 1;
        let whole = read_backend_response(stream, head_only, &[]);
        for cuts in [
            vec![usize::from(control >> 1)],
            vec![1, 2, 3, 5, 8, 13],
            (0..stream.len()).collect(),
        ] {
            let split = read_backend_response(stream, head_only, &cuts);
            assert_eq!(whole, split, "{name}: split at {cuts:?}");
        }
        if name.starts_with("valid-") {
            let (head, _) = whole.unwrap_or_else(|e| panic!("{name} refused: {e}"));
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 "), "{name}: {head}");
            assert!(!head.contains("keep-alive"), "{name}: {head}");
        } else if name.starts_with("invalid-") {
            assert!(whole.is_err(), "{name} accepted: {whole:?}");
        }
    }
}

#[test]
fn the_seeds_frame_their_bodies_exactly() {
    let read = |name: &str| {
        let data = std::fs::read(corpus_dir().join(name)).expect("seed");
        let (head, body) = read_backend_response(&data[1..], data[0] & 1 == 1, &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        (String::from_utf8_lossy(&head).into_owned(), body)
    };
    assert_eq!(read("valid-length").1, b"hello");
    assert_eq!(
        read("valid-chunked-trailers").1,
        b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n"
    );
    assert_eq!(read("valid-until-close").1, b"all of this until the end");
    assert!(read("valid-until-close")
        .0
        .ends_with("connection: close\r\n\r\n"));
    assert!(read("valid-head").1.is_empty());
    assert!(read("valid-early-hints").0.starts_with("HTTP/1.1 204"));
    let (head, body) = read("valid-hop-by-hop");
    assert!(!head.to_ascii_lowercase().contains("x-secret"), "{head}");
    assert_eq!(body, b"ok");
}
