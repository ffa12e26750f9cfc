//! Structured outputs and the rest of what a request may ask of the sampler: a JSON schema or JSON mode
//! enforced per row of the batch (constrained and free sequences share steps and the free ones decode as
//! they would alone), schemas the grammar engine cannot honour refused by name, `logit_bias`, and the
//! model's log-probabilities.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;

use candle_core::Device;
use openledger_model::serve::{
    Constraint, Engine, EngineConfig, Event, FinishReason, Finished, GenerateRequest, Grammars,
    Priority, SamplingParams, ServingModel, TokenLogprobs,
};
use openledger_model::{BaseModel, Llama, ModelConfig, ModelError, Precision};
use serde_json::{Value, json};

fn base() -> BaseModel {
    BaseModel::random(ModelConfig::tiny(), 11).unwrap()
}

fn engine(base: &BaseModel) -> Engine {
    let model = ServingModel::new(Llama::new(base, Precision::F32, &Device::Cpu).unwrap()).unwrap();
    Engine::start(
        model,
        base.tokenizer.clone(),
        EngineConfig {
            max_seqs: 8,
            max_batch_tokens: 16,
            kv_cache_bytes: 64 << 20,
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

fn submit(
    e: &Engine,
    prompt: &[u32],
    sampling: SamplingParams,
    max_tokens: usize,
    constraint: Option<Constraint>,
) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    e.submit(GenerateRequest {
        prompt: prompt.to_vec(),
        adapter: None,
        sampling,
        max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
        constraint,
        priority: Priority::Interactive,
        sink: Box::new(move |ev| tx.send(ev).is_ok()),
    })
    .unwrap();
    rx
}

fn finished(rx: &mpsc::Receiver<Event>) -> Finished {
    loop {
        match rx.recv().unwrap() {
            Event::Done(f) => return f,
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
}

/// The schema the constrained requests follow: every kind of bound the grammar must keep.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["red", "blue"]}, "maxItems": 2},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "tags", "ok"],
        "additionalProperties": false
    })
}

/// What a validator would check of `person_schema` (the test does not trust the grammar engine to judge
/// its own output).
fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{text:?} is not an object"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "name", "ok", "tags"], "{text}");
    let name = o["name"].as_str().unwrap();
    assert!((1..=6).contains(&name.chars().count()), "{text}");
    let age = o["age"].as_i64().unwrap_or_else(|| panic!("{text}: age"));
    assert!((0..=120).contains(&age), "{text}");
    let tags = o["tags"].as_array().unwrap();
    assert!(tags.len() <= 2, "{text}");
    assert!(
        tags.iter().all(|t| t == "red" || t == "blue"),
        "{text}: tags"
    );
    assert!(o["ok"].is_boolean(), "{text}");
}

#[test]
fn json_schema_output_validates_and_free_rows_decode_as_alone() {
    let b = base();
    let g = Grammars::new(&b.tokenizer, b.config.vocab_size).unwrap();
    let prompt = b.tokenizer.encode("Describe a person as JSON:").unwrap();
    let free_prompt = b.tokenizer.encode("Once upon a time").unwrap();

    // the free sequence alone
    let e = engine(&b);
    let alone = finished(&submit(
        &e,
        &free_prompt,
        SamplingParams::greedy(),
        40,
        None,
    ));
    drop(e);

    // then beside constrained ones (greedy and sampled), all in the same steps
    let e = engine(&b);
    let sampled = |seed| SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        ..Default::default()
    };
    let rxs = [
        submit(
            &e,
            &prompt,
            SamplingParams::greedy(),
            200,
            Some(g.json_schema("response_format", &person_schema()).unwrap()),
        ),
        submit(&e, &free_prompt, SamplingParams::greedy(), 40, None),
        submit(
            &e,
            &prompt,
            sampled(1),
            200,
            Some(g.json_schema("response_format", &person_schema()).unwrap()),
        ),
    ];
    let out: Vec<Finished> = rxs.iter().map(finished).collect();
    assert_eq!(
        out[1].tokens, alone.tokens,
        "a constrained neighbour changed a free row"
    );
    for f in [&out[0], &out[2]] {
        assert_eq!(f.reason, FinishReason::Stop, "{:?}", f.text);
        check_person(&f.text);
    }
    // the free row's own text is no JSON at all: the constraint is what made the others parse
    assert!(serde_json::from_str::<Value>(&out[1].text).is_err());
}

