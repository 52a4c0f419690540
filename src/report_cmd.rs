//! `prescale report`: a capacity report of one region or all, over a period, as HTML, Markdown
//! or JSON, read from a forecaster's database (`--database`) or from running forecasters
//! (`--admin URL`, several for a global report). Also the forecaster's `GET /api/v1/report`,
//! which answers with the same report JSON built by the same code from its own database.
//! Building and rendering live in `prescale_regions::report`; this file owns the arguments, the
//! HTTP client and the admin route.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::ArgGroup;
use http_body_util::BodyExt;
use prescale_proxy::admin::{self, AdminRequest, Handler};
use prescale_regions::report::{
    self, time, Database, Format, RegionSelection, Report, ReportError, ReportRequest,
};

use crate::exit::CliError;

const REPORT_PATH: &str = "/api/v1/report";
/// How long one forecaster may take to build and send its report.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    Html,
    Md,
    Json,
}

const AFTER_HELP: &str = "\
Per region, fleet and profile: demand against the forecast recorded at the lead time (with its
interval) against the ready capacity; MASE against seasonal-naive and interval coverage;
SLO-violation minutes and unserved share; cost in instance-hours and money; the profiles behind
the peak; the scaling decisions with their reasons; the plan's next 24 hours. The report states
each definition. Times are node time (a forecaster run with --speedup keeps a clock ahead of
the wall).

Exit status 2 for bad flags, a --from not before --to, an unreadable database, an unknown
region or an --admin that is not a prescale forecaster. A store with nothing recorded gives a
report that says so, and exit status 0.

Examples:
  prescale report --all --database /var/lib/prescale/series.db --out report.html
  prescale report --region eu --from 2026-12-01T00:00:00Z --to 2026-12-02T00:00:00Z \\
      --admin http://10.0.0.20:9090 --format md --out eu.md
  prescale report --all --admin http://fc-eu:9090 --admin http://fc-us:9090 --out global.json";

#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
#[command(group(ArgGroup::new("regions").required(true).args(["region", "all"])))]
#[command(group(ArgGroup::new("source").required(true).args(["database", "admin"])))]
pub struct Args {
    /// Report on this region.
    #[arg(long, value_name = "R")]
    region: Option<String>,
    /// Report on every region the source has recorded.
    #[arg(long)]
    all: bool,
    /// Start of the period: unix seconds or RFC 3339 (2026-12-01T10:00:00Z) [default: the
    /// first recorded minute].
    #[arg(long, value_name = "T", value_parser = time::parse_time)]
    from: Option<u64>,
    /// End of the period (exclusive), as --from [default: the end of the last recorded minute].
    #[arg(long, value_name = "T", value_parser = time::parse_time)]
    to: Option<u64>,
    /// Output format [default: from --out's extension: .html, .md, .json].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Where to write the report; `-` for standard output.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// A forecaster's SQLite database (its forecaster.database; `prescale up` keeps it in its
    /// state directory as series.db).
    #[arg(long, value_name = "FILE")]
    database: Option<PathBuf>,
    /// A running forecaster's admin URL (http://HOST:PORT); give it once per region for a
    /// global report.
    #[arg(long, value_name = "URL")]
    admin: Vec<String>,
    /// Bearer token for --admin (the forecasters' admin.token).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PRESCALE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let format = output_format(args.format, &args.out)?;
    time::check_period(args.from, args.to, "--from", "--to").map_err(CliError::input)?;
    let request = ReportRequest {
        regions: match &args.region {
            Some(region) => RegionSelection::One(region.clone()),
            None => RegionSelection::All,
        },
        from: args.from,
        to: args.to,
    };
    let report = match &args.database {
        Some(path) => from_database(path, &request)?,
        None => from_admins(&args.admin, &request, args.token.as_deref())?,
    };
    let text = report::render(&report, format).map_err(CliError::runtime)?;
    write_out(&args.out, &text)?;
    if let Some(notice) = &report.notice {
        eprintln!("report: {notice}");
    }
    let fleets: usize = report.regions.iter().map(|r| r.fleets.len()).sum();
    if args.out != Path::new("-") {
        eprintln!(
            "report: wrote {} ({} region{}, {fleets} fleet{}, {} fleet-minutes)",
            args.out.display(),
            report.regions.len(),
            if report.regions.len() == 1 { "" } else { "s" },
            if fleets == 1 { "" } else { "s" },
            report.totals.fleet_minutes
        );
    }
    Ok(())
}

