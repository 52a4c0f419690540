use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{encode, EncodingKey, Header};
use proptest::prelude::*;

use super::*;

const SECRET: &str = "0123456789abcdef-test-secret";
const HMAC: &str = "hmac-test-secret-0123456789";

fn ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/identity/testdata")
        .join(name)
}

fn config(sources: Vec<IdentitySource>) -> IdentityConfig {
    IdentityConfig {
        secret: SECRET.into(),
        sources,
        max_len: 64,
        new_users_per_client_per_sec: 100,
    }
}

fn resolver(sources: Vec<IdentitySource>) -> IdentityResolver {
    IdentityResolver::new(&config(sources)).expect("valid identity config")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt_source(jwt: JwtVerification) -> Vec<IdentitySource> {
    vec![IdentitySource::Bearer { jwt: Some(jwt) }]
}

fn hmac_verification() -> JwtVerification {
    JwtVerification {
        hmac_secret: Some(HMAC.into()),
        rsa_public_key_file: None,
        ec_public_key_file: None,
        issuer: Some("https://issuer.example".to_string()),
        audience: Some("prescale".to_string()),
    }
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn good_claims(sub: &str) -> serde_json::Value {
    serde_json::json!({"sub": sub, "exp": now() + 600, "iss": "https://issuer.example", "aud": "prescale"})
}

fn bearer(token: &str) -> HeaderMap {
    headers(&[("authorization", &format!("Bearer {token}"))])
}

#[test]
fn default_sources_header_then_bearer_then_ip() {
    let r = IdentityResolver::new(&IdentityConfig {
        secret: SECRET.into(),
        sources: prescale_config::default_identity_sources(),
        max_len: 256,
        new_users_per_client_per_sec: 100,
    })
    .unwrap();
    let by_header = r
        .resolve(&headers(&[("x-user-id", "alice")]), ip())
        .unwrap();
    assert_eq!(
        by_header,
        r.resolve(&headers(&[("X-User-Id", "alice")]), ip())
            .unwrap()
    );
    assert_eq!(r.hash(SourceKind::Header, b"alice"), by_header);
    let by_ip = r.resolve(&HeaderMap::new(), ip()).unwrap();
    assert_eq!(by_ip, r.client_ip_key(ip()));
    assert_ne!(by_header, by_ip);
    // The header wins over a bearer token.
    let both = headers(&[
        ("x-user-id", "alice"),
        ("authorization", "Bearer opaque-token"),
    ]);
    assert_eq!(r.resolve(&both, ip()).unwrap(), by_header);
    // Without a key, a JWT's sub is used unverified; an opaque token is hashed whole.
    let jwt = hs256(good_claims("alice"), "any-secret-at-all-xxxxxxxx");
    assert_eq!(
        r.resolve(&bearer(&jwt), ip()).unwrap(),
        r.hash(SourceKind::BearerSubject, b"alice")
    );
    assert_eq!(
        r.resolve(&bearer("opaque-token"), ip()).unwrap(),
        r.hash(SourceKind::BearerToken, b"opaque-token")
    );
    // Another authorization scheme is not a bearer identity: fall through to the address.
    assert_eq!(
        r.resolve(
            &headers(&[("authorization", "Basic YWxhZGRpbjpvcGVu")]),
            ip()
        )
        .unwrap(),
        by_ip
    );
}

#[test]
fn source_kinds_are_separate_domains() {
    let r = resolver(vec![
        IdentitySource::Header {
            name: "x-user-id".into(),
        },
        IdentitySource::Cookie { name: "sid".into() },
        IdentitySource::ApiKey {
            header: "x-api-key".into(),
        },
    ]);
    let h = r
        .resolve(&headers(&[("x-user-id", "alice")]), ip())
        .unwrap();
    let c = r
        .resolve(&headers(&[("cookie", "theme=dark; sid=alice")]), ip())
        .unwrap();
    let k = r
        .resolve(&headers(&[("x-api-key", "alice")]), ip())
        .unwrap();
    assert_ne!(h, c);
    assert_ne!(c, k);
    assert_ne!(h, k);
}

#[test]
fn cookie_parsing() {
    let r = resolver(vec![IdentitySource::Cookie { name: "sid".into() }]);
    let plain = r.resolve(&headers(&[("cookie", "sid=abc")]), ip()).unwrap();
    assert_eq!(
        r.resolve(&headers(&[("cookie", "a=1;  sid=\"abc\" ;b=2")]), ip())
            .unwrap(),
        plain
    );
    assert_eq!(
        r.resolve(&headers(&[("cookie", "a=1"), ("cookie", "sid=abc")]), ip())
            .unwrap(),
        plain
    );
    // `xsid` is not `sid`; absent cookie falls back to the address.
    assert_eq!(
        r.resolve(&headers(&[("cookie", "xsid=abc")]), ip())
            .unwrap(),
        r.client_ip_key(ip())
    );
    let err = r
        .resolve(&headers(&[("cookie", "sid=")]), ip())
        .unwrap_err();
    assert_eq!(err.status(), 400);
}

#[test]
fn malformed_and_oversized_identities() {
    let r = resolver(vec![IdentitySource::Header {
        name: "x-user-id".into(),
    }]);
    for bad in ["", "a b", "caf\u{e9}"] {
        let mut map = HeaderMap::new();
        map.insert(
            "x-user-id",
            HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
        );
        let err = r.resolve(&map, ip()).unwrap_err();
        assert_eq!(err.status(), 400, "{bad:?}");
    }
    let mut tab = HeaderMap::new();
    tab.insert("x-user-id", HeaderValue::from_bytes(b"a\tb").unwrap());
    assert_eq!(r.resolve(&tab, ip()).unwrap_err().status(), 400);
    let twice = headers(&[("x-user-id", "a"), ("x-user-id", "b")]);
    assert_eq!(r.resolve(&twice, ip()).unwrap_err().status(), 400);
    let long = "x".repeat(65);
    let err = r
        .resolve(&headers(&[("x-user-id", &long)]), ip())
        .unwrap_err();
    assert_eq!(err.status(), 431);
    // Errors never carry the value.
    let secret_value = "very-private-user-identifier-with-a space";
    let err = r
        .resolve(&headers(&[("x-user-id", secret_value)]), ip())
        .unwrap_err();
    assert!(!err.to_string().contains("very-private"), "{err}");
    assert!(!format!("{err:?}").contains("very-private"));
    // Surrounding whitespace is not part of the identity.
    assert_eq!(
        r.resolve(&headers(&[("x-user-id", " bob ")]), ip())
            .unwrap(),
        r.resolve(&headers(&[("x-user-id", "bob")]), ip()).unwrap()
    );
}

#[test]
fn jwt_hmac_verification() {
    let r = resolver(jwt_source(hmac_verification()));
    let ok = r
        .resolve(&bearer(&hs256(good_claims("alice"), HMAC)), ip())
        .unwrap();
    assert_eq!(ok, r.hash(SourceKind::BearerSubject, b"alice"));
    // Wrong key, expired, wrong issuer/audience, missing sub: 401.
    let wrong_key = hs256(good_claims("alice"), "another-secret-0123456789");
    assert_eq!(
        r.resolve(&bearer(&wrong_key), ip()).unwrap_err().status(),
        401
    );
    let mut expired = good_claims("alice");
    expired["exp"] = serde_json::json!(now() - 3600);
    let err = r.resolve(&bearer(&hs256(expired, HMAC)), ip()).unwrap_err();
    assert_eq!(
        err,
        IdentityError::Unauthorized {
            kind: SourceKind::BearerSubject,
            reason: "the token has expired"
        }
    );
    let mut issuer = good_claims("alice");
    issuer["iss"] = serde_json::json!("https://evil.example");
    assert_eq!(
        r.resolve(&bearer(&hs256(issuer, HMAC)), ip())
            .unwrap_err()
            .status(),
        401
    );
    let mut audience = good_claims("alice");
    audience["aud"] = serde_json::json!("someone-else");
    assert_eq!(
        r.resolve(&bearer(&hs256(audience, HMAC)), ip())
            .unwrap_err()
            .status(),
        401
    );
    let no_sub =
        serde_json::json!({"exp": now() + 600, "iss": "https://issuer.example", "aud": "prescale"});
    assert_eq!(
        r.resolve(&bearer(&hs256(no_sub, HMAC)), ip())
            .unwrap_err()
            .status(),
        401
    );
    // Malformed tokens: 400.
    for token in ["not-a-jwt", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        assert_eq!(
            r.resolve(&bearer(token), ip()).unwrap_err().status(),
            400,
            "{token}"
        );
    }
    // An oversized subject is 431.
    let long_sub = "s".repeat(65);
    assert_eq!(
        r.resolve(&bearer(&hs256(good_claims(&long_sub), HMAC)), ip())
            .unwrap_err()
            .status(),
        431
    );
    // An absent token falls through; `Bearer` without a token is malformed.
    assert_eq!(
        r.resolve(&HeaderMap::new(), ip()).unwrap(),
        r.client_ip_key(ip())
    );
    assert_eq!(
        r.resolve(&headers(&[("authorization", "Bearer")]), ip())
            .unwrap_err()
            .status(),
        400
    );
}

#[test]
fn jwt_rsa_and_ec_verification() {
    let rsa = resolver(jwt_source(JwtVerification {
        hmac_secret: None,
        rsa_public_key_file: Some(testdata("rsa-test-public.pem")),
        ec_public_key_file: None,
        issuer: None,
        audience: None,
    }));
    let claims = serde_json::json!({"sub": "carol", "exp": now() + 600, "aud": "anything"});
    let rsa_key =
        EncodingKey::from_rsa_pem(include_bytes!("testdata/rsa-test-private.pem")).unwrap();
    let token = encode(&Header::new(Algorithm::RS256), &claims, &rsa_key).unwrap();
    assert_eq!(
        rsa.resolve(&bearer(&token), ip()).unwrap(),
        rsa.hash(SourceKind::BearerSubject, b"carol")
    );
    // An HMAC token against an RSA key is refused (no algorithm confusion).
    assert_eq!(
        rsa.resolve(&bearer(&hs256(claims.clone(), HMAC)), ip())
            .unwrap_err()
            .status(),
        401
    );

    let ec = resolver(jwt_source(JwtVerification {
        hmac_secret: None,
        rsa_public_key_file: None,
        ec_public_key_file: Some(testdata("ec-test-public.pem")),
        issuer: None,
        audience: None,
    }));
    let ec_key = EncodingKey::from_ec_pem(include_bytes!("testdata/ec-test-private.pem")).unwrap();
    let token = encode(&Header::new(Algorithm::ES256), &claims, &ec_key).unwrap();
    assert_eq!(
        ec.resolve(&bearer(&token), ip()).unwrap(),
        ec.hash(SourceKind::BearerSubject, b"carol")
    );
    // A token signed by another key: tamper with the signature.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert!(matches!(
        ec.resolve(&bearer(&tampered), ip()).unwrap_err().status(),
        400 | 401
    ));
}

