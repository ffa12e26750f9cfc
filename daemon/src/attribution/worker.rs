//! The gradient worker: the base model in f32 (what the hand-written backward pass runs on) and the
//! adapters gradients are taken under, on one thread fed by a bounded channel, so a backward pass never
//! blocks the async runtime and never runs twice at once on two cores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use openledger_attribution::Projector;
use openledger_attribution::lora::{layout, output_sequence, projected_gradient};
use openledger_model::{BaseModel, Device, Llama, Lora, LoraConfig, Precision};
use tokio::sync::oneshot;

use super::GradArtifacts;

/// Requests waiting for the worker; more are refused (the attribution is then queued for a retry).
const QUEUE: usize = 64;
/// Adapters (and their projections) kept.
const ADAPTERS: usize = 8;

struct Request {
    job: i64,
    lora: LoraConfig,
    adapter_seed: u64,
    k: usize,
    seed: u64,
    prompt: Vec<u32>,
    output: Vec<u32>,
    reply: oneshot::Sender<Result<(f64, Vec<f32>), String>>,
}

#[derive(Debug, Clone)]
pub struct GradientWorker {
    tx: mpsc::SyncSender<Request>,
}

impl GradientWorker {
    pub fn start(base: PathBuf, base_hash: String) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE);
        std::thread::Builder::new()
            .name("attribution-gradients".into())
            .spawn(move || run(&base, &base_hash, rx))?;
        Ok(GradientWorker { tx })
    }

    /// The projected gradient of `output` after `prompt` under the adapter `g` names, and its mean loss.
    pub async fn gradient(
        &self,
        job: i64,
        g: &GradArtifacts,
        prompt: &[u32],
        output: &[u32],
    ) -> Result<(f64, Vec<f32>), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Request {
                job,
                lora: g.lora.clone(),
                adapter_seed: g.adapter_seed,
                k: g.k,
                seed: g.seed,
                prompt: prompt.to_vec(),
                output: output.to_vec(),
                reply,
            })
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => "the gradient worker is busy".to_string(),
                mpsc::TrySendError::Disconnected(_) => "the gradient worker stopped".to_string(),
            })?;
        rx.await
            .map_err(|_| "the gradient worker dropped the request".to_string())?
    }
}

type Key = (i64, u64, usize, u64);

fn run(base_path: &Path, base_hash: &str, rx: mpsc::Receiver<Request>) {
    let mut model: Option<Llama> = None;
    let mut adapters: HashMap<Key, (Lora, Projector)> = HashMap::new();
    while let Ok(r) = rx.recv() {
        let out = (|| -> Result<(f64, Vec<f32>), String> {
            if model.is_none() {
                let base = BaseModel::load(base_path, &Device::Cpu, Some(base_hash.to_string()))
                    .map_err(|e| format!("base model: {e}"))?;
                let m = Llama::new(&base, Precision::F32, &Device::Cpu)
                    .map_err(|e| format!("base model: {e}"))?;
                tracing::info!(model = %base_path.display(), "gradient attribution model loaded (f32)");
                model = Some(m);
            }
            let Some(m) = model.as_ref() else {
                return Err("base model not loaded".into());
            };
            let key = (r.job, r.adapter_seed, r.k, r.seed);
            if !adapters.contains_key(&key) {
                let lora = Lora::init(&m.config, r.lora.clone(), r.adapter_seed, &Device::Cpu)
                    .map_err(|e| format!("adapter of ft-{}: {e}", r.job))?;
                let projector = Projector::new(&layout(&lora), r.k, r.seed);
                if adapters.len() >= ADAPTERS {
                    adapters.clear();
                }
                adapters.insert(key, (lora, projector));
            }
            let Some((lora, projector)) = adapters.get(&key) else {
                return Err("adapter not loaded".into());
            };
            let seq = output_sequence(&r.prompt, &r.output);
            projected_gradient(m, lora, projector, &seq).map_err(|e| e.to_string())
        })();
        let _ = r.reply.send(out);
    }
}
