//! The web UI (ModelFactory, OpenChat, rewards, operator view): the static files under `ui/` and the
//! contract ABIs, compiled into the binary and served at `/` and `/app/`. No CDN, nothing fetched at run
//! time; the UI talks only to this API and, through the wallet, to the chain.

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;
use tower_http::compression::CompressionLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use super::ApiError;
use crate::state::AppState;

#[derive(Embed)]
#[folder = "../ui/"]
#[include = "index.html"]
#[include = "app.css"]
#[include = "src/*.js"]
#[include = "src/pages/*.js"]
struct Ui;

#[derive(Embed)]
#[folder = "../contracts/abi/"]
#[include = "*.json"]
struct Abi;

/// `/` (the app shell) and `/app/{path}` (its modules, styles and `abi/<Contract>.json`), gzip when asked;
/// `rpc` is the chain's RPC URL advertised to browsers, the one origin besides this one the page may reach.
pub fn routes(rpc: Option<&str>) -> Router<AppState> {
    let policy =
        HeaderValue::from_str(&csp(rpc)).unwrap_or(HeaderValue::from_static("default-src 'self'"));
    Router::new()
        .route("/", get(index))
        .route("/app/{*path}", get(asset))
        // no-cache + ETag: a new binary's UI shows at once, an unchanged file costs a 304
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            policy,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(CompressionLayer::new().gzip(true))
}

async fn index(headers: HeaderMap) -> Response {
    serve(Ui::get("index.html"), "index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let file = match path.strip_prefix("abi/") {
        Some(name) => Abi::get(name),
        None => Ui::get(&path),
    };
    serve(file, &path, &headers)
}

/// The page may talk to this daemon and to the chain's advertised RPC node, nothing else.
fn csp(rpc: Option<&str>) -> String {
    let origin = rpc.and_then(|u| {
        let (scheme, rest) = u.split_once("://")?;
        let host = rest.split(['/', '?', '#']).next()?;
        Some(format!(" {scheme}://{host}"))
    });
    format!(
        "default-src 'self'; connect-src 'self'{}; img-src 'self' data:; style-src 'self'; script-src 'self'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        origin.unwrap_or_default()
    )
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// The file, or a 304 when the client holds this version (its ETag).
fn serve(file: Option<rust_embed::EmbeddedFile>, path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = file else {
        return ApiError::NotFound(format!("no UI file {path}")).into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        // the embedded bytes are 'static: no copy
        let mut r = Response::new(Body::from(file.data));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(path)),
        );
        r
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::csp;

    #[test]
    fn the_policy_names_the_rpc_origin_only() {
        let c = csp(Some("http://127.0.0.1:8545/path?key=1"));
        assert!(
            c.contains("connect-src 'self' http://127.0.0.1:8545;"),
            "{c}"
        );
        assert!(!c.contains("key=1"), "{c}");
        assert!(csp(None).contains("connect-src 'self';"));
    }
}
