use std::net::IpAddr;
use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

fn db(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/geoip")
        .join(name)
}

fn config(database: Option<PathBuf>) -> Config {
    let mut config = prescale_config::parse_str(
        r#"
        [node]
        region = "eu"
        [identity]
        secret = "0123456789abcdef0123"
        [[regions]]
        name = "eu"
        countries = ["GB", "SE", "DE"]
        [[regions]]
        name = "us"
        countries = ["US"]
        [[regions]]
        name = "asia"
        countries = ["CN", "JP"]
        [[fleets]]
        name = "web"
        region = "eu"
        backends = ["127.0.0.1:1"]
        "#,
        "test",
    )
    .expect("valid test config");
    config.geo.database = database;
    config
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn region_name(geo: &GeoResolver, addr: &str) -> String {
    geo.name(geo.region_of(ip(addr))).to_string()
}

#[test]
fn geoip2_country_and_city_schema() {
    for file in ["GeoIP2-Country-Test.mmdb", "GeoIP2-City-Test.mmdb"] {
        let geo = GeoResolver::open(&config(Some(db(file)))).unwrap();
        assert_eq!(geo.schema(), Some(CountrySchema::GeoIp2), "{file}");
        assert_eq!(geo.country_of(ip("81.2.69.142")), Some(*b"GB"), "{file}");
        assert_eq!(region_name(&geo, "81.2.69.142"), "eu");
        assert_eq!(region_name(&geo, "89.160.20.128"), "eu");
        assert_eq!(region_name(&geo, "175.16.199.1"), "asia");
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(region_name(&geo, "::ffff:175.16.199.1"), "asia");
        // Unknown address, and a country no region lists (BT): the fallback region.
        assert_eq!(region_name(&geo, "10.1.2.3"), "eu");
        assert_eq!(region_name(&geo, "67.43.156.1"), "eu");
    }
    let country = GeoResolver::open(&config(Some(db("GeoIP2-Country-Test.mmdb")))).unwrap();
    assert_eq!(region_name(&country, "214.78.120.1"), "us");
    assert_eq!(region_name(&country, "2a02:d180::1"), "eu");
    // A network with neither country nor registered_country.
    assert_eq!(country.country_of(ip("214.1.1.1")), None);
}

#[test]
fn flat_country_code_schema() {
    let geo = GeoResolver::open(&config(Some(db("geo-whois-asn-country.mmdb")))).unwrap();
    assert_eq!(geo.schema(), Some(CountrySchema::Flat));
    assert_eq!(region_name(&geo, "8.8.8.8"), "us");
    assert_eq!(region_name(&geo, "81.2.69.142"), "eu");
    assert_eq!(region_name(&geo, "127.0.0.1"), "eu");
    assert!(geo.country_of(ip("8.8.8.8")).is_some());
}

#[test]
fn without_database_everything_is_fallback() {
    let mut cfg = config(None);
    cfg.geo.fallback_region = Some("us".to_string());
    let geo = GeoResolver::open(&cfg).unwrap();
    assert_eq!(geo.schema(), None);
    assert_eq!(region_name(&geo, "81.2.69.142"), "us");
    assert_eq!(geo.fallback(), geo.region_id("us").unwrap());
    assert_eq!(geo.region_names().len(), 3);
    assert_eq!(geo.name(RegionId(999)), "unknown");
}

#[test]
fn broken_databases_are_startup_errors() {
    let cases = [
        ("does-not-exist.mmdb", "cannot read"),
        ("GeoIP2-City-Test-Broken-Double-Format.mmdb", "corrupt"),
        ("GeoIP2-City-Test-Invalid-Node-Count.mmdb", "corrupt"),
        ("MaxMind-DB-test-broken-pointers-24.mmdb", "corrupt"),
        ("MaxMind-DB-test-broken-search-tree-24.mmdb", "corrupt"),
        ("README.md", "not a valid MaxMind DB"),
        ("GeoLite2-ASN-Test.mmdb", "unsupported database type"),
    ];
    for (file, expected) in cases {
        let err = GeoResolver::open(&config(Some(db(file)))).expect_err(file);
        let message = err.to_string();
        assert!(message.starts_with("geo.database"), "{file}: {message}");
        assert!(message.contains(file), "{file}: {message}");
        assert!(message.contains(expected), "{file}: {message}");
    }
}

#[test]
fn unknown_fallback_region_is_an_error() {
    let mut cfg = config(None);
    cfg.geo.fallback_region = Some("mars".to_string());
    assert!(GeoResolver::open(&cfg)
        .unwrap_err()
        .to_string()
        .contains("mars"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn lookups_never_panic(v4 in any::<u32>(), v6 in any::<u128>()) {
        thread_local! {
            static GEO: GeoResolver = GeoResolver::open(&config(Some(db("GeoIP2-City-Test.mmdb")))).unwrap();
        }
        GEO.with(|geo| {
            let _ = geo.region_of(IpAddr::from(v4.to_be_bytes()));
            let _ = geo.region_of(IpAddr::from(v6.to_be_bytes()));
        });
    }
}
