//! `openledger infer`: a chat completion against a running `serve`, streamed to the terminal.

use std::io::Write;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// The prompt (the user's message).
    pub prompt: String,
    /// The model: the base model's id or a trained adapter's `ft-<job id>` (`GET /v1/models` lists them).
    #[arg(long, short)]
    pub model: String,
    /// The daemon's address [default: the running dev stack's, else http://127.0.0.1:8080].
    #[arg(long, env = "OPENLEDGER_URL")]
    pub url: Option<String>,
    /// A session token or API key (`openledger keys create`).
    #[arg(long, env = "OPENLEDGER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A system message before the prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// 0 is greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop sequence (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Pay-first: the bytes32 request id already paid to FeeRouter.payInference; served only when
    /// `--api-key` signs in as the payer.
    #[arg(long, conflicts_with = "request_secret")]
    pub request_id: Option<String>,
    /// Pay-first: the bytes32 secret whose keccak256 is the request id paid (`cast keccak <secret>`); no
    /// sign-in needed.
    #[arg(long, env = "OPENLEDGER_REQUEST_SECRET", hide_env_values = true)]
    pub request_secret: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: InferArgs) -> anyhow::Result<()> {
    let base = super::devstack::api_url(args.url.as_deref());
    let url = format!("{}/v1/chat/completions", base.trim_end_matches('/'));
    let mut req = reqwest::Client::new().post(&url).json(&request_body(&args));
    if let Some(k) = &args.api_key {
        req = req.bearer_auth(k);
    }
    let res = req
        .send()
        .await
        .with_context(|| format!("no daemon at {base}"))?;
    let status = res.status();
    if !status.is_success() {
        let text = res.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("{status}: {detail}");
    }
    let mut answer = Answer::default();
    let mut out = std::io::stdout();
    let mut stream = res.bytes_stream();
    let mut buf = Vec::new();
    'read: while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("reading the stream")?);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                if data == "[DONE]" {
                    break 'read;
                }
                if let Some(t) = answer.take(data)?
                    && !global.json
                {
                    write!(out, "{t}")?;
                    out.flush()?;
                }
            }
        }
    }
    answer.print(global.json);
    Ok(())
}

/// The chat completion request the arguments describe (streamed, with usage).
fn request_body(args: &InferArgs) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": args.prompt}));
    let mut body = json!({
        "model": args.model, "messages": messages, "stream": true,
        "stream_options": {"include_usage": true},
    });
    for (k, v) in [
        ("max_tokens", args.max_tokens.map(Value::from)),
        ("temperature", args.temperature.map(Value::from)),
        ("top_p", args.top_p.map(Value::from)),
        ("top_k", args.top_k.map(Value::from)),
        ("seed", args.seed.map(Value::from)),
        ("request_id", args.request_id.clone().map(Value::from)),
        (
            "request_secret",
            args.request_secret.clone().map(Value::from),
        ),
    ] {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    if !args.stop.is_empty() {
        body["stop"] = json!(args.stop);
    }
    body
}

/// The streamed answer, assembled chunk by chunk.
#[derive(Default)]
struct Answer {
    text: String,
    finish: Value,
    usage: Value,
    /// The `openledger` part: inference id, payment, attribution.
    meta: Value,
}

impl Answer {
    /// Takes one chunk's `data`: the text it adds, if any; an error chunk fails.
    fn take(&mut self, data: &str) -> anyhow::Result<Option<String>> {
        let v: Value = serde_json::from_str(data).context("a malformed stream chunk")?;
        if let Some(e) = v.get("error") {
            bail!("the server failed mid-stream: {}", e["message"]);
        }
        if !v["openledger"].is_null() {
            self.meta = v["openledger"].clone();
        }
        if !v["usage"].is_null() {
            self.usage = v["usage"].clone();
        }
        let c = &v["choices"][0];
        if !c["finish_reason"].is_null() {
            self.finish = c["finish_reason"].clone();
        }
        let t = c["delta"]["content"].as_str().map(str::to_owned);
        if let Some(t) = &t {
            self.text.push_str(t);
        }
        Ok(t)
    }

    /// The whole answer as JSON (`--json`), or a summary line on stderr after the streamed text.
    fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                json!({"text": self.text, "finish_reason": self.finish, "usage": self.usage,
                       "openledger": self.meta})
            );
        } else {
            println!();
            eprintln!(
                "[{}] {} prompt + {} completion tokens, finish: {}, payment: {}",
                self.meta["inference_id"].as_str().unwrap_or("?"),
                self.usage["prompt_tokens"],
                self.usage["completion_tokens"],
                self.finish.as_str().unwrap_or("?"),
                self.meta["payment"]["mode"].as_str().unwrap_or("?"),
            );
        }
    }
}
