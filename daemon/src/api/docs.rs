//! `/openapi.json` and a self-contained docs page rendering it (no CDN: the daemon may run offline).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// The document, rendered once by `app()` (it describes these two routes too).
static OPENAPI_JSON: OnceLock<String> = OnceLock::new();

pub fn set_document(doc: &utoipa::openapi::OpenApi) {
    let _ = OPENAPI_JSON.get_or_init(|| doc.to_pretty_json().unwrap_or_else(|_| "{}".into()));
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
