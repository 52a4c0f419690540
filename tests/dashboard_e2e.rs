//! The admin dashboard in a real browser: `prescale up` at 60× with three days of seeded history
//! and a replayed load, then Debian's headless Chromium loads the page from the admin listener.
//!
//! * The dumped DOM holds the fleet's forecast band (with recorded lead-time forecasts), its
//!   ready-capacity line and demand line with as many minutes as `/api/v1/history` has, and the
//!   decisions list with a reason `/api/v1/plan` gives; a 1366×900 screenshot is a real PNG.
//! * With an admin token configured, the page asks for it (and renders no data), accepts it from
//!   `#token=` once, and asks again when the token is wrong.
//! * The standalone forecaster serves the same page; the sections of the roles it lacks say so.
//!
//! `DASHBOARD_SCREENSHOT=FILE` keeps a copy of the screenshot (to look at it).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SPEEDUP: f64 = 60.0;
const TOKEN: &str = "dashboard-e2e-token-0123456789";

/// Debian's Chromium, which `scripts/ensure-deps.sh --test` installs.
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "Chromium is missing ({}): run `scripts/ensure-deps.sh --test` (it installs Debian's \
         `chromium`, which this test drives headless)",
        path.display()
    );
    path
}

/// Runs headless Chromium on `url` with a fresh profile; returns what it wrote to stdout (the
/// DOM after the page's scripts ran, with `--dump-dom`).
fn run_chromium(dir: &Path, url: &str, output: &[String]) -> String {
    let profile = tempfile::tempdir_in(dir).expect("chromium profile dir");
    let stderr_path = dir.join("chromium.stderr");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(output)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("chromium stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // A guard against a browser that hangs, not a speed check.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish on {url}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = reader.join().expect("chromium stdout reader");
    assert!(
        status.success(),
        "chromium exited with {status} on {url}; stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    dom
}

/// The DOM after the page's scripts ran, without the script itself (so only rendered markup is
/// searched).
fn dump_dom(dir: &Path, url: &str) -> String {
    let mut dom = run_chromium(dir, url, &["--dump-dom".to_string()]);
    assert!(dom.contains("<main>"), "chromium dumped no page:\n{dom}");
    while let Some(start) = dom.find("<script") {
        let end = dom[start..]
            .find("</script>")
            .map_or(dom.len(), |e| start + e + "</script>".len());
        dom.replace_range(start..end, "");
    }
    dom
}

/// The start tag of the element whose id is `id`, e.g. `<path id="…" data-points="3" d="…">`.
fn start_tag<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!(" id=\"{id}\""))?;
    let open = dom[..at].rfind('<')?;
    let close = at + dom[at..].find('>')?;
    Some(&dom[open..=close])
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let from = tag.find(&key)? + key.len();
    let len = tag[from..].find('"')?;
    Some(unescape(&tag[from..from + len]))
}

fn has_attribute(tag: &str, name: &str) -> bool {
    tag.contains(&format!(" {name}=")) || tag.contains(&format!(" {name}>"))
}

fn count_attribute(dom: &str, id: &str, name: &str) -> u64 {
    let tag = start_tag(dom, id).unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"));
    attribute(tag, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("#{id} has no numeric {name}: {tag}"))
}

