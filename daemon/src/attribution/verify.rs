//! Re-checking a stored attribution from the public artifacts: the inference's tokens, the model's
//! adapter, manifest, span index and gradient store, with the method parameters the record names.

use std::path::PathBuf;

use openledger_attribution::METHODS;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::params::RecordParams;
use super::{AttributionConfig, AttributionError, Attributor, Gradient, Subject, store};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no inference {0}")]
    UnknownInference(String),
    #[error(
        "inference {0} has no attribution record (the base model, a failed call, or served before attribution existed)"
    )]
    NoRecord(String),
    #[error(
        "the attribution of {0} is still pending (its gradient part is queued); verify it once it completes"
    )]
    Pending(String),
    #[error("the record names method {0}; this build verifies ol-attr/1 and ol-attr/2")]
    Method(String),
    #[error("the record's parameters are unreadable: {0}")]
    Params(String),
    #[error("base model {0} of the adapter is not installed here (see `openledger models list`)")]
    NoBase(String),
    #[error(transparent)]
    Attribution(#[from] AttributionError),
    #[error("loading the base model: {0}")]
    Model(#[from] openledger_model::ModelError),
    #[error("starting the gradient worker: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// The outcome: `matches` when the recomputation agrees with the stored record in every field that
/// decides money (and the stored hash is the hash of the stored record).
#[derive(Debug, Clone)]
pub struct Verdict {
    pub inference_id: String,
    pub matches: bool,
    pub differences: Vec<String>,
    pub stored_hash: Option<String>,
    pub recomputed_hash: String,
    pub status: String,
}

impl Verdict {
    pub fn json(&self) -> Value {
        json!({
            "inference_id": self.inference_id, "matches": self.matches, "differences": self.differences,
            "stored_record_hash": self.stored_hash, "recomputed_record_hash": self.recomputed_hash,
            "stored_status": self.status,
        })
    }
}

/// The attribution settings a record was made with.
pub fn config_of(record: &Value) -> Result<AttributionConfig, VerifyError> {
    let p: RecordParams = serde_json::from_value(record["params"].clone())
        .map_err(|e| VerifyError::Params(e.to_string()))?;
    Ok(p.config())
}

fn close(a: &Value, b: &Value, rel: f64) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= rel * x.abs().max(y.abs()).max(1e-12),
        _ => a == b,
    }
}

/// Compares two records field by field; floats from the gradient pass within `1e-3` (a recomputation on
/// another thread count rounds differently), everything else exactly. A record of several choices is
/// compared choice by choice.
pub fn compare(stored: &Value, fresh: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    for key in [
        "method",
        "inference_id",
        "model",
        "params",
        "commitment",
        "output_tokens",
        "weights",
    ] {
        if stored[key] != fresh[key] {
            diffs.push(format!(
                "{key}: stored {} recomputed {}",
                stored[key], fresh[key]
            ));
        }
    }
    match (&stored["choices"], &fresh["choices"]) {
        (Value::Null, Value::Null) => compare_evidence("", stored, fresh, &mut diffs),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let at = format!("choices[{i}].");
                if x["weights"] != y["weights"] {
                    diffs.push(format!(
                        "{at}weights: stored {} recomputed {}",
                        x["weights"], y["weights"]
                    ));
                }
                compare_evidence(&at, x, y, &mut diffs);
            }
        }
        (a, b) => diffs.push(format!("choices: stored {a} recomputed {b}")),
    }
    diffs
}

/// One output's spans and gradient part (`at` prefixes the fields named in differences).
fn compare_evidence(at: &str, stored: &Value, fresh: &Value, diffs: &mut Vec<String>) {
    let (ss, fs) = (&stored["spans"], &fresh["spans"]);
    match (ss.as_array(), fs.as_array()) {
        (Some(a), Some(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                for k in [
                    "start",
                    "len",
                    "count",
                    "contributions",
                    "text",
                    "prompt_tokens",
                    "from_prompt",
                ] {
                    if x[k] != y[k] {
                        diffs.push(format!(
                            "{at}spans[{i}].{k}: stored {} recomputed {}",
                            x[k], y[k]
                        ));
                    }
                }
                if !close(&x["log_prob"], &y["log_prob"], 1e-9) {
                    diffs.push(format!(
                        "{at}spans[{i}].log_prob: stored {} recomputed {}",
                        x["log_prob"], y["log_prob"]
                    ));
                }
            }
        }
        _ => diffs.push(format!("{at}spans: stored {ss} recomputed {fs}")),
    }
    let (sg, fg) = (&stored["gradient"], &fresh["gradient"]);
    match (sg["top"].as_array(), fg["top"].as_array()) {
        (Some(a), Some(b)) if a.len() == b.len() => {
            if !close(&sg["loss"], &fg["loss"], 1e-3) {
                diffs.push(format!(
                    "{at}gradient.loss: stored {} recomputed {}",
                    sg["loss"], fg["loss"]
                ));
            }
            // the same examples with the same scores; near-ties may swap places
            for x in a {
                match b.iter().find(|y| y["example"] == x["example"]) {
                    Some(y) => {
                        for k in ["score", "tracin", "cosine"] {
                            if !close(&x[k], &y[k], 1e-3) {
                                diffs.push(format!(
                                    "{at}gradient example {}: {k} stored {} recomputed {}",
                                    x["example"], x[k], y[k]
                                ));
                            }
                        }
                        if x["source"] != y["source"] {
                            diffs.push(format!(
                                "{at}gradient example {}: source differs",
                                x["example"]
                            ));
                        }
                    }
                    None => diffs.push(format!(
                        "{at}gradient example {} is not among the recomputed top",
                        x["example"]
                    )),
                }
            }
        }
        _ if sg == fg => {}
        _ => diffs.push(format!("{at}gradient: stored {sg} recomputed {fg}")),
    }
}