fn output_format(format: Option<FormatArg>, out: &Path) -> Result<Format, CliError> {
    let format = match format {
        Some(f) => f,
        None => {
            let extension = out
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            match extension.as_deref() {
                Some("html" | "htm") => FormatArg::Html,
                Some("md" | "markdown") => FormatArg::Md,
                Some("json") => FormatArg::Json,
                _ => {
                    return Err(CliError::input(anyhow!(
                    "--format: give html, md or json (--out {} has no extension that says which)",
                    out.display()
                )))
                }
            }
        }
    };
    Ok(match format {
        FormatArg::Html => Format::Html,
        FormatArg::Md => Format::Markdown,
        FormatArg::Json => Format::Json,
    })
}

fn write_out(out: &Path, text: &str) -> Result<(), CliError> {
    if out == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        return stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
            .context("cannot write the report to standard output")
            .map_err(CliError::runtime);
    }
    std::fs::write(out, text)
        .with_context(|| format!("--out {}: cannot write the report", out.display()))
        .map_err(CliError::input)
}

fn from_database(path: &Path, request: &ReportRequest) -> Result<Report, CliError> {
    let db = Database::open(path).map_err(|e| CliError::input(anyhow!("--database: {e}")))?;
    let mut bar = None;
    let mut progress = |done: u64, total: u64| {
        if done == 0 {
            bar = report::progress::terminal_bar(total);
        } else if let Some(bar) = &bar {
            bar.set_position(done);
        }
    };
    let built = report::build(&db, request, &mut progress);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    built.map_err(|e| report_error(e, path))
}

/// Bad input names its flag (exit 2); a database that fails while being read is exit 1.
fn report_error(e: ReportError, database: &Path) -> CliError {
    match e {
        ReportError::UnknownRegion { .. } => CliError::input(anyhow!("--region: {e}")),
        ReportError::Period(_) => CliError::input(anyhow!("--from/--to: {e}")),
        ReportError::Database { .. } => CliError::input(anyhow!("--database: {e}")),
        other => CliError::runtime(anyhow!("--database {}: {other}", database.display())),
    }
}

/// A forecaster's admin base URL: `http://HOST:PORT[/PREFIX]`.
fn admin_base(url: &str) -> Result<String, CliError> {
    let bad = |why: &str| CliError::input(anyhow!("--admin {url}: {why}"));
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e}); expected http://HOST:PORT")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported: the admin listener serves plain HTTP",
            ))
        }
        _ => return Err(bad("expected http://HOST:PORT")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad("expected http://HOST:PORT"))?;
    if uri.query().is_some() {
        return Err(bad("give the admin listener's address without a query"));
    }
    Ok(format!(
        "http://{authority}{}",
        uri.path().trim_end_matches('/')
    ))
}

/// `application/x-www-form-urlencoded`-safe text.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What one forecaster answered.
enum Answer {
    Report(Report),
    /// 404 for the region asked for: it is not this forecaster's.
    UnknownRegion(String),
}

fn from_admins(
    urls: &[String],
    request: &ReportRequest,
    token: Option<&str>,
) -> Result<Report, CliError> {
    let bases = urls
        .iter()
        .map(|u| admin_base(u))
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP client")?;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
    let mut query = format!("region={}", encode(request.regions.as_param()));
    if let Some(from) = request.from {
        query.push_str(&format!("&from={from}"));
    }
    if let Some(to) = request.to {
        query.push_str(&format!("&to={to}"));
    }
    let mut reports = Vec::new();
    let mut sources = Vec::new();
    let mut unknown = Vec::new();
    for (url, base) in urls.iter().zip(&bases) {
        let target = format!("{base}{REPORT_PATH}?{query}");
        let answer = runtime.block_on(fetch(&client, url, &target, token))?;
        match answer {
            Answer::Report(report) => {
                for region in &report.regions {
                    if let Some((other, _)) = sources.iter().find(|(_, r)| r == &region.region) {
                        return Err(CliError::input(anyhow!(
                            "--admin: region `{}` is reported by both {other} and {url}; give each region once",
                            region.region
                        )));
                    }
                    sources.push((url.clone(), region.region.clone()));
                }
                reports.push(report);
            }
            Answer::UnknownRegion(message) => unknown.push(format!("{url}: {message}")),
        }
    }
    if reports.is_empty() {
        return Err(CliError::input(anyhow!(
            "--region: no forecaster has it ({})",
            unknown.join("; ")
        )));
    }
    report::merge(reports).map_err(|e| CliError::input(anyhow!("--admin: {e}")))
}