#[test]
fn key_files_missing_or_invalid_are_startup_errors() {
    let missing = IdentityResolver::new(&config(jwt_source(JwtVerification {
        hmac_secret: None,
        rsa_public_key_file: Some(testdata("does-not-exist.pem")),
        ec_public_key_file: None,
        issuer: None,
        audience: None,
    })))
    .unwrap_err();
    let message = missing.to_string();
    assert!(
        message.contains("identity.sources[0].jwt") && message.contains("does-not-exist.pem"),
        "{message}"
    );
    let invalid = IdentityResolver::new(&config(jwt_source(JwtVerification {
        hmac_secret: None,
        rsa_public_key_file: Some(testdata("README.md")),
        ec_public_key_file: None,
        issuer: None,
        audience: None,
    })))
    .unwrap_err();
    assert!(
        invalid.to_string().contains("not a PEM RSA public key"),
        "{invalid}"
    );
    let wrong_kind = IdentityResolver::new(&config(jwt_source(JwtVerification {
        hmac_secret: None,
        rsa_public_key_file: None,
        ec_public_key_file: Some(testdata("rsa-test-public.pem")),
        issuer: None,
        audience: None,
    })));
    assert!(wrong_kind.is_err());
    let bad_header = IdentityResolver::new(&config(vec![IdentitySource::Header {
        name: "bad header".into(),
    }]));
    assert!(bad_header.is_err());
}

