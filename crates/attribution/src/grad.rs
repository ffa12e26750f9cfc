//! Gradient attribution for LoRA models (paraphrase-aware): each training example's loss gradient with
//! respect to the adapter's parameters, compressed by a seeded random projection (LoGra-style: a LoRA
//! gradient is a low-rank matrix, so only its wide side is projected), stored at training time; an output's
//! gradient, projected the same way, scores the examples with TracIn dot products and DataInf's correction
//! for examples that dominate the Hessian.
//!
//! The projection is Rademacher (±1/√k) from ChaCha8 seeded by `(seed, parameter index)`: no floating-point
//! transcendental, so every machine draws the same matrices.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, thiserror::Error)]
pub enum GradError {
    #[error("gradient of parameter {index} has {got} values, its shape {rows}x{cols} needs {want}")]
    Shape {
        index: usize,
        rows: usize,
        cols: usize,
        got: usize,
        want: usize,
    },
    #[error("{got} parameter gradients, the projection expects {want}")]
    Count { got: usize, want: usize },
    #[error("a projected gradient has {got} dimensions, the store holds {want}")]
    Dims { got: usize, want: usize },
    #[error("a gradient is not finite")]
    NotFinite,
    #[error(
        "the segments' gradient stores were projected differently (dimensions or blocks differ)"
    )]
    Layout,
    #[error("a segment's source {0} has no model source")]
    UnmappedSource(usize),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a gradient store ({reason})")]
    Corrupt { path: PathBuf, reason: String },
}

/// How a parameter matrix is compressed: LoRA's `A [rank, in]` keeps its rows and projects its columns
/// (`[rank, k]`), `B [out, rank]` projects its rows (`[k, rank]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Cols,
    Rows,
}

/// One parameter matrix of the adapter: shape, which side is projected, and the block (layer) it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub rows: usize,
    pub cols: usize,
    pub side: Side,
    pub block: usize,
}

impl Param {
    /// The projected side's length, and the side kept.
    fn sides(&self) -> (usize, usize) {
        let wide = match self.side {
            Side::Cols => self.cols,
            Side::Rows => self.rows,
        };
        (wide, self.rows * self.cols / wide.max(1))
    }
}

/// Gradient attribution settings; part of a record's commitment.
#[derive(Debug, Clone, PartialEq)]
pub struct GradParams {
    /// Projected dimensions per parameter matrix's wide side.
    pub k: usize,
    /// Seeds the projection matrices.
    pub seed: u64,
    /// DataInf's damping per block, as a multiple of the block's mean squared gradient norm (its paper's
    /// choice, 0.1).
    pub damping: f64,
    /// Examples that count (the highest scores); their sources share the gradient evidence.
    pub top_k: usize,
}

/// Training examples (highest scores) that share the gradient evidence, by default.
pub const DEFAULT_GRADIENT_TOP_K: usize = 8;

impl Default for GradParams {
    fn default() -> Self {
        GradParams {
            k: 4,
            seed: 0x01ed_6e12,
            damping: 0.1,
            top_k: DEFAULT_GRADIENT_TOP_K,
        }
    }
}

impl GradParams {
    /// The `k` that gives about `target` projected dimensions in all for `params` (at least 1).
    pub fn k_for(params: &[Param], target: usize) -> usize {
        let narrow: usize = params.iter().map(|p| p.sides().1).sum();
        ((target as f64 / narrow.max(1) as f64).round() as usize).max(1)
    }
}

/// Projected dimensions a gradient store aims at ("a few thousand in all").
pub const TARGET_DIMS: usize = 4096;

/// The seeded projection for one adapter's parameter layout.
#[derive(Debug, Clone)]
pub struct Projector {
    params: Vec<Param>,
    k: usize,
    /// Per parameter, `k x wide` signs.
    signs: Vec<Vec<i8>>,
    /// Start of each parameter's projected values; the last entry is the total.
    offsets: Vec<usize>,
}

