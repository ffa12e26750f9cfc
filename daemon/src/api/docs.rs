//! `/openapi.json` and a self-contained docs page rendering it (no CDN: the daemon may run offline).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// The document, rendered once by `app()` (it describes these two routes too).
static OPENAPI_JSON: OnceLock<String> = OnceLock::new();

pub fn set_document(doc: &utoipa::openapi::OpenApi) {
    let _ = OPENAPI_JSON.get_or_init(|| {
        serde_json::to_value(doc)
            .map(complete)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| "{}".into())
    });
}

/// The answers every operation of a kind can give whatever its handler says, added where the handler's
/// annotation does not list them (so the document names every status the API really returns), and the
/// formats of path and paging parameters (so a value the document allows is one the API takes):
///
/// - with a bearer requirement: 401 (missing, unknown or expired token);
/// - everything but the health probes: 429 (a rate limit, a quota or the server's capacity, with
///   `Retry-After` and the `limit` it hit);
/// - with path or query parameters: 400 (one that does not parse);
/// - with a request body: 400 (malformed), 413 (over the body limit) and 415 (wrong content type);
/// - everything but the static documents: 503 (the database or the node unavailable);
/// - path parameters named `address` are 0x-addresses, `hash` 32-byte hashes, ids decimal numbers;
///   `limit` is 1 to 1000 and `offset` not negative.
pub fn complete(mut doc: Value) -> Value {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        let static_doc = matches!(
            path.as_str(),
            "/openapi.json" | "/docs" | "/healthz" | "/metrics"
        );
        let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
        for (method, op) in item.iter_mut() {
            if !matches!(method.as_str(), "get" | "post" | "put" | "delete" | "patch") {
                continue;
            }
            let secured = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            let has_params = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty());
            let has_body = op.get("requestBody").is_some();
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params.iter_mut() {
                    constrain(path, p);
                }
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description));
            };
            if secured {
                add("401", "No token, or an unknown, expired or revoked one");
            }
            if !probe {
                add(
                    "429",
                    "Over a rate limit, a quota or the server's capacity: `limit` names the `openledger serve` \
                     flag; retry after `Retry-After` seconds",
                );
            }
            if has_params || has_body {
                add("400", "A parameter or the body does not parse");
            }
            if has_body {
                add("413", "The body is over the limit");
                add(
                    "415",
                    "The body is not of the content type the operation takes",
                );
            }
            if !static_doc {
                add(
                    "503",
                    "The database or the chain node is unavailable, or the request ran past the server's \
                     time limit; retry after `Retry-After` seconds",
                );
            }
        }
    }
    doc
}