#[test]
fn ipv4_mapped_addresses_are_the_same_user() {
    let r = resolver(vec![IdentitySource::ClientIp]);
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(
        r.resolve(&HeaderMap::new(), v4).unwrap(),
        r.resolve(&HeaderMap::new(), mapped).unwrap()
    );
}

proptest! {
    #[test]
    fn equal_inputs_equal_keys_and_secrets_matter(id in "[!-~]{1,64}", other_secret in "[a-z]{16,32}") {
        prop_assume!(other_secret != SECRET);
        let a = resolver(vec![IdentitySource::Header { name: "x-user-id".into() }]);
        let b = resolver(vec![IdentitySource::Header { name: "x-user-id".into() }]);
        let map = headers(&[("x-user-id", &id)]);
        prop_assert_eq!(a.resolve(&map, ip()).unwrap(), b.resolve(&map, ip()).unwrap());
        let c = IdentityResolver::new(&IdentityConfig {
            secret: other_secret.into(),
            sources: vec![IdentitySource::Header { name: "x-user-id".into() }],
            max_len: 64,
            new_users_per_client_per_sec: 100,
        }).unwrap();
        prop_assert_ne!(a.resolve(&map, ip()).unwrap(), c.resolve(&map, ip()).unwrap());
    }

    #[test]
    fn arbitrary_header_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..300)) {
        let r = IdentityResolver::new(&IdentityConfig {
            secret: SECRET.into(),
            sources: vec![
                IdentitySource::Header { name: "x-user-id".into() },
                IdentitySource::Cookie { name: "sid".into() },
                IdentitySource::Bearer { jwt: Some(hmac_verification()) },
            ],
            max_len: 256,
            new_users_per_client_per_sec: 100,
        }).unwrap();
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            for name in ["x-user-id", "cookie", "authorization"] {
                let mut map = HeaderMap::new();
                map.insert(HeaderName::from_static(name), v.clone());
                if let Err(e) = r.resolve(&map, ip()) {
                    prop_assert!(matches!(e.status(), 400 | 401 | 431));
                }
            }
        }
    }
}

#[test]
fn no_secret_reaches_debug_output_of_the_config_or_the_data_plane() {
    let admin_token = "admin-token-0123456789-test";
    let text = format!(
        r#"
        [admin]
        token = "{admin_token}"
        [identity]
        secret = "{SECRET}"
        sources = [{{ kind = "bearer", jwt = {{ hmac_secret = "{HMAC}" }} }}]
        [[regions]]
        name = "eu"
        countries = ["GB"]
        default_fleet = "web"
        [[fleets]]
        name = "web"
        region = "eu"
        backends = ["127.0.0.1:1"]
        "#
    );
    let config = prescale_config::parse_str(&text, "test").expect("valid test config");
    let plane = crate::dataplane::DataPlane::new(&config).expect("data plane");
    for (what, shown) in [
        ("config", format!("{config:?}")),
        ("data plane", format!("{plane:?}")),
        ("data plane (pretty)", format!("{plane:#?}")),
    ] {
        assert!(shown.contains("<redacted>"), "{what}: {shown}");
        for secret in [SECRET, HMAC, admin_token] {
            assert!(!shown.contains(secret), "{what} shows `{secret}`: {shown}");
        }
    }
}
