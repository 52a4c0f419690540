use proptest::prelude::*;

use super::*;
use crate::fields::HeaderFields;

fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
    pairs
        .iter()
        .map(|(name, value)| httparse::Header {
            name,
            value: value.as_bytes(),
        })
        .collect()
}

fn host(
    version: Version,
    authority: Option<&str>,
    pairs: &[(&str, &str)],
) -> Result<(), HeadError> {
    let parsed = fields(pairs);
    check_host(
        version,
        authority.map(str::as_bytes),
        &HeaderFields::new(&parsed),
    )
}

#[test]
fn host_follows_rfc_9112() {
    use Version::*;
    assert_eq!(host(Http11, None, &[("Host", "example.com")]), Ok(()));
    assert_eq!(host(Http11, None, &[("host", "example.com:8080")]), Ok(()));
    assert_eq!(host(Http11, None, &[("Host", "[::1]:8080")]), Ok(()));
    assert_eq!(host(Http11, None, &[("Host", "127.0.0.1")]), Ok(()));
    assert_eq!(
        host(Http11, None, &[("Host", "")]),
        Ok(()),
        "empty is allowed"
    );
    assert_eq!(host(Http11, None, &[]), Err(HeadError::NoHost));
    assert_eq!(host(Http10, None, &[]), Ok(()));
    assert_eq!(
        host(Http11, None, &[("Host", "a"), ("host", "b")]),
        Err(HeadError::ManyHosts)
    );
    assert_eq!(
        host(Http11, None, &[("Host", "a"), ("Host", "a")]),
        Err(HeadError::ManyHosts),
        "even when equal"
    );
    assert_eq!(
        host(Http11, None, &[("Host", "user:pw@example.com")]),
        Err(HeadError::HostUserinfo)
    );
    for bad in [
        "exa mple.com",
        "example.com:http",
        "example.com:123456",
        "[::1",
        "[zz]",
        "a/b",
    ] {
        assert_eq!(
            host(Http11, None, &[("Host", bad)]),
            Err(HeadError::BadHost),
            "{bad}"
        );
    }
    assert_eq!(
        host(Http11, Some("example.com"), &[("Host", "EXAMPLE.com")]),
        Ok(())
    );
    assert_eq!(
        host(Http11, Some("example.com"), &[("Host", "evil.example")]),
        Err(HeadError::HostMismatch)
    );
    assert_eq!(
        host(Http11, Some("u@example.com"), &[("Host", "example.com")]),
        Err(HeadError::HostUserinfo)
    );
    assert_eq!(host(Http2, Some("example.com"), &[]), Ok(()));
    assert_eq!(host(Http2, None, &[]), Err(HeadError::NoHost));
    assert_eq!(
        host(Http2, Some("example.com"), &[("host", "other.example")]),
        Err(HeadError::HostMismatch)
    );
}

#[test]
fn paths_are_normalised_as_rfc_3986_says() {
    let cases = [
        ("/", "/"),
        ("/api/orders", "/api/orders"),
        ("/api/../batch/export", "/batch/export"),
        ("/api/./orders", "/api/orders"),
        ("/a/b/c/./../../g", "/a/g"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/api/..", "/"),
        ("/api/.", "/api/"),
        ("/%61pi/orders", "/api/orders"),
        ("/api/%2e%2e/batch", "/batch"),
        ("/api/%2E%2E/batch", "/batch"),
        ("/a%2fb", "/a%2Fb"),
        ("/%7euser", "/~user"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/.well-known/acme", "/.well-known/acme"),
        ("/a/..b/c", "/a/..b/c"),
        ("/a//b", "/a//b"),
    ];
    for (path, normal) in cases {
        assert_eq!(normalize_path(path).as_deref(), Ok(normal), "{path}");
    }
    assert!(matches!(
        normalize_path("/api/orders"),
        Ok(Cow::Borrowed(_))
    ));
    for bad in ["/%", "/%4", "/%zz", "/a%g0"] {
        assert_eq!(normalize_path(bad), Err(HeadError::BadEscape), "{bad}");
    }
    assert_eq!(normalize_path("/a%00b"), Err(HeadError::EscapedNul));
}

#[test]
fn the_proxy_owns_the_forwarding_fields() {
    let strict = ForwardingPolicy { underscores: false };
    for name in ["X-Forwarded-For", "x-forwarded-proto"] {
        assert!(
            strict.drops(name, true) && strict.drops(name, false),
            "{name}"
        );
    }
    for name in [
        "X-Forwarded-Host",
        "x-forwarded-port",
        "X-Real-IP",
        "Forwarded",
    ] {
        assert!(strict.drops(name, false), "{name} from an untrusted peer");
        assert!(!strict.drops(name, true), "{name} from a trusted peer");
    }
    assert!(strict.drops("X_User_Id", true));
    assert!(!strict.drops("X-User-Id", false));
    let lenient = ForwardingPolicy { underscores: true };
    assert!(!lenient.drops("X_User_Id", false));
}

proptest! {
    #[test]
    fn normalising_is_idempotent_and_leaves_no_dot_segment(
        segments in proptest::collection::vec(
            prop_oneof![
                Just("..".to_string()),
                Just(".".to_string()),
                Just("%2e".to_string()),
                Just("%2E%2e".to_string()),
                Just("%2f".to_string()),
                Just(String::new()),
                "[a-z0-9._~-]{1,6}",
                "(%[0-9a-fA-F]{2}){1,2}",
            ],
            0..8,
        )
    ) {
        let path = format!("/{}", segments.join("/"));
        match normalize_path(&path) {
            Ok(normal) => {
                prop_assert!(normal.starts_with('/'), "{path} -> {normal}");
                let again = normalize_path(&normal).expect("a normal path normalises");
                prop_assert_eq!(&again, &normal);
                prop_assert!(matches!(again, Cow::Borrowed(_)), "{normal} is already normal");
                for segment in normal.split('/') {
                    prop_assert!(segment != "." && segment != "..", "{path} -> {normal}");
                }
            }
            Err(e) => prop_assert_eq!(e, HeadError::EscapedNul, "{}", path),
        }
    }
}
