//! The admin dashboard: one self-contained HTML page served at `/` of every node's admin
//! listener. It polls the JSON API (plan, capacity history, profiles, events, nodes, members),
//! finds out from 404s which roles the node serves, and draws its charts as inline SVG with its
//! own script: no external scripts, fonts or styles, so it works on an air-gapped admin network.
//!
//! The page is written as separate files (`dashboard/body.html`, `style.css`, `chart.js`,
//! `app.js`) and put together here at compile time.

/// The page served at `/` on the admin listener.
pub const PAGE: &str = concat!(
    "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    "<title>prescale</title>\n<style>\n",
    include_str!("dashboard/style.css"),
    "</style>\n</head>\n<body>\n",
    include_str!("dashboard/body.html"),
    "<script>\n",
    include_str!("dashboard/chart.js"),
    include_str!("dashboard/app.js"),
    "</script>\n</body>\n</html>\n"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let lower = PAGE.to_ascii_lowercase();
        for outside in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "<link",
            "<script src",
        ] {
            assert!(
                !lower.contains(outside),
                "the page must be self-contained: found `{outside}`"
            );
        }
        let style = include_str!("dashboard/style.css");
        for outside in ["@import", "url(", "@font-face"] {
            assert!(
                !style.contains(outside),
                "the styles must be self-contained: found `{outside}`"
            );
        }
        // The one namespace URI is an identifier, not a fetch.
        assert_eq!(
            lower.matches("http://").count(),
            1,
            "only the SVG namespace URI"
        );
        assert!(lower.contains("'http://www.w3.org/2000/svg'"));
    }

    #[test]
    fn each_embedded_part_stays_inside_its_element() {
        for (part, closing) in [
            (include_str!("dashboard/style.css"), "</style"),
            (include_str!("dashboard/chart.js"), "</script"),
            (include_str!("dashboard/app.js"), "</script"),
            (include_str!("dashboard/body.html"), "<script"),
        ] {
            assert!(
                !part.to_ascii_lowercase().contains(closing),
                "an embedded part contains `{closing}`"
            );
        }
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("</script>").count(), 1);
    }

    #[test]
    fn the_page_fetches_the_endpoints_it_renders() {
        for endpoint in [
            "/api/v1/plan",
            "/api/v1/history?fleet=",
            "/api/v1/profiles",
            "/api/v1/fleets",
            "/api/v1/events",
            "/api/v1/nodes",
            "/api/v1/members",
            "/api/v1/regions",
        ] {
            assert!(PAGE.contains(endpoint), "the page does not read {endpoint}");
        }
        for id in [
            "'forecast-band-'",
            "'capacity-line-'",
            "'decisions-'",
            "id=\"token-prompt\"",
            "id=\"event-form\"",
        ] {
            assert!(PAGE.contains(id), "the page has no {id}");
        }
    }
}
