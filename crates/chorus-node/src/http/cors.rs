//! Cross-origin requests (`chorus node --cors-origin ORIGIN`): a web page served from one of the
//! named origins may call the API from the browser (tower-http's CORS layer answers the
//! preflights and adds the headers). None by default, so no other site's page can read a node.
//! A named origin's pages can do what the API allows without a token (on a tokenless loopback
//! node: write); `*` allows every origin and is refused without a token (`crate::run`).

use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The CORS layer for `origins` (`None` when there are none).
pub fn layer(origins: &[String]) -> Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .map(|o| {
                    HeaderValue::from_str(o.trim_end_matches('/'))
                        .with_context(|| format!("--cors-origin {o:?} is not a header value"))
                })
                .collect::<Result<Vec<_>>>()?,
        )
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                HeaderName::from_static("idempotent-replayed"),
                HeaderName::from_static("chorus-events"),
                HeaderName::from_static("chorus-state-hash"),
            ])
            .max_age(Duration::from_secs(600)),
    ))
}
