//! Where gradient attribution meets the model: an adapter's parameter layout for the projection, and the
//! projected gradient of one token sequence (a training example, or an inference's prompt + output with
//! the output as targets).

use openledger_model::tokenizer::Tokenized;
use openledger_model::{Llama, Lora, ModelError};

use crate::grad::{GradError, Param, Projector, Side};

#[derive(Debug, thiserror::Error)]
pub enum GradientError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Grad(#[from] GradError),
}

/// The adapter's parameters in `Lora::vars` order (per layer, projections sorted, A then B): A projects its
/// columns, B its rows, one block per layer.
pub fn layout(lora: &Lora) -> Vec<Param> {
    let per_layer = 2 * lora.config.targets.len().max(1);
    lora.shapes()
        .into_iter()
        .enumerate()
        .map(|(i, (rows, cols))| Param {
            rows,
            cols,
            side: if i % 2 == 0 { Side::Cols } else { Side::Rows },
            block: i / per_layer,
        })
        .collect()
}

/// The projected gradient of `tokens`' mean loss over its targets, and that loss.
pub fn projected_gradient(
    model: &Llama,
    lora: &Lora,
    projector: &Projector,
    tokens: &Tokenized,
) -> Result<(f64, Vec<f32>), GradientError> {
    let (loss, grads) = openledger_model::sequence_gradient(model, lora, tokens)?;
    Ok((loss, projector.project(&grads)?))
}

/// A prompt and an output as one sequence whose targets are the output's tokens.
pub fn output_sequence(prompt: &[u32], output: &[u32]) -> Tokenized {
    let mut ids = prompt.to_vec();
    ids.extend_from_slice(output);
    let mut targets = vec![false; prompt.len()];
    targets.extend(std::iter::repeat_n(true, output.len()));
    Tokenized { ids, targets }
}
