//! What the engine tests share.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, mpsc};

use openledger_model::BaseModel;
use openledger_model::serve::{
    AdapterRef, Backend, Engine, EngineConfig, Event, GenerateRequest, Priority, SamplingParams,
    ServedAdapter,
};

/// Greedy generations through an engine, all requests submitted at once (they share steps).
pub fn generate<B: Backend>(
    model: B,
    b: &BaseModel,
    reqs: &[(Vec<u32>, Option<Arc<ServedAdapter>>)],
    max_tokens: usize,
    cfg: EngineConfig,
) -> Vec<Vec<u32>> {
    let engine = Engine::start(model, b.tokenizer.clone(), cfg).unwrap();
    engine
        .preload(reqs.iter().filter_map(|(_, a)| a.clone()).collect())
        .unwrap();
    let mut rxs = Vec::new();
    for (prompt, a) in reqs {
        let (tx, rx) = mpsc::channel();
        engine
            .submit(GenerateRequest {
                prompt: prompt.clone(),
                adapter: a.as_ref().map(|a| AdapterRef {
                    id: a.id.clone(),
                    dir: PathBuf::from("/nonexistent"),
                    sha256: None,
                }),
                sampling: SamplingParams::greedy(),
                max_tokens,
                stop: Vec::new(),
                ignore_eos: true,
                constraint: None,
                priority: Priority::Interactive,
                sink: Box::new(move |e| tx.send(e).is_ok()),
            })
            .unwrap();
        rxs.push(rx);
    }
    rxs.into_iter()
        .map(|rx| {
            loop {
                match rx.recv().unwrap() {
                    Event::Done(f) => break f.tokens,
                    Event::Failed(e) => panic!("{e}"),
                    _ => {}
                }
            }
        })
        .collect()
}