async fn fetch(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    url: &str,
    target: &str,
    token: Option<&str>,
) -> Result<Answer, CliError> {
    let bad = |why: String| CliError::input(anyhow!("--admin {url}: {why}"));
    let mut builder = http::Request::get(target).header(http::header::ACCEPT, "application/json");
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder
        .body(http_body_util::Empty::new())
        .map_err(|e| bad(format!("cannot build the request: {e}")))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = match tokio::time::timeout(ADMIN_TIMEOUT, exchange).await {
        Err(_) => {
            return Err(CliError::runtime(anyhow!(
                "--admin {url}: no answer within {} s",
                ADMIN_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(bad(format!("cannot get {REPORT_PATH}: {e}"))),
        Ok(Ok(answer)) => answer,
    };
    let error_text = || {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
    };
    match status {
        http::StatusCode::OK => match serde_json::from_slice::<Report>(&body) {
            Ok(report) if report.schema == report::REPORT_SCHEMA => Ok(Answer::Report(report)),
            Ok(report) => Err(bad(format!(
                "the forecaster speaks report schema {}, this build reads {}",
                report.schema,
                report::REPORT_SCHEMA
            ))),
            Err(e) => Err(bad(format!(
                "not a prescale forecaster: its {REPORT_PATH} answer is not a report ({e})"
            ))),
        },
        http::StatusCode::UNAUTHORIZED => Err(bad(
            "401: missing or wrong bearer token (give --token or PRESCALE_ADMIN_TOKEN)".into(),
        )),
        http::StatusCode::NOT_FOUND => match error_text() {
            Some(message) if message.starts_with("no capacity history for region") => {
                Ok(Answer::UnknownRegion(message))
            }
            Some(message) if message.starts_with("no admin endpoint") => Err(bad(format!(
                "not a prescale forecaster: it has no {REPORT_PATH} (a proxy-only node?)"
            ))),
            _ => Err(bad(format!(
                "not a prescale forecaster: {REPORT_PATH} answered 404"
            ))),
        },
        s if s.is_client_error() => Err(bad(format!(
            "{s}: {}",
            error_text().unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned())
        ))),
        s => Err(CliError::runtime(anyhow!(
            "--admin {url}: {s}: {}",
            error_text().unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned())
        ))),
    }
}

/// An error with its sources (`client error (Connect): tcp connect error: Connection refused`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// `GET /api/v1/report?region=R|all&from=T&to=T`: the report JSON built from the forecaster's
/// database at `database` (times: unix seconds or RFC 3339, node time; 400 naming a bad
/// parameter, 404 for a region without history).
pub fn admin_handler(database: PathBuf) -> Handler {
    Arc::new(move |request: &AdminRequest| {
        if request.path != REPORT_PATH {
            return None;
        }
        if request.method != http::Method::GET {
            let mut response = admin::json_error(
                http::StatusCode::METHOD_NOT_ALLOWED,
                &format!("GET {REPORT_PATH}"),
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
            return Some(response);
        }
        Some(report_response(&database, request))
    })
}

fn report_response(database: &Path, request: &AdminRequest) -> admin::AdminResponse {
    let bad_request = |message: String| admin::json_error(http::StatusCode::BAD_REQUEST, &message);
    let time_param = |name: &str| -> Result<Option<u64>, String> {
        request
            .query_param(name)
            .map(|v| time::parse_time(&v).map_err(|e| format!("`{name}`: {e}")))
            .transpose()
    };
    let (from, to) = match (time_param("from"), time_param("to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let regions = match request.query_param("region") {
        Some(region) if region.is_empty() => {
            return bad_request("`region`: give a region name or `all`".into())
        }
        Some(region) => RegionSelection::parse(&region),
        None => RegionSelection::All,
    };
    if let Err(e) = time::check_period(from, to, "`from`", "`to`") {
        return bad_request(e.to_string());
    }
    let built = Database::open(database)
        .and_then(|db| report::build(&db, &ReportRequest { regions, from, to }, &mut |_, _| {}));
    match built {
        Ok(report) => match report::render(&report, Format::Json) {
            Ok(json) => {
                let mut response =
                    http::Response::new(http_body_util::Full::new(bytes::Bytes::from(json)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(e @ ReportError::UnknownRegion { .. }) => {
            admin::json_error(http::StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e @ ReportError::Period(_)) => bad_request(e.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "report: the database failed");
            admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_must_be_plain_http_addresses() {
        assert_eq!(
            admin_base("http://127.0.0.1:9090/").ok(),
            Some("http://127.0.0.1:9090".to_string())
        );
        assert_eq!(
            admin_base("http://fc-eu:9090/admin").ok(),
            Some("http://fc-eu:9090/admin".to_string())
        );
        for bad in [
            "https://127.0.0.1:9090",
            "127.0.0.1:9090",
            "http://h:1/?x=1",
            "::",
        ] {
            assert!(admin_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_format_comes_from_the_flag_or_the_extension() {
        let format = |f, out: &str| output_format(f, Path::new(out)).ok();
        assert_eq!(format(None, "r.html"), Some(Format::Html));
        assert_eq!(format(None, "r.MD"), Some(Format::Markdown));
        assert_eq!(format(Some(FormatArg::Json), "-"), Some(Format::Json));
        assert_eq!(format(None, "report"), None);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("eu-west_1"), "eu-west_1");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