/// Recomputes the attribution of `inference_id` with the parameters its record names and compares.
pub async fn verify(pool: &PgPool, inference_id: &str) -> Result<Verdict, VerifyError> {
    let (st, outputs) = stored(pool, inference_id).await?;
    let stored = st.record.clone().unwrap_or(Value::Null);
    let cfg = if stored.is_null() {
        // flagged: recompute with today's defaults to say whether it is attributable now
        AttributionConfig::default()
    } else {
        if !METHODS.iter().any(|m| stored["method"] == json!(m)) {
            return Err(VerifyError::Method(stored["method"].to_string()));
        }
        config_of(&stored)?
    };
    let attributor = attributor_for(pool, st.job_id, cfg).await?;
    let prompt: Vec<u32> = st.prompt_tokens.iter().map(|&t| t as u32).collect();
    let outputs = store::tokens(&outputs);
    let outputs: Vec<&[u32]> = outputs.iter().map(Vec::as_slice).collect();
    let subject = Subject {
        inference_id,
        job_id: st.job_id,
        prompt: &prompt,
        outputs: &outputs,
    };
    let gradient = match &stored["choices"] {
        Value::Array(c) => c.first().map_or(&Value::Null, |c| &c["gradient"]),
        _ => &stored["gradient"],
    };
    let mode = if gradient["top"].is_array() || stored.is_null() {
        Gradient::Run
    } else {
        Gradient::Skip
    };
    let verdict = |differences: Vec<String>, stored_hash, recomputed_hash| Verdict {
        inference_id: inference_id.into(),
        matches: differences.is_empty(),
        differences,
        stored_hash,
        recomputed_hash,
        status: st.status.clone(),
    };
    let fresh = match attributor.attribute(pool, &subject, mode).await {
        Ok(r) => r,
        Err(e) if st.status == "flagged" => {
            // still not attributable, for the reason recorded (or another)
            let now = e.to_string();
            let mut differences = Vec::new();
            if Some(&now) != st.error.as_ref() {
                differences.push(format!(
                    "flagged: stored {:?}, now {now:?}",
                    st.error.clone().unwrap_or_default()
                ));
            }
            return Ok(verdict(differences, None, String::new()));
        }
        Err(e) => return Err(e.into()),
    };
    let differences = if st.status == "flagged" {
        vec![format!(
            "stored as flagged ({}) but attributable now",
            st.error.clone().unwrap_or_default()
        )]
    } else {
        let mut d = Vec::new();
        if !hash_holds(&st, &stored) {
            d.push("the stored record_hash is not the hash of the stored record".into());
        }
        d.extend(compare(&stored, &fresh.body));
        d
    };
    Ok(verdict(differences, st.record_hash.clone(), fresh.hash))
}

/// The stored attribution of `inference_id` (complete or flagged) and the inference's output tokens, every
/// choice's.
async fn stored(
    pool: &PgPool,
    inference_id: &str,
) -> Result<(store::Stored, Vec<Vec<i32>>), VerifyError> {
    let Some(outputs) = store::outputs(pool, inference_id).await? else {
        return Err(VerifyError::UnknownInference(inference_id.into()));
    };
    let st = store::get(pool, inference_id)
        .await?
        .ok_or_else(|| VerifyError::NoRecord(inference_id.into()))?;
    if st.status == "pending" {
        return Err(VerifyError::Pending(inference_id.into()));
    }
    Ok((st, outputs))
}

