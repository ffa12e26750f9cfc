//! Int8 weights and the batched matmul the serving engine runs on them.
//!
//! candle 0.11's quantized CPU matmul multiplies one activation row at a time (a rayon fork-join per row
//! and per projection) and converts every block's f16 scale inside each dot product. A serving step
//! carries many rows, so this packs each matrix once (signed bytes in blocks of 32 with an f32 scale, the
//! Q8_0 scheme) and multiplies tiles of activation rows against tiles of weight rows, sharing the loads,
//! with one fork-join per matmul.
//!
//! Every output element goes through the same sequence of operations whatever tile it falls in, so a
//! row's result never depends on which other rows share the batch: a sequence decodes to the same tokens
//! alone or batched.

// The one place in the workspace with `unsafe`: SIMD intrinsics need raw-pointer loads and a CPU-feature
// check before calling `#[target_feature]` code. The pointers come from bounds-checked slices.
#![allow(unsafe_code)]

use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Values per block; each block has its own scale.
pub const BLOCK: usize = 32;

/// A `[rows, cols]` matrix as int8 blocks of `BLOCK` values along each row, with one f32 scale per block.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Matrix {
    /// Quantizes row-major `w` (`rows * cols` values; `cols` a multiple of `BLOCK`). Each value moves by at
    /// most half a step, 1/254 of its block's largest magnitude.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK) || w.len() != rows * cols {
            return Err(ModelError::invalid(
                "matrix",
                format!(
                    "{rows}x{cols} with {} values (columns must be a multiple of {BLOCK})",
                    w.len()
                ),
            ));
        }
        let nb = cols / BLOCK;
        let mut qs = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * nb];
        qs.par_chunks_mut(cols)
            .zip(scales.par_chunks_mut(nb))
            .zip(w.par_chunks(cols))
            .for_each(|((q, d), w)| quantize_row(w, q, d));
        Ok(Q8Matrix {
            rows,
            cols,
            qs,
            scales,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.qs.len() + 4 * self.scales.len()
    }

    /// The values as f32 (row-major), as the matmul sees them.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, &d)| q.iter().map(move |&v| v as f32 * d))
            .collect()
    }

    /// `x [m, cols] @ self^T`: `[m, rows]`, row-major. Activation rows are quantized the same way per
    /// block, so each block's product is an exact integer dot product times the two scales.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (cols, nb) = (self.cols, self.cols / BLOCK);
        debug_assert_eq!(x.len(), m * cols);
        if m == 0 || self.rows == 0 {
            return vec![0.0; m * self.rows];
        }
        let mut xq = vec![0i8; m * cols];
        let mut xd = vec![0f32; m * nb];
        if m >= 8 {
            xq.par_chunks_mut(cols)
                .zip(xd.par_chunks_mut(nb))
                .zip(x.par_chunks(cols))
                .for_each(|((q, d), x)| quantize_row(x, q, d));
        } else {
            for ((q, d), x) in xq
                .chunks_mut(cols)
                .zip(xd.chunks_mut(nb))
                .zip(x.chunks(cols))
            {
                quantize_row(x, q, d);
            }
        }
        let acts = Acts {
            qs: &xq,
            scales: &xd,
            m,
            cols,
        };
        // Output transposed, `[rows, m]`, so each task owns a contiguous run of weight rows; tasks of a
        // multiple of TILE_W weight rows, several per thread so uneven cores even out.
        let threads = rayon::current_num_threads().max(1);
        let per_task = (self.rows.div_ceil(threads * 4)).div_ceil(TILE_W) * TILE_W;
        let per_task = per_task.clamp(TILE_W, self.rows.max(TILE_W));
        let mut yt = vec![0f32; self.rows * m];
        yt.par_chunks_mut(per_task * m)
            .enumerate()
            .for_each(|(t, out)| {
                let j0 = t * per_task;
                let nj = out.len() / m;
                self.kernel(j0, nj, &acts, out);
            });
        let mut y = vec![0f32; m * self.rows];
        for (j, col) in yt.chunks_exact(m).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[i * self.rows + j] = v;
            }
        }
        y
    }

    /// Weight rows `j0..j0+nj` against every activation row, into `out[(j - j0) * m + i]`.
    fn kernel(&self, j0: usize, nj: usize, a: &Acts<'_>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // SAFETY: the CPU has the features `simd::tile` is compiled for; every pointer it reads
            // stays within `self` and `a` (tile rows are bounds-checked by `w_ptrs` / `x_ptrs`).
            unsafe { self.kernel_simd(j0, nj, a, out) };
            return;
        }
        let nb = self.cols / BLOCK;
        for j in j0..j0 + nj {
            let (wq, wd) = self.row(j);
            for i in 0..a.m {
                let (xq, xd) = a.row(i);
                out[(j - j0) * a.m + i] = dot_scalar(wq, wd, xq, xd, nb);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel_simd(&self, j0: usize, nj: usize, a: &Acts<'_>, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let m = a.m;
        let mut j = j0;
        while j < j0 + nj {
            let cw = (j0 + nj - j).min(TILE_W);
            let mut i = 0;
            while i < m {
                let rx = (m - i).min(TILE_X);
                // SAFETY: as in `kernel`.
                unsafe {
                    match (rx, cw) {
                        (2, 4) => self.put::<2, 4>(j, j0, i, a, nb, out),
                        (1, 4) => self.put::<1, 4>(j, j0, i, a, nb, out),
                        (2, _) => {
                            for c in 0..cw {
                                self.put::<2, 1>(j + c, j0, i, a, nb, out)
                            }
                        }
                        _ => {
                            for c in 0..cw {
                                self.put::<1, 1>(j + c, j0, i, a, nb, out)
                            }
                        }
                    }
                }
                i += rx;
            }
            j += cw;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn put<const R: usize, const C: usize>(
        &self,
        j: usize,
        j0: usize,
        i: usize,
        a: &Acts<'_>,
        nb: usize,
        out: &mut [f32],
    ) {
        let (wq, wd) = self.ptrs::<C>(j);
        let (xq, xd) = a.ptrs::<R>(i);
        // SAFETY: the pointers cover `nb` blocks each (checked by `ptrs`).
        let r = unsafe { simd::tile::<R, C>(wq, wd, xq, xd, nb) };
        for (c, col) in (0..C).map(|c| (c, j + c - j0)) {
            for (ri, v) in r.iter().enumerate() {
                out[col * a.m + i + ri] = v[c];
            }
        }
    }

    fn row(&self, j: usize) -> (&[i8], &[f32]) {
        let nb = self.cols / BLOCK;
        (
            &self.qs[j * self.cols..(j + 1) * self.cols],
            &self.scales[j * nb..(j + 1) * nb],
        )
    }

    /// Pointers to weight rows `j..j+C` (panics, rather than reading past the end, if out of range).
    fn ptrs<const C: usize>(&self, j: usize) -> ([*const i8; C], [*const f32; C]) {
        let mut q = [std::ptr::null(); C];
        let mut d = [std::ptr::null(); C];
        for c in 0..C {
            let (wq, wd) = self.row(j + c);
            q[c] = wq.as_ptr();
            d[c] = wd.as_ptr();
        }
        (q, d)
    }
}

/// Weight rows per tile.
const TILE_W: usize = 4;
/// Activation rows per tile.
const TILE_X: usize = 2;

/// Quantized activation rows.
struct Acts<'a> {
    qs: &'a [i8],
    scales: &'a [f32],
    m: usize,
    cols: usize,
}

impl Acts<'_> {
    fn row(&self, i: usize) -> (&[i8], &[f32]) {
        let nb = self.cols / BLOCK;
        (
            &self.qs[i * self.cols..(i + 1) * self.cols],
            &self.scales[i * nb..(i + 1) * nb],
        )
    }

    #[cfg(target_arch = "x86_64")]
    fn ptrs<const R: usize>(&self, i: usize) -> ([*const i8; R], [*const f32; R]) {
        let mut q = [std::ptr::null(); R];
        let mut d = [std::ptr::null(); R];
        for r in 0..R {
            let (xq, xd) = self.row(i + r);
            q[r] = xq.as_ptr();
            d[r] = xd.as_ptr();
        }
        (q, d)
    }
}

fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = amax / 127.0;
        *db = s;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            // |v * inv| <= 127 up to rounding, so never -128 (the SIMD path's sign trick needs that)
            *q = ((v * inv).round() as i32).clamp(-127, 127) as i8;
        }
    }
}