impl Projector {
    pub fn new(params: &[Param], k: usize, seed: u64) -> Self {
        let k = k.max(1);
        let mut offsets = vec![0];
        let signs = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (wide, narrow) = p.sides();
                offsets.push(offsets[offsets.len() - 1] + narrow * k);
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                (0..k * wide)
                    .map(|_| if rng.random::<bool>() { 1 } else { -1 })
                    .collect()
            })
            .collect();
        Projector {
            params: params.to_vec(),
            k,
            signs,
            offsets,
        }
    }

    /// Projected dimensions in all.
    pub fn dims(&self) -> usize {
        self.offsets[self.offsets.len() - 1]
    }

    /// `(start, end)` of each block's projected values, in block order (a block's parameters are adjacent).
    pub fn blocks(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        let mut last = None;
        for (i, p) in self.params.iter().enumerate() {
            let (s, e) = (self.offsets[i], self.offsets[i + 1]);
            match out.last_mut() {
                Some(b) if last == Some(p.block) => b.1 = e,
                _ => out.push((s, e)),
            }
            last = Some(p.block);
        }
        out
    }

    /// Projects one gradient (per parameter, flat row-major, in `params` order).
    pub fn project(&self, grads: &[Vec<f32>]) -> Result<Vec<f32>, GradError> {
        if grads.len() != self.params.len() {
            return Err(GradError::Count {
                got: grads.len(),
                want: self.params.len(),
            });
        }
        let k = self.k;
        let scale = 1.0 / (k as f64).sqrt();
        let mut out = vec![0f32; self.dims()];
        for (i, (p, g)) in self.params.iter().zip(grads).enumerate() {
            if g.len() != p.rows * p.cols {
                return Err(GradError::Shape {
                    index: i,
                    rows: p.rows,
                    cols: p.cols,
                    got: g.len(),
                    want: p.rows * p.cols,
                });
            }
            let s = &self.signs[i];
            let o = &mut out[self.offsets[i]..self.offsets[i + 1]];
            match p.side {
                // [rows, cols] x [cols, k] -> [rows, k]
                Side::Cols => {
                    for (r, row) in g.chunks_exact(p.cols).enumerate() {
                        for j in 0..k {
                            let sj = &s[j * p.cols..(j + 1) * p.cols];
                            let v: f64 =
                                row.iter().zip(sj).map(|(&x, &z)| x as f64 * z as f64).sum();
                            o[r * k + j] = (v * scale) as f32;
                        }
                    }
                }
                // [k, rows] x [rows, cols] -> [k, cols]
                Side::Rows => {
                    for j in 0..k {
                        let sj = &s[j * p.rows..(j + 1) * p.rows];
                        let mut acc = vec![0f64; p.cols];
                        for (row, &z) in g.chunks_exact(p.cols).zip(sj) {
                            for (a, &x) in acc.iter_mut().zip(row) {
                                *a += x as f64 * z as f64;
                            }
                        }
                        for (c, a) in acc.into_iter().enumerate() {
                            o[j * p.cols + c] = (a * scale) as f32;
                        }
                    }
                }
            }
        }
        if out.iter().any(|v| !v.is_finite()) {
            return Err(GradError::NotFinite);
        }
        Ok(out)
    }
}

/// The projected gradients of a model's training examples, with the block layout and each example's
/// source.
#[derive(Debug, Clone, PartialEq)]
pub struct GradStore {
    pub dims: usize,
    pub blocks: Vec<(usize, usize)>,
    /// Per example, in the span index's example order.
    pub sources: Vec<usize>,
    /// `sources.len() x dims`, row-major.
    pub data: Vec<f32>,
    /// `sources.len() x blocks.len()`: each example's squared norm per block, kept beside the rows so a
    /// query does not recompute them.
    norms: Vec<f64>,
}