fn problem(description: &str) -> Value {
    serde_json::json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// The format the API parses a parameter with, by its name (and, for ids, the route: on-chain ids are
/// uint256, the daemon's own positive 63-bit integers).
fn constrain(path: &str, p: &mut Value) {
    let (Some(name), Some(place)) = (
        p.get("name").and_then(Value::as_str).map(str::to_owned),
        p.get("in").and_then(Value::as_str).map(str::to_owned),
    ) else {
        return;
    };
    let Some(schema) = p.get_mut("schema").and_then(Value::as_object_mut) else {
        return;
    };
    let is = |ty: &str| {
        schema
            .get("type")
            .is_some_and(|t| t == ty || t.as_array().is_some_and(|a| a.iter().any(|x| x == ty)))
    };
    let (is_string, is_integer) = (is("string"), is("integer"));
    let on_chain = path.starts_with("/api/datanets") || path.starts_with("/api/uploads");
    let numeric = |n: &str| n == "id" || n.ends_with("_id");
    let address = |n: &str| matches!(n, "address" | "owner" | "payer" | "contributor" | "account");
    let set = |schema: &mut serde_json::Map<String, Value>, k: &str, v: Value| {
        schema.insert(k.to_owned(), v);
    };
    match (place.as_str(), name.as_str()) {
        (_, n) if address(n) && is_string => set(schema, "pattern", "^0x[0-9a-fA-F]{40}$".into()),
        (_, "hash") if is_string => set(schema, "pattern", "^0x[0-9a-fA-F]{64}$".into()),
        (_, n) if numeric(n) && is_string && on_chain => {
            set(schema, "pattern", "^[0-9]{1,77}$".into())
        }
        (_, "job_id") if is_string => set(schema, "pattern", "^[1-9][0-9]{0,17}$".into()),
        (_, n) if numeric(n) && is_integer => {
            set(schema, "minimum", 1.into());
            set(schema, "maximum", i64::MAX.into());
        }
        ("path", "epoch") if is_integer => {
            set(schema, "minimum", 0.into());
            set(schema, "maximum", i64::MAX.into());
        }
        ("query", "limit") if is_integer => {
            let max = match path {
                "/v1/batches" => 100,
                "/api/credits" => 500,
                _ => 1000,
            };
            set(schema, "minimum", 1.into());
            set(schema, "maximum", max.into());
        }
        ("query", "filename") if is_string => set(schema, "maxLength", 255.into()),
        ("query", "metadata_uri") if is_string => {
            set(schema, "minLength", 1.into());
            set(schema, "maxLength", 2048.into());
        }
        ("query", "offset") if is_integer => {
            set(schema, "minimum", 0.into());
            set(schema, "maximum", i64::MAX.into());
        }
        ("query", "ttl_secs") if is_integer => {
            set(schema, "minimum", 60.into());
            set(schema, "maximum", 604_800.into());
        }
        ("query", "status") if is_string && path.contains("/contributions") => {
            set(
                schema,
                "enum",
                serde_json::json!(["pending", "accepted", "rejected", null]),
            );
        }
        ("query", "format") if is_string && path == "/api/uploads" => {
            set(
                schema,
                "enum",
                serde_json::json!(["jsonl", "text", "markdown", null]),
            );
        }
        ("query", "state") if is_string && path.starts_with("/api/jobs") => set(
            schema,
            "enum",
            serde_json::json!([
                "queued",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                null
            ]),
        ),
        _ => {}
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs_page))
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON.get().cloned().unwrap_or_else(|| "{}".into()),
    )
}

/// A browsable page over `/openapi.json`.
#[utoipa::path(get, path = "/docs", tag = "ops", responses((status = 200, content_type = "text/html", body = String)))]
async fn docs_page() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>OpenLedger API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ddd;margin-top:2em}
.op{border:1px solid #e3e3e3;border-radius:6px;margin:.6em 0;padding:.4em .8em}
.m{display:inline-block;min-width:4.5em;font-weight:700;font-family:monospace}
.get{color:#0a6}.post{color:#06c}.delete{color:#c30}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f6f6f6;padding:.6em;overflow:auto}
details summary{cursor:pointer}
.lock{color:#a60;font-size:12px}
</style></head><body>
<h1 id="title">OpenLedger API</h1><p id="desc"></p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>. Errors are <code>application/problem+json</code> (RFC 9457).</p>
<div id="ops"></div>
<script>
fetch('/openapi.json').then(r=>r.json()).then(doc=>{
  document.getElementById('title').textContent=doc.info.title+' '+doc.info.version;
  document.getElementById('desc').textContent=doc.info.description||'';
  const byTag={};
  for(const [path,item] of Object.entries(doc.paths)){
    for(const [method,op] of Object.entries(item)){
      const tag=(op.tags||['other'])[0];(byTag[tag]=byTag[tag]||[]).push([method,path,op]);
    }
  }
  const root=document.getElementById('ops');
  for(const t of (doc.tags||[]).map(t=>t.name).concat(Object.keys(byTag))){
    if(!byTag[t])continue;const ops=byTag[t];delete byTag[t];
    const h=document.createElement('h2');h.textContent=t;root.appendChild(h);
    for(const [method,path,op] of ops){
      const d=document.createElement('details');d.className='op';
      const s=document.createElement('summary');
      s.innerHTML='<span class="m '+method+'">'+method.toUpperCase()+'</span> <code></code> '+(op.security?'<span class="lock">[auth]</span> ':'')+'<span></span>';
      s.children[1].textContent=path;s.lastChild.textContent=op.summary||'';
      d.appendChild(s);
      const pre=document.createElement('pre');
      pre.textContent=JSON.stringify({description:op.description,parameters:op.parameters,requestBody:op.requestBody,responses:op.responses},null,2);
      d.appendChild(pre);root.appendChild(d);
    }
  }
  const h=document.createElement('h2');h.textContent='schemas';root.appendChild(h);
  const pre=document.createElement('pre');pre.textContent=JSON.stringify((doc.components||{}).schemas,null,2);root.appendChild(pre);
});
</script></body></html>"#;
