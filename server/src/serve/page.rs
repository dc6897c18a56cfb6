//! The fleet page: `GET /fleet` and its script and style sheet, embedded in the binary.
//!
//! The page holds no data and loads without a token; its script asks for the operator
//! token once, keeps it in the browser's local storage and reads `GET /v1/fleet` and
//! `GET /v1/agents` with it. The Content-Security-Policy allows only this server's
//! own script, style and fetches (no inline script, nothing from elsewhere), and the
//! script inserts every value as text, so a hostname or an error an agent reports
//! cannot run in the operator's browser.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use super::routes::Body;

const HTML: &str = include_str!("page/fleet.html");
const CSS: &str = include_str!("page/fleet.css");
const JS: &str = include_str!("page/fleet.js");

/// Sent with each of the page's files.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The answer for `path` when it is one of the page's files, else `None`.
pub fn serve(path: &str, head_only: bool) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/fleet" | "/fleet/" => (HTML, "text/html; charset=utf-8"),
        "/fleet.css" => (CSS, "text/css; charset=utf-8"),
        "/fleet.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let body = if head_only {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    };
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_LENGTH, body_len(path))
        // A new server binary may bring a new page: revalidate rather than cache.
        .header(CACHE_CONTROL, "no-cache")
        .header(HeaderName::from_static("content-security-policy"), CSP)
        .header(HeaderName::from_static("x-content-type-options"), "nosniff")
        .header(HeaderName::from_static("referrer-policy"), "no-referrer")
        .header(HeaderName::from_static("x-frame-options"), "DENY")
        .body(body);
    // Every header is a constant, so the builder cannot fail.
    response.ok()
}

fn body_len(path: &str) -> usize {
    match path {
        "/fleet.css" => CSS.len(),
        "/fleet.js" => JS.len(),
        _ => HTML.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_carry_the_security_headers() {
        for (path, kind) in [
            ("/fleet", "text/html"),
            ("/fleet.css", "text/css"),
            ("/fleet.js", "text/javascript"),
        ] {
            let r = serve(path, false).unwrap();
            let h = r.headers();
            assert!(
                h[CONTENT_TYPE].to_str().unwrap().starts_with(kind),
                "{path}"
            );
            assert_eq!(h["content-security-policy"], CSP, "{path}");
            assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        }
        assert!(serve("/fleet.png", false).is_none());
        assert!(serve("/fleetx", false).is_none());
    }

    #[test]
    fn no_inline_script_or_style_and_no_data_as_html() {
        // The CSP refuses inline code; the page must not need any.
        assert!(!HTML.contains("<script>") && !HTML.contains("<style"));
        assert!(!HTML.contains(" style="));
        // No event handler attribute (` onclick=` and the like).
        let handler = HTML.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "an inline event handler in fleet.html");
        assert!(!JS.contains("innerHTML") && !JS.contains("outerHTML"));
        assert!(!JS.contains("insertAdjacentHTML") && !JS.contains("document.write"));
        for file in [HTML, JS, CSS] {
            assert!(!file.contains("http://") && !file.contains("https://"));
        }
    }
}