/// The text inside the element `id` (tags stripped, entities decoded), up to its `</tag>`.
fn inner_text(dom: &str, id: &str) -> String {
    let tag = start_tag(dom, id).unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"));
    let name: String = tag[1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let from = dom.find(tag).expect("tag in dom") + tag.len();
    let end = dom[from..]
        .find(&format!("</{name}>"))
        .map_or(dom.len(), |e| from + e);
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[from..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    unescape(&text)
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The config of a single-node `up` (`up-1`, region `local`): fleet `web` of process-provisioned
/// demo backends serving 2 req/s each with a 120 s cold start (a lead time of 2 minutes), a
/// baseline of one, and an admin token when given.
fn dashboard_config(dir: &Path, marker: &str, admin_token: Option<&str>) -> PathBuf {
    let admin = admin_token.map_or(String::new(), |t| format!("\n[admin]\ntoken = \"{t}\"\n"));
    up_config(
        dir,
        &format!(
            "{admin}\n[planner]\nbaseline_instances = 1\n{}",
            provisioned_fleet(marker, 2.0, 120)
        ),
    )
}

/// Requests a minute at unix second `t`: 40, and a daily rise from minute-of-day `rise` over
/// four minutes to 200, held ten minutes; plus a fixed wobble of up to 12 so the forecasts have
/// errors and their intervals a width.
fn demand(t: u64, rise: u64) -> u64 {
    let wobble = (t / 60).wrapping_mul(7919) % 13;
    wobble
        + match ((t / 60) % 1440 + 1440 - rise) % 1440 {
            since @ 0..=3 => 40 + 40 * since,
            4..=13 => 200,
            _ => 40,
        }
}

fn write_wobbly_trace(path: &Path, start: u64, minutes: u64, rise: u64) {
    let mut text = String::from("timestamp,requests\n");
    for m in 0..minutes {
        let t = start + m * 60;
        text.push_str(&format!("{t},{}\n", demand(t, rise)));
    }
    std::fs::write(path, text).expect("write trace");
}

struct Node {
    up: Proc,
    admin: SocketAddr,
    proxy: SocketAddr,
}

/// `prescale up` on `config` with three days of history whose daily rise comes again a quarter
/// of an hour of node time from now (after `up` has started and seeded its store).
fn start_node(dir: &Path, config: &Path) -> (Node, u64) {
    let now = node_now_ms(SPEEDUP) / 1000 / 60 * 60;
    let rise = (now / 60 + 15) % 1440;
    let history = dir.join("history.csv");
    write_wobbly_trace(&history, now - 3 * 86_400, 3 * 1440, rise);
    let (proxy, admin) = (loopback(), loopback());
    let log = dir.join("up.log");
    let args = up_args(
        &dir.join("state"),
        proxy,
        admin,
        Some(config),
        Some(&history),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let up = start("up", &args, &log);
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &log);
    (Node { up, admin, proxy }, rise)
}

/// `prescale load` replaying the same daily pattern from the node's current minute.
fn start_load(dir: &Path, proxy: SocketAddr, rise: u64) -> Proc {
    let now = node_now_ms(SPEEDUP) / 1000 / 60 * 60;
    let trace = dir.join("load.csv");
    write_wobbly_trace(&trace, now, 180, rise);
    let mut child = Command::new(bin());
    child
        .args(["load", "--target", &format!("http://{proxy}/"), "--trace"])
        .arg(&trace)
        .args(["--speedup", "60", "--users", "40", "--duration", "180s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc {
        child: child.spawn().expect("start load"),
        name: "load".into(),
    }
}

fn api(admin: SocketAddr, path: &str, token: Option<&str>) -> serde_json::Value {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let r = get(admin, path, &headers);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

fn history_minutes(admin: SocketAddr, token: Option<&str>) -> Vec<serde_json::Value> {
    api(admin, "/api/v1/history?fleet=web&minutes=180", token)["minutes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn decision_reasons(admin: SocketAddr, token: Option<&str>) -> Vec<String> {
    api(admin, "/api/v1/plan", token)["fleets"][0]["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["reason"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Minutes of the history with a recorded lead-time forecast, and with demand handed over.
fn counts(minutes: &[serde_json::Value]) -> (u64, u64) {
    let forecast = minutes.iter().filter(|m| m["forecast"].is_object()).count() as u64;
    let demand = minutes.iter().filter(|m| m["demand"].is_u64()).count() as u64;
    (forecast, demand)
}

#[test]
fn the_dashboard_draws_the_running_nodes_forecast_band_capacity_and_decisions() {
    chromium();
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("dashboard-{}", std::process::id());
    let _reaper = BackendReaper::by_marker(&marker);
    let config = dashboard_config(dir.path(), &marker, None);
    let (node, rise) = start_node(dir.path(), &config);
    let _load = start_load(dir.path(), node.proxy, rise);

    // The page is looked at once the rise has been served: minutes with demand and lead-time
    // forecasts before and during it, and the plan's decisions about it.
    wait_until(
        "recorded minutes with demand and lead-time forecasts through the rise, and decisions",
        Duration::from_secs(150),
        || {
            let minutes = history_minutes(node.admin, None);
            let (forecast, demand) = counts(&minutes);
            let rose = minutes.iter().any(|m| m["demand"].as_u64() >= Some(160));
            rose && forecast >= 5 && demand >= 5 && !decision_reasons(node.admin, None).is_empty()
        },
    );
    let before = history_minutes(node.admin, None);
    let reasons = decision_reasons(node.admin, None);
    let url = format!("http://{}/", node.admin);
    let dom = dump_dom(dir.path(), &url);
    let after = history_minutes(node.admin, None);
    let (forecast_before, demand_before) = counts(&before);
    let (forecast_after, demand_after) = counts(&after);

    // The forecast band: the lead-time forecasts recorded for past minutes (then the outlook).
    let band = start_tag(&dom, "forecast-band-web").expect("forecast band");
    assert!(band.starts_with("<path"), "{band}");
    let past = count_attribute(&dom, "forecast-band-web", "data-past-points");
    assert!(
        (forecast_before..=forecast_after).contains(&past),
        "band has {past} past minutes; history had {forecast_before} then {forecast_after}"
    );
    let outlook = count_attribute(&dom, "forecast-band-web", "data-outlook-points");
    assert!(
        outlook > 0,
        "the band is not continued by the outlook: {band}"
    );
    assert_eq!(
        count_attribute(&dom, "forecast-band-web", "data-points"),
        past + outlook
    );
    assert!(count_attribute(&dom, "capacity-plan-web", "data-points") > 0);
    assert!(attribute(band, "d").is_some_and(|d| d.starts_with('M') && d.contains('Z')));
    assert_eq!(attribute(band, "data-lead-minutes").as_deref(), Some("2"));

    // Ready capacity, one step per recorded minute, and demand per handed minute.
    let capacity = start_tag(&dom, "capacity-line-web").expect("capacity line");
    let steps = count_attribute(&dom, "capacity-line-web", "data-points");
    assert!(
        (before.len() as u64..=after.len() as u64).contains(&steps),
        "capacity line has {steps} minutes; history had {} then {}",
        before.len(),
        after.len()
    );
    assert!(attribute(capacity, "d").is_some_and(|d| d.starts_with('M')));
    let demand = count_attribute(&dom, "demand-line-web", "data-points");
    assert!(
        (demand_before..=demand_after).contains(&demand),
        "demand line has {demand} minutes; history had {demand_before} then {demand_after}"
    );
    assert!(start_tag(&dom, "now-web").is_some(), "no now marker");

    // The decisions list holds what the plan says, reasons included.
    let decisions = inner_text(&dom, "decisions-web");
    assert!(
        reasons.iter().any(|r| decisions.contains(r.as_str())),
        "none of the plan's reasons {reasons:?} in the decisions list: {decisions}"
    );
    assert!(count_attribute(&dom, "decisions-web", "data-count") >= 1);

    // The other sections found their roles on this node.
    assert_eq!(inner_text(&dom, "region-name").trim(), "local");
    assert!(
        start_tag(&dom, "profiles-table").is_some(),
        "no profiles table"
    );
    assert!(
        start_tag(&dom, "nodes-table").is_some(),
        "no mesh nodes table"
    );
    assert!(inner_text(&dom, "nodes-body").contains("up-1"));
    assert!(inner_text(&dom, "members-body").contains("not configured"));
    let form = start_tag(&dom, "event-form").expect("event form");
    assert!(
        !has_attribute(form, "hidden"),
        "the event form is hidden: {form}"
    );
    let prompt = start_tag(&dom, "token-prompt").expect("token prompt");
    assert!(
        has_attribute(prompt, "hidden"),
        "asked for a token no one set"
    );

    // A screenshot at laptop size.
    let png = dir.path().join("dashboard.png");
    run_chromium(
        dir.path(),
        &url,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1366,900".to_string(),
        ],
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().expect("width"));
    let height = u32::from_be_bytes(bytes[20..24].try_into().expect("height"));
    assert_eq!((width, height), (1366, 900));
    assert!(
        bytes.len() > 30_000,
        "a {} byte screenshot is too small for a rendered dashboard",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("DASHBOARD_SCREENSHOT") {
        std::fs::copy(&png, &keep).expect("copy the screenshot");
    }
    drop(node.up);
}

#[test]
fn the_dashboard_asks_for_the_admin_token_once_and_takes_it_from_the_url() {
    chromium();
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("dashboard-token-{}", std::process::id());
    let _reaper = BackendReaper::by_marker(&marker);
    let config = dashboard_config(dir.path(), &marker, Some(TOKEN));
    let (node, _rise) = start_node(dir.path(), &config);
    wait_until("a decision", Duration::from_secs(60), || {
        !decision_reasons(node.admin, Some(TOKEN)).is_empty()
    });
    let reasons = decision_reasons(node.admin, Some(TOKEN));
    // The page itself carries no data, so it loads without the token; the API does not.
    let page = get(node.admin, "/", &[]);
    assert_eq!(page.status, 200);
    assert_eq!(get(node.admin, "/api/v1/plan", &[]).status, 401);

    // Without the token: the page asks for it and shows no data.
    let url = format!("http://{}/", node.admin);
    let dom = dump_dom(dir.path(), &url);
    let prompt = start_tag(&dom, "token-prompt").expect("token prompt");
    assert!(
        !has_attribute(prompt, "hidden"),
        "no token asked for: {prompt}"
    );
    assert!(inner_text(&dom, "token-message").contains("needs a token"));
    assert!(dom.contains("data-auth=\"needed\""));
    assert!(
        start_tag(&dom, "decisions-web").is_none(),
        "data without the token"
    );

    // With `#token=`: stored, taken out of the address, and the data renders.
    let dom = dump_dom(dir.path(), &format!("{url}#token={TOKEN}"));
    let prompt = start_tag(&dom, "token-prompt").expect("token prompt");
    assert!(has_attribute(prompt, "hidden"), "asked again: {prompt}");
    assert!(dom.contains("data-auth=\"given\""));
    let decisions = inner_text(&dom, "decisions-web");
    assert!(
        reasons.iter().any(|r| decisions.contains(r.as_str())),
        "none of the plan's reasons {reasons:?} in the decisions list: {decisions}"
    );
    assert!(!dom.contains(TOKEN), "the token is left in the page");

    // A wrong token: asked again, saying so.
    let dom = dump_dom(dir.path(), &format!("{url}#token=not-the-token"));
    let prompt = start_tag(&dom, "token-prompt").expect("token prompt");
    assert!(!has_attribute(prompt, "hidden"));
    assert!(inner_text(&dom, "token-message").contains("not accepted"));
    drop(node.up);
}

#[test]
fn the_standalone_forecaster_serves_the_page_and_says_which_roles_it_lacks() {
    chromium();
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("dashboard-fc-{}", std::process::id());
    let _reaper = BackendReaper::by_marker(&marker);
    let certs = dir.path().join("certs");
    write_certs(&certs, &["fc-1"]);
    let admin = loopback();
    let config = dir.path().join("fc-1.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
id = "fc-1"
region = "local"

[admin]
listen = "{admin}"

[identity]
secret = "dashboard-e2e-secret-0123456789"

[[regions]]
name = "local"

[forecaster]
listen = "127.0.0.1:{quic}"
database = "{database}"

[mesh]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[planner]
baseline_instances = 1
{fleet}"#,
            quic = udp_port(),
            database = dir.path().join("fc.db").display(),
            ca = certs.join("ca.pem").display(),
            cert = certs.join("fc-1.pem").display(),
            key = certs.join("fc-1.key.pem").display(),
            fleet = provisioned_fleet(&marker, 2.0, 120),
        ),
    )
    .expect("write forecaster config");
    let log = dir.path().join("fc-1.log");
    let forecaster = start(
        "forecaster",
        &[
            "forecaster",
            "--config",
            config.to_str().expect("utf-8"),
            "--speedup",
            "60",
        ],
        &log,
    );
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &log);
    wait_until("the baseline decision", Duration::from_secs(60), || {
        !decision_reasons(admin, None).is_empty()
    });
    let reasons = decision_reasons(admin, None);

    let dom = dump_dom(dir.path(), &format!("http://{admin}/"));
    assert_eq!(inner_text(&dom, "region-name").trim(), "local");
    let decisions = inner_text(&dom, "decisions-web");
    assert!(
        reasons.iter().any(|r| decisions.contains(r.as_str())),
        "none of the plan's reasons {reasons:?} in the decisions list: {decisions}"
    );
    assert!(start_tag(&dom, "capacity-line-web").is_some());
    assert!(
        inner_text(&dom, "profiles-body").contains("No proxy on this node"),
        "{}",
        inner_text(&dom, "profiles-body")
    );
    assert!(inner_text(&dom, "backends-body").contains("No proxy on this node"));
    assert!(inner_text(&dom, "nodes-body").contains("no proxy has sent a sketch yet"));
    assert!(!dom.contains("could not be read"), "an API failed: {dom}");
    drop(forecaster);
}
