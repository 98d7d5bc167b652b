//! `GET /`: the admin page, one self-contained HTML file (inline CSS and
//! vanilla JS, no external resources) compiled into the binary.
//!
//! The page asks for the admin JWT itself and keeps it in `sessionStorage`;
//! serving it needs no authentication. Its Content-Security-Policy allows
//! exactly the page's own inline `<script>` and `<style>` by their SHA-256
//! hashes (computed once from the embedded file, so they always match the
//! build), API calls to this origin only, and no framing.

use std::sync::LazyLock;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;

/// The page, as built into the binary.
pub const ADMIN_HTML: &str = include_str!("../../assets/admin.html");

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(admin_page))
}

/// The policy for [`ADMIN_HTML`].
pub static CSP: LazyLock<String> = LazyLock::new(|| content_security_policy(ADMIN_HTML));

/// The admin page
///
/// One self-contained HTML page (no external resources): it asks for the
/// admin JWT itself and keeps it for the browser session; shows providers
/// and accounts; connects, reconnects and disconnects mailboxes. Serving it
/// needs no authentication.
#[utoipa::path(
    get,
    path = "/",
    tag = "admin page",
    responses(
        (status = 200, description = "The admin page, with a strict Content-Security-Policy",
         body = String, content_type = "text/html",
         headers(
             ("Content-Security-Policy" = String, description = "The page's own inline script and style by hash; API calls to this origin only; no framing"),
             ("Cache-Control" = String, description = "`no-cache`"),
         )),
    )
)]
async fn admin_page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(&CSP).unwrap_or_else(|_| {
                    // Unreachable (the policy is ASCII); fail closed if not.
                    HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'")
                }),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        ADMIN_HTML,
    )
}

/// `'sha256-…'` sources for every `<tag>…</tag>` block (no attributes on
/// the opening tag) in `html`.
fn inline_hashes(html: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        out.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end + close.len()..];
    }
    out
}

fn content_security_policy(html: &str) -> String {
    let scripts = inline_hashes(html, "script").join(" ");
    let styles = inline_hashes(html, "style").join(" ");
    format!(
        "default-src 'self'; script-src {scripts}; style-src {styles}; \
         img-src 'self' data:; connect-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_pages_own_script_and_style() {
        assert_eq!(ADMIN_HTML.matches("<script").count(), 1);
        assert_eq!(ADMIN_HTML.matches("<style").count(), 1);
        assert!(ADMIN_HTML.contains("<script>") && ADMIN_HTML.contains("<style>"));
        let csp = &*CSP;
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(csp.contains("style-src 'sha256-"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"));
        assert!(HeaderValue::from_str(csp).is_ok());
    }

    #[test]
    fn hashes_cover_exactly_the_block_text() {
        let h = inline_hashes("<p><script>a()</script><script>b()</script>", "script");
        // sha256("a()") in base64
        let a = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"a()"));
        assert_eq!(h.len(), 2);
        assert_eq!(h[0], format!("'sha256-{a}'"));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in [
            "http://",
            "https://",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
        ] {
            assert!(!ADMIN_HTML.contains(needle), "admin.html contains {needle}");
        }
    }
}
