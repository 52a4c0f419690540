//! The admin dashboard: one self-contained HTML page that polls the JSON API (no external
//! assets, so it works on an air-gapped admin network).

/// The page served at `/` on the admin listener.
pub const PAGE: &str = include_str!("dashboard/index.html");
