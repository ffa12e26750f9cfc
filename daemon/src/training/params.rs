//! The parameters of a training job, checked before it is queued: the base model, the Datanet versions (or
//! a PEFT folder to import), the hyper-parameters, and whether to publish on chain.

use std::path::PathBuf;

use alloy::primitives::U256;
use openledger_model::train::TrainConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A Datanet to train on; without `version`, its latest published version.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatanetRef {
    /// Decimal Datanet id.
    pub id: String,
    /// Decimal version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `params` of a `train` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Installed base model id (see `GET /v1/base-models`) or its hash.
    pub base_model: String,
    #[serde(default)]
    pub datanets: Vec<DatanetRef>,
    /// Instead of training: a PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`) on
    /// the daemon's disk, trained elsewhere on this base model; it is checked, copied and published like a
    /// trained adapter (with no Datanets: nothing to attribute to). Admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<PathBuf>,
    /// Hyper-parameters; every field optional (defaults in `openledger train --help`).
    #[serde(default)]
    pub config: TrainConfig,
    /// Register the model and publish the adapter on chain when training succeeds.
    #[serde(default = "yes")]
    pub publish: bool,
}

fn yes() -> bool {
    true
}

/// Datanet ids with their pinned versions (`None`: the latest).
pub type Versions = Vec<(U256, Option<u64>)>;

pub fn parse_params(v: &Value) -> Result<(TrainParams, Versions), String> {
    // the error names the field at fault (`config.learning_rate: invalid type...`)
    let p: TrainParams = serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    if p.base_model.trim().is_empty() {
        return Err("base_model is empty".into());
    }
    if p.import.is_some() {
        if !p.datanets.is_empty() {
            return Err("an import trains nothing: give datanets or import, not both".into());
        }
    } else if p.datanets.is_empty() || p.datanets.len() > 16 {
        return Err("datanets must name 1 to 16 Datanets".into());
    }
    let mut ids = Vec::new();
    for d in &p.datanets {
        let id = U256::from_str_radix(&d.id, 10)
            .map_err(|_| format!("datanet id must be a decimal integer, got {:?}", d.id))?;
        let version = d
            .version
            .as_deref()
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| format!("version must be a positive integer, got {v:?}"))
            })
            .transpose()?;
        if ids.iter().any(|(i, _)| *i == id) {
            return Err(format!("Datanet {id} is listed twice"));
        }
        ids.push((id, version));
    }
    // the context limit is checked against the model in `authorize`
    p.config.validate(usize::MAX).map_err(|e| e.to_string())?;
    Ok((p, ids))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn partial_configs_keep_the_other_defaults() {
        // what the web UI's wizard sends: a few settings, a LoRA rank and alpha only
        let (p, _) = parse_params(&serde_json::json!({
            "base_model": "SmolLM2", "datanets": [{"id": "3", "version": "1"}],
            "config": {"steps": 12, "lora": {"rank": 16, "alpha": 32}},
        }))
        .unwrap();
        let d = openledger_model::LoraConfig::default();
        assert_eq!((p.config.lora.rank, p.config.lora.alpha), (16, 32.0));
        assert_eq!(
            (p.config.lora.dropout, &p.config.lora.targets),
            (d.dropout, &d.targets)
        );
        assert_eq!(p.config.steps, Some(12));
        assert_eq!(p.config.batch_size, TrainConfig::default().batch_size);
        let e = parse_params(&serde_json::json!({
            "base_model": "SmolLM2", "datanets": [{"id": "3"}], "config": {"lora": {"rank": "big"}},
        }))
        .unwrap_err();
        assert!(e.starts_with("config.lora.rank:"), "{e}");
    }
}