/// JSON mode on its own: the first token must open an object, the model's end token is allowed only once
/// the object is whole, and after it nothing is. (A random model's unbounded strings would not end within
/// any budget, so this drives the constraint by hand; `tests/smollm.rs` and the daemon's tests run JSON
/// mode on the real model.)
#[test]
fn json_mode_allows_an_object_and_its_end_only() {
    let b = base();
    let vocab = b.config.vocab_size;
    let g = Grammars::new(&b.tokenizer, vocab).unwrap();
    let mut c = g.json_object("response_format").unwrap();
    let allowed = |c: &mut Constraint| {
        let mut l = vec![0.0f32; vocab];
        c.mask(&mut l).unwrap();
        (0..vocab as u32)
            .filter(|&t| l[t as usize].is_finite())
            .collect::<Vec<u32>>()
    };
    let eos = b.tokenizer.eos;
    let id = |ch: char| {
        let ids = b.tokenizer.encode(&ch.to_string()).unwrap();
        assert_eq!(ids.len(), 1);
        ids[0]
    };
    assert_eq!(allowed(&mut c), [id('{')], "only an object may open");
    for ch in r#"{"a":[1,"#.chars() {
        assert!(allowed(&mut c).contains(&id(ch)));
        assert!(
            !allowed(&mut c).contains(&eos),
            "end allowed inside the object"
        );
        c.consume(id(ch)).unwrap();
    }
    assert!(
        !allowed(&mut c).contains(&id('}')),
        "a dangling comma closed"
    );
    for ch in "true]}".chars() {
        c.consume(id(ch)).unwrap();
    }
    assert!(c.is_accepting());
    assert!(c.is_stopped() || allowed(&mut c) == [eos]);
    // a token the grammar never allowed is an error, not a silent acceptance
    let mut c = g.json_object("response_format").unwrap();
    assert!(c.consume(id('x')).is_err());
}

#[test]
fn schemas_the_grammar_engine_cannot_honour_are_refused_by_name() {
    let b = base();
    let g = Grammars::new(&b.tokenizer, b.config.vocab_size).unwrap();
    // a keyword the engine does not implement, and a oneOf it cannot prove exclusive
    let unique = json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true});
    let one_of = json!({"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]}}});
    for (schema, word) in [(unique, "uniqueItems"), (one_of, "oneOf")] {
        match g.json_schema("response_format", &schema) {
            Err(ModelError::Invalid { name, reason }) => {
                assert_eq!(name, "response_format");
                assert!(reason.contains(word), "{reason}");
            }
            other => panic!("{word} accepted: {other:?}"),
        }
    }
    // a oneOf whose branches cannot overlap is exact, and served
    let disjoint = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
    g.json_schema("response_format", &disjoint).unwrap();
    match g.json_schema("response_format", &json!(["not", "a", "schema"])) {
        Err(ModelError::Invalid { name, .. }) => assert_eq!(name, "response_format"),
        other => panic!("a list taken for a schema: {other:?}"),
    }
    match g.lark("grammar", "start: no_such_rule") {
        Err(ModelError::Invalid { name, .. }) => assert_eq!(name, "grammar"),
        other => panic!("an undefined rule accepted: {other:?}"),
    }
}

#[test]
fn logit_bias_moves_the_choice_and_logprobs_are_the_models() {
    let b = base();
    let e = engine(&b);
    let prompt = b.tokenizer.encode("The answer is").unwrap();
    let z = b.tokenizer.encode("z").unwrap()[0];
    let plain = finished(&submit(&e, &prompt, SamplingParams::greedy(), 1, None));
    let first = plain.tokens[0];
    // -100 on the greedy choice: another token; +100 on a chosen token: that token, every step
    let banned = finished(&submit(
        &e,
        &prompt,
        SamplingParams {
            logit_bias: vec![(first, -100.0)],
            ..SamplingParams::greedy()
        },
        1,
        None,
    ));
    assert_ne!(banned.tokens[0], first);
    let forced = finished(&submit(
        &e,
        &prompt,
        SamplingParams {
            logit_bias: vec![(z, 100.0)],
            ..SamplingParams::greedy()
        },
        5,
        None,
    ));
    assert_eq!(forced.text, "zzzzz");
    let bad = SamplingParams {
        logit_bias: vec![(3, 101.0)],
        ..SamplingParams::greedy()
    };
    assert!(matches!(
        bad.validate(),
        Err(ModelError::Invalid {
            name: "logit_bias",
            ..
        })
    ));

    // logprobs: the drawn token's and the top 5, under the model's distribution (bias not applied)
    let rx = submit(
        &e,
        &prompt,
        SamplingParams {
            logprobs: Some(5),
            logit_bias: vec![(z, 100.0)],
            ..SamplingParams::greedy()
        },
        3,
        None,
    );
    let mut streamed = Vec::new();
    let f = loop {
        match rx.recv().unwrap() {
            Event::Token {
                logprobs: Some(lp), ..
            } => streamed.push(lp),
            Event::Done(f) => break f,
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    };
    assert_eq!(
        f.logprobs, streamed,
        "the stream and the whole answer differ"
    );
    assert_eq!(f.logprobs.len(), 3);
    for lp in &f.logprobs {
        assert_eq!(lp.top.len(), 5);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let total: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!(total <= 1.0 + 1e-5);
        // 'z' was forced by the bias, not chosen by the model: its own log-probability is no maximum
        assert_eq!(lp.token, z);
        assert!(lp.logprob <= lp.top[0].1 + 1e-6);
    }
    // the first position's figures are the log-softmax of the plain request's logits: the greedy token tops
    assert_eq!(f.logprobs[0].top[0].0, first);
}

#[test]
fn token_logprobs_are_a_log_softmax() {
    let logits = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY];
    let lp = TokenLogprobs::from_logits(&logits, 2, 3);
    let z: f32 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|l| l.exp())
        .sum();
    assert!((lp.logprob - (2.0 - z.ln())).abs() < 1e-6);
    assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
    assert!((lp.top.iter().map(|t| t.1.exp()).sum::<f32>() - 1.0).abs() < 1e-6);
    assert_eq!(
        TokenLogprobs::from_logits(&logits, 3, 0).logprob,
        f32::NEG_INFINITY
    );
}