fn dot_scalar(wq: &[i8], wd: &[f32], xq: &[i8], xd: &[f32], nb: usize) -> f32 {
    let mut acc = 0f32;
    for b in 0..nb {
        let s: i32 = wq[b * BLOCK..(b + 1) * BLOCK]
            .iter()
            .zip(&xq[b * BLOCK..(b + 1) * BLOCK])
            .map(|(&w, &x)| w as i32 * x as i32)
            .sum();
        acc += s as f32 * (wd[b] * xd[b]);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// Dot products of `R` activation rows with `C` weight rows over `nb` blocks: `[r][c]`. Each pair
    /// has its own accumulator and sees the same operations in the same order for any `R` and `C`.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; each `w`/`x` points at `nb * 32` bytes and each `wd`/`xd` at `nb`
    /// scales; no quantized value is -128.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize, const C: usize>(
        w: [*const i8; C],
        wd: [*const f32; C],
        x: [*const i8; R],
        xd: [*const f32; R],
        nb: usize,
    ) -> [[f32; C]; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..nb {
            let mut wv = [_mm256_setzero_si256(); C];
            for c in 0..C {
                // SAFETY: within the `nb` blocks of row `c` (caller's contract).
                wv[c] = unsafe { _mm256_loadu_si256(w[c].add(b * 32).cast()) };
            }
            for r in 0..R {
                // SAFETY: as above.
                let (xv, dx) =
                    unsafe { (_mm256_loadu_si256(x[r].add(b * 32).cast()), *xd[r].add(b)) };
                let ax = _mm256_sign_epi8(xv, xv);
                for c in 0..C {
                    // |x| * (w * sign x) = x * w, pairwise summed to i16 (at most 2 * 127^2), then to i32
                    let p16 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv[c], xv));
                    let p32 = _mm256_madd_epi16(p16, ones);
                    // SAFETY: as above.
                    let s = _mm256_set1_ps(unsafe { *wd[c].add(b) } * dx);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), s, acc[r][c]);
                }
            }
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = hsum(acc[r][c]);
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn matmul_is_the_product_of_the_quantized_values() {
        let mut rng = StdRng::seed_from_u64(7);
        let (rows, cols, m) = (37, 96, 5);
        let w = random(rows * cols, &mut rng);
        let x = random(m * cols, &mut rng);
        let q = Q8Matrix::quantize(&w, rows, cols).unwrap();
        let y = q.matmul(&x, m);
        let wq = q.dequantize();
        let xq = Q8Matrix::quantize(&x, m, cols).unwrap().dequantize();
        for i in 0..m {
            for j in 0..rows {
                let exact: f32 = (0..cols).map(|k| x[i * cols + k] * w[j * cols + k]).sum();
                let of_quantized: f32 =
                    (0..cols).map(|k| xq[i * cols + k] * wq[j * cols + k]).sum();
                let got = y[i * rows + j];
                assert!(
                    (got - of_quantized).abs() < 1e-4,
                    "({i},{j}): {got} vs {of_quantized}"
                );
                // and two 8-bit roundings of values in [-1, 1] over 96 terms stay near the f32 product
                assert!((got - exact).abs() < 0.2, "({i},{j}): {got} vs {exact}");
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_any_batch() {
        let mut rng = StdRng::seed_from_u64(11);
        let (rows, cols) = (70, 64);
        let q = Q8Matrix::quantize(&random(rows * cols, &mut rng), rows, cols).unwrap();
        let x = random(9 * cols, &mut rng);
        let all = q.matmul(&x, 9);
        for i in 0..9 {
            let one = q.matmul(&x[i * cols..(i + 1) * cols], 1);
            assert_eq!(one, all[i * rows..(i + 1) * rows], "row {i}");
        }
        // and the SIMD tiles agree with the scalar definition up to summation order
        let nb = cols / BLOCK;
        let mut xq = vec![0i8; cols];
        let mut xd = vec![0f32; nb];
        quantize_row(&x[..cols], &mut xq, &mut xd);
        for (j, &got) in all[..rows].iter().enumerate() {
            let (wq, wd) = q.row(j);
            let s = dot_scalar(wq, wd, &xq, &xd, nb);
            assert!(
                (s - got).abs() <= 1e-4 * s.abs().max(1.0),
                "{j}: {s} vs {got}"
            );
        }
    }

    #[test]
    fn dequantize_round_trips_within_half_a_step() {
        let mut rng = StdRng::seed_from_u64(3);
        let w = random(4 * 64, &mut rng);
        let q = Q8Matrix::quantize(&w, 4, 64).unwrap();
        for (b, (a, o)) in q
            .dequantize()
            .chunks(BLOCK)
            .zip(w.chunks(BLOCK))
            .enumerate()
        {
            let amax = o.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, o) in a.iter().zip(o) {
                assert!((a - o).abs() <= amax / 254.0 + 1e-6, "block {b}");
            }
        }
        assert!(Q8Matrix::quantize(&w, 4, 60).is_err());
    }
}