/// An attributor for model `job_id` with `cfg` (its base model's tokenizer, from the installed base model):
/// what recomputes a record, under the method and parameters the record names.
pub async fn attributor_for(
    pool: &PgPool,
    job_id: i64,
    cfg: AttributionConfig,
) -> Result<Attributor, VerifyError> {
    let model = crate::models::trained_model(pool, job_id)
        .await?
        .ok_or(AttributionError::UnknownModel(job_id))?;
    let base_row = crate::models::base_model(pool, &model.base_model_hash)
        .await?
        .ok_or_else(|| VerifyError::NoBase(model.base_model.clone()))?;
    let (path, hash) = (PathBuf::from(&base_row.path), base_row.hash.clone());
    let (p2, h2) = (path.clone(), hash.clone());
    let tokenizer = tokio::task::spawn_blocking(move || {
        openledger_model::BaseModel::load(&p2, &openledger_model::Device::Cpu, Some(h2))
            .map(|b| b.tokenizer)
    })
    .await
    .map_err(|e| VerifyError::Io(std::io::Error::other(e)))??;
    Ok(Attributor::new(cfg, tokenizer, (path, hash))?)
}

/// The stored hash is the hash of the stored text, and that text is the stored record's canonical JSON.
fn hash_holds(st: &store::Stored, record: &Value) -> bool {
    let text = st.record_canonical.as_deref().unwrap_or_default();
    st.record_hash.as_deref() == Some(crate::common::sha256_hex(text.as_bytes()).as_str())
        && crate::common::canonical_json(record) == text
}

#[cfg(test)]
mod tests {
    use super::*;
    use openledger_attribution::METHOD;

    #[test]
    fn compare_finds_money_differences_and_tolerates_gradient_rounding() {
        let rec = json!({
            "method": METHOD, "inference_id": "inf-1", "model": "ft-1", "params": {}, "commitment": {"a": 1},
            "output_tokens": 5,
            "spans": [{"start": 0, "len": 4, "count": 1, "contributions": [], "text": "abcd", "log_prob": -3.0}],
            "gradient": {"loss": 1.0, "top": [{"example": 3, "source": 1, "score": 2.0, "tracin": 1.0, "cosine": 0.5}]},
            "weights": {"no_attribution": 10},
        });
        assert!(compare(&rec, &rec).is_empty());
        let mut near = rec.clone();
        near["gradient"]["top"][0]["score"] = json!(2.0000001);
        assert!(compare(&rec, &near).is_empty());
        let mut far = rec.clone();
        far["gradient"]["top"][0]["score"] = json!(2.1);
        far["weights"]["no_attribution"] = json!(11);
        far["spans"][0]["start"] = json!(1);
        let d = compare(&rec, &far);
        assert_eq!(d.len(), 3, "{d:?}");
    }

    #[test]
    fn a_record_of_several_choices_is_compared_choice_by_choice() {
        let choice = json!({
            "spans": [{"start": 0, "len": 4, "count": 1, "contributions": [], "text": "abcd", "log_prob": -3.0}],
            "gradient": {"skipped": "gradient attribution is off"},
            "weights": {"no_attribution": 10},
        });
        let rec = json!({
            "method": METHOD, "inference_id": "inf-1", "model": "ft-1", "params": {}, "commitment": {"a": 1},
            "output_tokens": [5, 4], "choices": [choice.clone(), choice], "weights": {"no_attribution": 10},
        });
        assert!(compare(&rec, &rec).is_empty());
        let mut far = rec.clone();
        far["choices"][1]["spans"][0]["len"] = json!(3);
        far["choices"][1]["weights"]["no_attribution"] = json!(11);
        let d = compare(&rec, &far);
        assert_eq!(
            d,
            [
                "choices[1].weights: stored {\"no_attribution\":10} recomputed {\"no_attribution\":11}",
                "choices[1].spans[0].len: stored 4 recomputed 3",
            ],
            "{d:?}"
        );
        // a choice fewer is a difference, not a pass
        let mut fewer = rec.clone();
        fewer["choices"].as_array_mut().unwrap().pop();
        assert!(
            compare(&rec, &fewer)
                .iter()
                .any(|d| d.starts_with("choices:"))
        );
    }

    #[test]
    fn the_record_names_its_parameters() {
        let rec = json!({"params": {
            "span": {"min_len": 5, "max_count": 3, "density": 0.1},
            "gradient": {"k": 4, "seed": "1", "damping": 0.2, "top_k": 3},
            "combine": {"cos_lo": 0.1, "cos_hi": 0.4, "floor_ppm": 7},
        }});
        let c = config_of(&rec).unwrap();
        assert_eq!(
            (
                c.span.min_len,
                c.span.max_count,
                c.grad.top_k,
                c.combine.floor_ppm
            ),
            (5, 3, 3, 7)
        );
        assert!(matches!(
            config_of(&json!({"params": {}})),
            Err(VerifyError::Params(_))
        ));
    }
}
