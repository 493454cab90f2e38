//! With a token (`rewind serve --token-file F`), who may read and write.
//!
//! - `Authorization: Bearer TOKEN` (compared in constant time): every route, the one write
//!   (`POST /api/v1/runs/{id}/cancel`) included. Scripts, Prometheus and status pages use it.
//! - A browser cannot add that header to a page load or an `EventSource`: `GET /login` shows a
//!   form, `POST /login` with the right token sets the session cookie `rewind_session`, a
//!   SHA-256 digest of the token (never the token itself), `HttpOnly`, `SameSite=Strict`. The
//!   cookie opens reading only (GET and HEAD): a write needs the header, so no page of another
//!   site can make a browser cancel a run.
//! - Without either: a page load is sent to `/login`, anything else gets a 401 JSON error. The
//!   login form and the stylesheet are served to anyone.
//!
//! Without a token nothing is checked (the server is bound to loopback; `serve` refuses other
//! addresses without a token).

use axum::Router;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::api::ApiError;
use crate::pages::{Page, layout};

/// The session cookie's name.
const COOKIE: &str = "rewind_session";

/// Equal in time independent of where the two differ (lengths are not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The session cookie's value for `token`.
fn session(token: &str) -> String {
    let digest = Sha256::new_with_prefix(b"rewind-board-session\0").chain_update(token).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a `Host` header names this machine's loopback: `localhost`, a loopback IP address,
/// with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Paths anyone may load: the login form and the board's stylesheet.
fn open(path: &str) -> bool {
    path == "/login" || path == "/assets/board.css"
}

/// The middleware in front of every route.
pub(crate) async fn check(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = s.token.clone() else {
        // Without a token the server listens on loopback only, and answers only requests that
        // name a loopback host: a page elsewhere whose name was made to resolve to 127.0.0.1
        // (DNS rebinding) would otherwise read the board as its own origin.
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        if host.is_some_and(|h| !loopback_host(h)) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                axum::Json(serde_json::json!({
                    "error": "this server answers requests for localhost, 127.0.0.1 or [::1] \
                              only (no --token-file)"
                })),
            )
                .into_response();
        }
        return next.run(req).await;
    };
    if open(req.uri().path()) {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(g) = bearer {
        return if same(g.trim().as_bytes(), token.as_bytes()) {
            next.run(req).await
        } else {
            ApiError::Unauthorized("the bearer token is wrong".into()).into_response()
        };
    }
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    let cookie_ok = cookie(req.headers(), COOKIE)
        .is_some_and(|c| same(c.as_bytes(), session(&token).as_bytes()));
    if cookie_ok && reading {
        return next.run(req).await;
    }
    if cookie_ok {
        return ApiError::Unauthorized(
            "writes need `Authorization: Bearer TOKEN` (the token in the server's --token-file); \
             the board's session cookie only reads"
                .into(),
        )
        .into_response();
    }
    let page = reading
        && !req.uri().path().starts_with("/api/")
        && req.uri().path() != "/metrics"
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    if page {
        return Redirect::to("/login").into_response();
    }
    ApiError::Unauthorized(
        "this server needs `Authorization: Bearer TOKEN` (the token in its --token-file), or a \
         browser session from /login"
            .into(),
    )
    .into_response()
}

/// `/login`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/login", get(form).post(login))
}

fn form_page(message: Option<&str>) -> Markup {
    layout(
        "Sign in",
        Page::Other,
        html! {
            h1 { "Sign in" }
            @if let Some(m) = message { p.error { (m) } }
            p { "This board needs the token in the server's " code { "--token-file" } "." }
            form method="post" action="/login" {
                label for="token" { "Token " }
                input #token type="password" name="token" autocomplete="current-password" required;
                " "
                button type="submit" { "Sign in" }
            }
        },
    )
}

async fn form(State(s): State<AppState>) -> Response {
    if s.token.is_none() {
        return Redirect::to("/").into_response();
    }
    form_page(None).into_response()
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

async fn login(State(s): State<AppState>, Form(l): Form<Login>) -> Response {
    let Some(token) = s.token.clone() else { return Redirect::to("/").into_response() };
    if !same(l.token.trim().as_bytes(), token.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, form_page(Some("That is not the token.")))
            .into_response();
    }
    let set = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", session(&token));
    ([(header::SET_COOKIE, set)], Redirect::to("/")).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
        assert!(!super::same(b"", b"a"));
    }

    #[test]
    fn the_session_is_not_the_token() {
        let s = super::session("secret");
        assert_eq!(s.len(), 64);
        assert!(!s.contains("secret"));
        assert_ne!(s, super::session("secret2"));
    }

    #[test]
    fn only_loopback_hosts_without_a_token() {
        for ok in
            ["localhost", "LOCALHOST:8080", "127.0.0.1", "127.0.0.1:8080", "[::1]:80", "[::1]"]
        {
            assert!(super::loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "10.0.0.1:8080", "localhost.evil:80", ""] {
            assert!(!super::loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = axum::http::HeaderMap::new();
        h.append(axum::http::header::COOKIE, "a=1; rewind_session=xyz".parse().unwrap());
        assert_eq!(super::cookie(&h, "rewind_session"), Some("xyz"));
        assert_eq!(super::cookie(&h, "rewind"), None);
    }
}