const MAGIC: &[u8; 8] = b"OLGRAD\x00\x01";

impl GradStore {
    pub fn new(dims: usize, blocks: Vec<(usize, usize)>) -> Self {
        GradStore {
            dims,
            blocks,
            sources: Vec::new(),
            data: Vec::new(),
            norms: Vec::new(),
        }
    }

    fn push_norms(&mut self, g: &[f32]) {
        for &(s, e) in &self.blocks {
            self.norms.push(dot32(&g[s..e], &g[s..e]));
        }
    }

    pub fn push(&mut self, source: usize, g: &[f32]) -> Result<(), GradError> {
        if g.len() != self.dims {
            return Err(GradError::Dims {
                got: g.len(),
                want: self.dims,
            });
        }
        self.sources.push(source);
        self.data.extend_from_slice(g);
        self.push_norms(g);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dims..(i + 1) * self.dims]
    }

    /// One little-endian file: header (dims, blocks, examples), block bounds, sources, then the f32 rows.
    pub fn save(&self, path: &Path) -> Result<(), GradError> {
        let io = |source| GradError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::new(f);
        let mut bytes = Vec::with_capacity(32 + 16 * self.blocks.len() + 8 * self.len());
        bytes.extend_from_slice(MAGIC);
        for v in [self.dims, self.blocks.len(), self.len()] {
            bytes.extend_from_slice(&(v as u64).to_le_bytes());
        }
        for &(s, e) in &self.blocks {
            bytes.extend_from_slice(&(s as u64).to_le_bytes());
            bytes.extend_from_slice(&(e as u64).to_le_bytes());
        }
        for &s in &self.sources {
            bytes.extend_from_slice(&(s as u64).to_le_bytes());
        }
        w.write_all(&bytes).map_err(io)?;
        for v in &self.data {
            w.write_all(&v.to_le_bytes()).map_err(io)?;
        }
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)
    }

    /// Reads a store written by `save`, checking its layout; the rows are read straight into place (the
    /// file is never held twice in memory).
    pub fn open(path: &Path) -> Result<Self, GradError> {
        use std::io::Read;
        let corrupt = |reason: String| GradError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let io = |source| GradError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len() as u128;
        let mut words = |n: usize| -> Result<Vec<usize>, GradError> {
            let mut b = vec![0u8; 8 * n];
            f.read_exact(&mut b)
                .map_err(|_| corrupt("shorter than its header".into()))?;
            Ok(b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()) as usize)
                .collect())
        };
        let head = words(4)?;
        if head[0].to_le_bytes() != *MAGIC {
            return Err(corrupt("bad header".into()));
        }
        let (dims, nb, n) = (head[1], head[2], head[3]);
        let words_in_head = 4u128 + 2 * nb as u128 + n as u128;
        let want = words_in_head * 8 + (n as u128) * (dims as u128) * 4;
        if len != want {
            return Err(corrupt(format!("{len} bytes, the header implies {want}")));
        }
        let bounds = words(2 * nb)?;
        let blocks: Vec<(usize, usize)> = bounds.chunks_exact(2).map(|b| (b[0], b[1])).collect();
        let mut at = 0;
        for &(s, e) in &blocks {
            if s != at || e < s || e > dims {
                return Err(corrupt("blocks do not tile the dimensions".into()));
            }
            at = e;
        }
        if at != dims {
            return Err(corrupt("blocks do not tile the dimensions".into()));
        }
        let sources = words(n)?;
        let mut data = vec![0f32; n * dims];
        f.read_exact(bytemuck::cast_slice_mut(&mut data))
            .map_err(io)?;
        if cfg!(target_endian = "big") {
            data.iter_mut()
                .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
        }
        if data.iter().any(|v| !v.is_finite()) {
            return Err(corrupt("a gradient is not finite".into()));
        }
        let mut store = GradStore {
            dims,
            blocks,
            sources,
            data: Vec::new(),
            norms: Vec::with_capacity(n * nb),
        };
        for g in data.chunks_exact(dims.max(1)).take(n) {
            store.push_norms(g);
        }
        store.data = data;
        Ok(store)
    }

    /// Appends `other`'s rows (a segment of the same model's training data, projected the same way), its
    /// source ids mapped through `sources` (`sources[i]` for id `i`).
    pub fn extend(&mut self, other: GradStore, sources: &[usize]) -> Result<(), GradError> {
        if other.dims != self.dims || other.blocks != self.blocks {
            return Err(GradError::Layout);
        }
        let mapped = other
            .sources
            .iter()
            .map(|&s| sources.get(s).copied().ok_or(GradError::UnmappedSource(s)))
            .collect::<Result<Vec<_>, _>>()?;
        self.sources.extend(mapped);
        self.data.extend_from_slice(&other.data);
        self.norms.extend_from_slice(&other.norms);
        Ok(())
    }

    /// Scores every example against an output's projected gradient `v`: DataInf's closed form per block,
    /// `(1/λ_b)·(⟨v_b, g_k,b⟩ − (1/n)·Σ_i ⟨v_b, g_i,b⟩⟨g_i,b, g_k,b⟩ / (λ_b + ‖g_i,b‖²))` with
    /// `λ_b = damping · mean_i ‖g_i,b‖²`, summed over blocks (positive: the example lowers the output's
    /// loss), next to the plain TracIn dot product and the cosine. The `top_k` highest scores are returned,
    /// best first (ties to the lower example).
    pub fn score(&self, v: &[f32], params: &GradParams) -> Result<GradScores, GradError> {
        use rayon::prelude::*;
        if v.len() != self.dims {
            return Err(GradError::Dims {
                got: v.len(),
                want: self.dims,
            });
        }
        let n = self.len();
        let nb = self.blocks.len();
        // pass 1, per example and block: ⟨v, g⟩ (rows in parallel; the norms are the store's)
        let vg: Vec<f64> = (0..n)
            .into_par_iter()
            .with_min_len(256)
            .flat_map_iter(|i| {
                let row = self.row(i);
                self.blocks
                    .iter()
                    .map(move |&(s, e)| dot32(&v[s..e], &row[s..e]))
            })
            .collect();
        let norm = |i: usize, b: usize| self.norms[i * nb + b];
        let dotv = |i: usize, b: usize| vg[i * nb + b];
        let lambda: Vec<f64> = (0..nb)
            .map(|b| {
                let mean = (0..n).map(|i| norm(i, b)).sum::<f64>() / n.max(1) as f64;
                (params.damping * mean).max(f64::MIN_POSITIVE)
            })
            .collect();
        // pass 2: w_b = (1/n) Σ_i c_i,b g_i,b with c_i,b = ⟨v_b, g_i,b⟩ / (λ_b + ‖g_i,b‖²), so the
        // correction of example k is ⟨w_b, g_k,b⟩
        let w: Vec<f32> = (0..n)
            .into_par_iter()
            .with_min_len(256)
            .fold(
                || vec![0f32; self.dims],
                |mut acc, i| {
                    let row = self.row(i);
                    for (b, &(s, e)) in self.blocks.iter().enumerate() {
                        let c = (dotv(i, b) / (lambda[b] + norm(i, b)) / n as f64) as f32;
                        for (a, &g) in acc[s..e].iter_mut().zip(&row[s..e]) {
                            *a += c * g;
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![0f32; self.dims],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                    a
                },
            );
        // pass 3: DataInf, TracIn and the cosine per example
        let vnorm = dot32(v, v).sqrt();
        let scored: Vec<(f64, f64, f64)> = (0..n)
            .into_par_iter()
            .with_min_len(256)
            .map(|k| {
                let row = self.row(k);
                let (mut datainf, mut tracin, mut gnorm2) = (0.0, 0.0, 0.0);
                for (b, &(s, e)) in self.blocks.iter().enumerate() {
                    let corr = dot32(&w[s..e], &row[s..e]);
                    datainf += (dotv(k, b) - corr) / lambda[b];
                    tracin += dotv(k, b);
                    gnorm2 += norm(k, b);
                }
                let cosine = if vnorm > 0.0 && gnorm2 > 0.0 {
                    tracin / (vnorm * gnorm2.sqrt())
                } else {
                    0.0
                };
                (datainf, tracin, cosine)
            })
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        let keep = params.top_k.min(n);
        let cmp = |a: &usize, b: &usize| scored[*b].0.total_cmp(&scored[*a].0).then(a.cmp(b));
        if keep < n && keep > 0 {
            order.select_nth_unstable_by(keep - 1, cmp);
        }
        order.truncate(keep);
        order.sort_by(cmp);
        let top = order
            .into_iter()
            .map(|k| ExampleScore {
                example: k,
                source: self.sources[k],
                score: scored[k].0,
                tracin: scored[k].1,
                cosine: scored[k].2,
            })
            .collect();
        Ok(GradScores { top })
    }
}

/// The model crate's vectorised dot product, widened for the per-block sums.
fn dot32(a: &[f32], b: &[f32]) -> f64 {
    openledger_model::dot(a, b) as f64
}

/// One training example's scores against an output.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleScore {
    pub example: usize,
    pub source: usize,
    /// DataInf-corrected influence (positive: helps the output).
    pub score: f64,
    /// TracIn: the plain dot product of the projected gradients.
    pub tracin: f64,
    pub cosine: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GradScores {
    /// The `top_k` examples, best first.
    pub top: Vec<ExampleScore>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    fn layout() -> Vec<Param> {
        (0..3)
            .flat_map(|b| {
                [
                    Param {
                        rows: 4,
                        cols: 40,
                        side: Side::Cols,
                        block: b,
                    },
                    Param {
                        rows: 30,
                        cols: 4,
                        side: Side::Rows,
                        block: b,
                    },
                ]
            })
            .collect()
    }

    fn random_grads(rng: &mut ChaCha8Rng, ps: &[Param]) -> Vec<Vec<f32>> {
        ps.iter()
            .map(|p| {
                (0..p.rows * p.cols)
                    .map(|_| StandardNormal.sample(rng))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn projection_is_linear_seeded_and_keeps_dot_products_on_average() {
        let ps = layout();
        let pr = Projector::new(&ps, 16, 7);
        assert_eq!(pr.dims(), 3 * (4 * 16 + 16 * 4));
        assert_eq!(GradParams::k_for(&ps, 384), 16);
        assert_eq!(GradParams::k_for(&ps, 1), 1);
        assert_eq!(pr.blocks(), vec![(0, 128), (128, 256), (256, 384)]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a = random_grads(&mut rng, &ps);
        let b = random_grads(&mut rng, &ps);
        let (pa, pb) = (pr.project(&a).unwrap(), pr.project(&b).unwrap());
        // linear: P(a + b) = P(a) + P(b)
        let sum: Vec<Vec<f32>> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
            .collect();
        let ps_sum = pr.project(&sum).unwrap();
        for ((s, x), y) in ps_sum.iter().zip(&pa).zip(&pb) {
            assert!((s - (x + y)).abs() < 1e-3 * (1.0 + s.abs()));
        }
        // the same seed draws the same matrices; another seed others
        assert_eq!(Projector::new(&ps, 16, 7).project(&a).unwrap(), pa);
        assert_ne!(Projector::new(&ps, 16, 8).project(&a).unwrap(), pa);
        // squared norms are kept in expectation (Johnson-Lindenstrauss): within 25% at these sizes
        let n2 = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
        let full: f64 = a.iter().map(|g| n2(g)).sum();
        let ratio = n2(&pa) / full;
        assert!((0.75..1.25).contains(&ratio), "norm ratio {ratio}");
    }

    #[test]
    fn wrong_shapes_are_refused() {
        let ps = layout();
        let pr = Projector::new(&ps, 4, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut g = random_grads(&mut rng, &ps);
        assert!(matches!(
            pr.project(&g[1..]),
            Err(GradError::Count { got: 5, want: 6 })
        ));
        g[3].pop();
        assert!(matches!(
            pr.project(&g),
            Err(GradError::Shape { index: 3, .. })
        ));
        let mut st = GradStore::new(pr.dims(), pr.blocks());
        assert!(matches!(st.push(0, &[1.0]), Err(GradError::Dims { .. })));
    }

    #[test]
    fn the_example_an_output_resembles_scores_highest_and_the_store_round_trips() {
        let ps = layout();
        let pr = Projector::new(&ps, 8, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let train: Vec<Vec<Vec<f32>>> = (0..20).map(|_| random_grads(&mut rng, &ps)).collect();
        let mut st = GradStore::new(pr.dims(), pr.blocks());
        for (i, g) in train.iter().enumerate() {
            st.push(i % 5, &pr.project(g).unwrap()).unwrap();
        }
        // an output whose gradient is example 13's plus noise
        let noise = random_grads(&mut rng, &ps);
        let out: Vec<Vec<f32>> = train[13]
            .iter()
            .zip(&noise)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + 0.3 * y).collect())
            .collect();
        let v = pr.project(&out).unwrap();
        let params = GradParams {
            top_k: 3,
            ..GradParams::default()
        };
        let s = st.score(&v, &params).unwrap();
        assert_eq!(s.top.len(), 3);
        assert_eq!(s.top[0].example, 13);
        assert_eq!(s.top[0].source, 3);
        assert!(s.top[0].cosine > 0.7, "{:?}", s.top[0]);
        assert!(s.top[1].score < s.top[0].score);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g");
        st.save(&p).unwrap();
        let back = GradStore::open(&p).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.score(&v, &params).unwrap(), s);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 4);
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            GradStore::open(&p),
            Err(GradError::Corrupt { .. })
        ));
    }

    #[test]
    fn segments_extended_into_one_store_score_as_the_whole() {
        let ps = layout();
        let pr = Projector::new(&ps, 8, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let rows: Vec<Vec<f32>> = (0..12)
            .map(|_| pr.project(&random_grads(&mut rng, &ps)).unwrap())
            .collect();
        let mut whole = GradStore::new(pr.dims(), pr.blocks());
        for (i, r) in rows.iter().enumerate() {
            whole.push(i % 4, r).unwrap();
        }
        // rows 0..7 and 7..12 as two segments with their own ids: model source = 3 - local
        let seg = |range: std::ops::Range<usize>| {
            let mut st = GradStore::new(pr.dims(), pr.blocks());
            for i in range {
                st.push(3 - i % 4, &rows[i]).unwrap();
            }
            st
        };
        let map = [3, 2, 1, 0];
        let mut joined = GradStore::new(pr.dims(), pr.blocks());
        joined.extend(seg(0..7), &map).unwrap();
        joined.extend(seg(7..12), &map).unwrap();
        assert_eq!(joined, whole);
        let v = pr.project(&random_grads(&mut rng, &ps)).unwrap();
        let params = GradParams::default();
        assert_eq!(
            joined.score(&v, &params).unwrap(),
            whole.score(&v, &params).unwrap()
        );
        // another projection, or an id the map lacks: refused, the store unchanged
        let other = GradStore::new(pr.dims() + 1, pr.blocks());
        assert!(matches!(joined.extend(other, &map), Err(GradError::Layout)));
        assert!(matches!(
            joined.extend(seg(0..2), &[0]),
            Err(GradError::UnmappedSource(3))
        ));
        assert_eq!(joined, whole);
    }
}
