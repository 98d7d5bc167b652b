//! HTTP plumbing every fake shares: JSON answers with the no-store headers,
//! strict urlencoded parsing, HTTP Basic client credentials, bearer tokens,
//! redirects back to the client in each response mode.

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// An HTML page with this status.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// Sets `Retry-After: secs` when given.
pub(crate) fn with_retry_after(mut resp: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Parses an urlencoded string. Duplicate parameters are an error (RFC 6749
/// §3.1, §3.2: parameters must not be included more than once).
pub(crate) fn parse_params(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(k.to_string());
        }
    }
    Ok(out)
}

/// The request's content type is `application/x-www-form-urlencoded`.
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        })
}

/// The form of a POST: its parameters when it is urlencoded, none otherwise
/// (`Err(name)` of a repeated parameter).
pub(crate) fn form_of(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<BTreeMap<String, String>, String> {
    let raw = if is_form(headers) {
        String::from_utf8_lossy(body).into_owned()
    } else {
        String::new()
    };
    parse_params(&raw)
}

/// `Ok(None)` without an `Authorization` header, `Err` for one that is not a
/// well-formed HTTP Basic pair.
pub(crate) fn decode_basic(headers: &HeaderMap) -> Result<Option<(String, String)>, ()> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let Some((scheme, rest)) = v.split_once(' ') else {
        return Err(());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(());
    }
    let raw = STANDARD.decode(rest.trim()).map_err(|_| ())?;
    let raw = String::from_utf8(raw).map_err(|_| ())?;
    let (id, secret) = raw.split_once(':').ok_or(())?;
    // RFC 6749 §2.3.1: both parts are application/x-www-form-urlencoded.
    let dec = |s: &str| -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((dec(id), dec(secret))))
}

/// The token of an `Authorization: Bearer …` header (RFC 6750 §2.1).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
        .map(|(_, t)| t.trim())
}

/// A 400 whose body is an HTML page, as a proxy in front of a token
/// endpoint might answer.
pub(crate) fn unreadable_error() -> Response {
    html(
        StatusCode::BAD_REQUEST,
        "<html><body><h1>400 Bad Request</h1></body></html>".to_string(),
    )
}

/// A 200 whose body is cut short: `partial` is the start of a token
/// response.
pub(crate) fn truncated_json(partial: &'static str) -> Response {
    let mut resp = (StatusCode::OK, partial).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// How authorize answers the client.
pub(crate) enum ResponseMode {
    Query,
    Fragment,
    FormPost,
}

pub(crate) fn redirect_with(
    redirect_uri: &str,
    mode: &ResponseMode,
    params: &[(&str, &str)],
) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return html(
            StatusCode::INTERNAL_SERVER_ERROR,
            "<!DOCTYPE html><html><head><title>Sandbox misconfigured</title></head><body><h1>Sign in</h1><h2>Sorry, but we're having trouble signing you in.</h2><p>The registered redirect_uri is not an absolute URL.</p><p><small>mailconnect sandbox &mdash; not Microsoft</small></p></body></html>".to_string(),
        );
    };
    match mode {
        ResponseMode::Query => {
            {
                let mut q = url.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            found(&url)
        }
        ResponseMode::Fragment => {
            let frag: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params.iter())
                .finish();
            url.set_fragment(Some(&frag));
            found(&url)
        }
        ResponseMode::FormPost => {
            let inputs: String = params
                .iter()
                .map(|(k, v)| {
                    format!(
                        "<input type=\"hidden\" name=\"{}\" value=\"{}\"/>",
                        html_escape(k),
                        html_escape(v)
                    )
                })
                .collect();
            let body = format!(
                "<html><head><title>Working...</title></head><body onload=\"document.forms[0].submit()\"><form method=\"POST\" action=\"{}\">{inputs}<noscript><input type=\"submit\" value=\"Continue\"/></noscript></form></body></html>",
                html_escape(url.as_str())
            );
            html(StatusCode::OK, body)
        }
    }
}

/// Sends the client an authorize error (RFC 6749 §4.1.2.1): `error`, the
/// `error_description` when there is one, and the `state`.
pub(crate) fn redirect_error(
    redirect_uri: &str,
    mode: &ResponseMode,
    error: &str,
    desc: Option<&str>,
    state: Option<&str>,
) -> Response {
    let mut params: Vec<(&str, &str)> = vec![("error", error)];
    if let Some(d) = desc {
        params.push(("error_description", d));
    }
    if let Some(s) = state {
        params.push(("state", s));
    }
    redirect_with(redirect_uri, mode, &params)
}

fn found(url: &url::Url) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
