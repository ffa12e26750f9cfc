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

/// The three tile shapes `kernel_tiles` takes, from one kernel family of `simd`.
#[cfg(target_arch = "x86_64")]
macro_rules! tiles {
    ($f:ident, $x:expr) => {
        (
            simd::$f::<$x, TILE_W> as TileFn<$x, TILE_W>,
            simd::$f::<1, TILE_W> as TileFn<1, TILE_W>,
            simd::$f::<1, 1> as TileFn<1, 1>,
        )
    };
}

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
        Self::matmul_group(&[self], x, m).pop().unwrap_or_default()
    }

    /// `x @ w^T` for several matrices with the same columns (q, k and v; gate and up): the activations are
    /// quantized once and all products share one fork-join. Each result is what `matmul` gives.
    ///
    /// # Panics
    /// If the matrices' column counts differ or `x` is not `m` rows of them.
    pub fn matmul_group(mats: &[&Q8Matrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
        let Some(cols) = mats.first().map(|w| w.cols) else {
            return Vec::new();
        };
        assert!(mats.iter().all(|w| w.cols == cols) && x.len() == m * cols);
        let nb = cols / BLOCK;
        let mut ys: Vec<Vec<f32>> = mats.iter().map(|w| vec![0f32; m * w.rows]).collect();
        let total: usize = mats.iter().map(|w| w.rows).sum();
        if m == 0 || total == 0 {
            return ys;
        }
        let mut xq = vec![0i8; m * cols];
        let mut xd = vec![0f32; m * nb];
        let quantize = |((q, d), x): ((&mut [i8], &mut [f32]), &[f32])| quantize_row(x, q, d);
        if m >= 32 {
            xq.par_chunks_mut(cols)
                .zip(xd.par_chunks_mut(nb))
                .zip(x.par_chunks(cols))
                .for_each(quantize);
        } else {
            xq.chunks_mut(cols)
                .zip(xd.chunks_mut(nb))
                .zip(x.chunks(cols))
                .for_each(quantize);
        }
        let acts = Acts {
            qs: &xq,
            scales: &xd,
            m,
            cols,
        };
        // Each task owns a run of one matrix's weight rows (a multiple of TILE_W), several tasks per
        // thread so uneven cores even out.
        let threads = rayon::current_num_threads().max(1);
        let per_task = (total.div_ceil(threads * 4)).div_ceil(TILE_W) * TILE_W;
        let outs: Vec<Out> = ys
            .iter_mut()
            .zip(mats)
            .map(|(y, w)| Out {
                ptr: y.as_mut_ptr(),
                rows: w.rows,
                m,
            })
            .collect();
        let tasks: Vec<(usize, usize, usize)> = mats
            .iter()
            .enumerate()
            .flat_map(|(k, w)| {
                (0..w.rows)
                    .step_by(per_task)
                    .map(move |j0| (k, j0, per_task.min(w.rows - j0)))
            })
            .collect();
        tasks.into_par_iter().for_each(|(k, j0, nj)| {
            mats[k].kernel(j0, nj, &acts, &outs[k].task(j0, nj));
        });
        drop(outs);
        ys
    }

    /// Weight rows `j0..j0+nj` against every activation row, into `out`.
    fn kernel(&self, j0: usize, nj: usize, a: &Acts<'_>, out: &TaskOut<'_>) {
        #[cfg(target_arch = "x86_64")]
        match simd::level() {
            // SAFETY: the CPU has the features the kernels are compiled for (`simd::level`).
            simd::Level::Avx512Vnni => {
                unsafe { self.kernel_tiles((j0, nj), a, out, tiles!(tile512, TILE_X_512)) };
                return;
            }
            simd::Level::Avx2 => {
                unsafe { self.kernel_tiles((j0, nj), a, out, tiles!(tile, TILE_X)) };
                return;
            }
            simd::Level::Scalar => {}
        }
        let nb = self.cols / BLOCK;
        for j in j0..j0 + nj {
            let (wq, wd) = self.row(j);
            for i in 0..a.m {
                let (xq, xd) = a.row(i);
                out.set(i, j, dot_scalar(wq, wd, xq, xd, nb));
            }
        }
    }

    /// The task's weight rows in tiles of `TILE_W` by activation rows in tiles of `X`: full tiles through
    /// `full`, leftover activation rows one at a time through `row`, leftover weight rows through `one`.
    /// Every kernel gives each (row, column) pair the same operations, so the tiling never changes a bit.
    ///
    /// # Safety
    /// The CPU supports the features the three kernels are compiled for.
    #[cfg(target_arch = "x86_64")]
    unsafe fn kernel_tiles<const X: usize>(
        &self,
        (j0, nj): (usize, usize),
        a: &Acts<'_>,
        out: &TaskOut<'_>,
        (full, row, one): (TileFn<X, TILE_W>, TileFn<1, TILE_W>, TileFn<1, 1>),
    ) {
        let mut j = j0;
        while j < j0 + nj {
            let cw = (j0 + nj - j).min(TILE_W);
            let mut i = 0;
            while i < a.m {
                let rx = (a.m - i).min(X);
                // SAFETY: the caller's contract; `put` takes its pointers from bounds-checked rows.
                unsafe {
                    if cw == TILE_W && rx == X {
                        self.put(j, i, a, out, full)
                    } else if cw == TILE_W {
                        for r in 0..rx {
                            self.put(j, i + r, a, out, row)
                        }
                    } else {
                        for r in 0..rx {
                            for c in 0..cw {
                                self.put(j + c, i + r, a, out, one)
                            }
                        }
                    }
                }
                i += rx;
            }
            j += cw;
        }
    }

    /// One tile: weight rows `j..j+C` by activation rows `i..i+R`.
    ///
    /// # Safety
    /// The CPU supports the features `tile` is compiled for.
    #[cfg(target_arch = "x86_64")]
    unsafe fn put<const R: usize, const C: usize>(
        &self,
        j: usize,
        i: usize,
        a: &Acts<'_>,
        out: &TaskOut<'_>,
        tile: TileFn<R, C>,
    ) {
        let (wq, wd) = self.ptrs::<C>(j);
        let (xq, xd) = a.ptrs::<R>(i);
        // SAFETY: the pointers cover the rows' blocks (checked by `ptrs`); the features per the caller.
        let r = unsafe { tile(wq, wd, xq, xd, self.cols / BLOCK) };
        for (ri, v) in r.iter().enumerate() {
            for (c, &v) in v.iter().enumerate() {
                out.set(i + ri, j + c, v);
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

/// A SIMD tile kernel (`simd::tile`, `simd::tile512`): `R` activation rows by `C` weight rows over `nb`
/// blocks.
#[cfg(target_arch = "x86_64")]
type TileFn<const R: usize, const C: usize> = unsafe fn(
    [*const i8; C],
    [*const f32; C],
    [*const i8; R],
    [*const f32; R],
    usize,
) -> [[f32; C]; R];
/// Activation rows per tile (AVX2: 16 registers).
const TILE_X: usize = 2;
/// Activation rows per tile with AVX-512's 32 registers.
const TILE_X_512: usize = 4;

/// The `[m, rows]` output, written by parallel tasks that each own a range of columns (weight rows).
struct Out {
    ptr: *mut f32,
    rows: usize,
    m: usize,
}

// SAFETY: tasks write through `TaskOut`, whose column ranges do not overlap.
unsafe impl Sync for Out {}

impl Out {
    fn task(&self, j0: usize, nj: usize) -> TaskOut<'_> {
        assert!(j0 + nj <= self.rows);
        TaskOut {
            out: self,
            cols: j0..j0 + nj,
        }
    }
}

/// One task's columns of `Out`.
struct TaskOut<'a> {
    out: &'a Out,
    cols: std::ops::Range<usize>,
}

impl TaskOut<'_> {
    fn set(&self, i: usize, j: usize, v: f32) {
        assert!(i < self.out.m && self.cols.contains(&j));
        // SAFETY: in bounds (checked above) of the `m * rows` buffer `Out` borrows for the matmul; no
        // other task writes column `j`.
        unsafe { *self.out.ptr.add(i * self.out.rows + j) = v };
    }
}

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
    #[cfg(target_arch = "x86_64")]
    if simd::level() != simd::Level::Scalar {
        // SAFETY: AVX2 is present (every non-scalar level has it); the slices' lengths are checked there.
        unsafe { simd::quantize_row(x, q, d) };
        return;
    }
    quantize_row_scalar(x, q, d);
}

fn quantize_row_scalar(x: &[f32], q: &mut [i8], d: &mut [f32]) {
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
            // |v * inv| <= 127 up to rounding, so never -128 (the kernels' sign trick needs that); ties
            // to even, as the SIMD conversion rounds
            *q = ((v * inv).round_ties_even() as i32).clamp(-127, 127) as i8;
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

    /// The kernels this CPU runs. One choice per process, so every row of every batch takes the same path.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Level {
        /// 64 byte products per instruction (`vpdpbusd`).
        Avx512Vnni,
        Avx2,
        Scalar,
    }

    pub fn level() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            if std::env::var_os("OPENLEDGER_NO_AVX512").is_none()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vnni")
            {
                Level::Avx512Vnni
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                Level::Avx2
            } else {
                Level::Scalar
            }
        })
    }

    /// `quantize_row` with AVX2: the same scale, the same products and the same rounding (to nearest even).
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32]) {
        let nb = d.len();
        assert!(x.len() == nb * 32 && q.len() == nb * 32);
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, db) in d.iter_mut().enumerate() {
            // SAFETY: block `b` of `x` and `q` (lengths asserted above).
            unsafe {
                let p = x.as_ptr().add(b * 32);
                let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p.add(o)));
                let mut mx = _mm256_and_ps(v[0], abs);
                for vi in &v[1..] {
                    mx = _mm256_max_ps(mx, _mm256_and_ps(*vi, abs));
                }
                let m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
                let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
                let s = amax / 127.0;
                *db = s;
                let inv = _mm256_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
                let i = v.map(|vi| _mm256_cvtps_epi32(_mm256_mul_ps(vi, inv)));
                let lim = _mm256_set1_epi32(127);
                let i = i.map(|t| {
                    _mm256_max_epi32(
                        _mm256_min_epi32(t, lim),
                        _mm256_sub_epi32(_mm256_setzero_si256(), lim),
                    )
                });
                let a = _mm256_packs_epi32(i[0], i[1]);
                let c = _mm256_packs_epi32(i[2], i[3]);
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, c), order);
                _mm256_storeu_si256(q.as_mut_ptr().add(b * 32).cast(), bytes);
            }
        }
    }

    /// As `tile`, two blocks per step: `|x|` (unsigned) times `w` negated where `x` is negative, summed
    /// four bytes at a time into i32 lanes by `vpdpbusd`; lanes 0-7 hold the even block, 8-15 the odd one,
    /// each scaled by its own pair of scales. An odd last block is loaded into the low half only.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/DQ/VNNI; pointers as for `tile`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni")]
    pub unsafe fn tile512<const R: usize, const C: usize>(
        w: [*const i8; C],
        wd: [*const f32; C],
        x: [*const i8; R],
        xd: [*const f32; R],
        nb: usize,
    ) -> [[f32; C]; R] {
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        // One pair of blocks (or the lone last block, `two == false`) into every accumulator.
        // SAFETY (all loads): within the `nb` blocks of each row (caller's contract); a lone last block
        // is read with a 32-byte mask, so nothing past it is touched.
        let step = |b: usize, two: bool, acc: &mut [[__m512; C]; R]| unsafe {
            let load = |p: *const i8| {
                if two {
                    _mm512_loadu_si512(p.cast())
                } else {
                    _mm512_maskz_loadu_epi8(u32::MAX as u64, p)
                }
            };
            let scales = |p: *const f32| {
                let lo = _mm512_set1_ps(*p.add(b));
                let hi = if two {
                    _mm256_set1_ps(*p.add(b + 1))
                } else {
                    _mm256_setzero_ps()
                };
                _mm512_insertf32x8(lo, hi, 1)
            };
            let mut wv = [zero; C];
            let mut ws = [_mm512_setzero_ps(); C];
            for c in 0..C {
                wv[c] = load(w[c].add(b * 32));
                ws[c] = scales(wd[c]);
            }
            for r in 0..R {
                let xv = load(x[r].add(b * 32));
                let neg = _mm512_movepi8_mask(xv);
                let ax = _mm512_abs_epi8(xv);
                let xs = scales(xd[r]);
                for c in 0..C {
                    let sw = _mm512_mask_sub_epi8(wv[c], neg, zero, wv[c]);
                    let d = _mm512_dpbusd_epi32(zero, ax, sw);
                    let s = _mm512_mul_ps(ws[c], xs);
                    acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[r][c]);
                }
            }
        };
        let mut b = 0;
        while b + 1 < nb {
            step(b, true, &mut acc);
            b += 2;
        }
        if b < nb {
            step(b, false, &mut acc);
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
        out
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_simd_kernel_agrees_with_the_scalar_dot_product() {
        let mut rng = StdRng::seed_from_u64(5);
        // odd and even block counts: the AVX-512 kernel takes blocks in pairs
        for nb in [1, 2, 3, 18] {
            let cols = nb * BLOCK;
            let w = Q8Matrix::quantize(&random(4 * cols, &mut rng), 4, cols).unwrap();
            let x = Q8Matrix::quantize(&random(4 * cols, &mut rng), 4, cols).unwrap();
            let (wq, wd) = w.ptrs::<4>(0);
            let (xq, xd) = (
                std::array::from_fn::<_, 4, _>(|r| x.row(r).0.as_ptr()),
                std::array::from_fn::<_, 4, _>(|r| x.row(r).1.as_ptr()),
            );
            let mut got = Vec::new();
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                got.push(unsafe { simd::tile::<4, 4>(wq, wd, xq, xd, nb) });
            }
            if simd::level() == simd::Level::Avx512Vnni {
                got.push(unsafe { simd::tile512::<4, 4>(wq, wd, xq, xd, nb) });
            }
            for t in &got {
                for (r, tr) in t.iter().enumerate() {
                    for (c, &v) in tr.iter().enumerate() {
                        let (a, b) = (x.row(r), w.row(c));
                        let s = dot_scalar(b.0, b.1, a.0, a.1, nb);
                        assert!((s - v).abs() <= 1e-4 * s.abs().max(1.0), "{nb}: {s} vs {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn simd_and_scalar_quantization_agree_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut x = random(8 * BLOCK, &mut rng);
        // exact ties (x.5 steps), zeros, a block of zeros and an outlier
        x[3] = 0.0;
        x[5] = x[0] * 0.5;
        x[BLOCK..2 * BLOCK].fill(0.0);
        x[3 * BLOCK] = 1e6;
        // scale exactly 1: 2.5 and -3.5 are ties
        x[4 * BLOCK..5 * BLOCK].fill(0.25);
        x[4 * BLOCK] = 127.0;
        x[4 * BLOCK + 1] = 2.5;
        x[4 * BLOCK + 2] = -3.5;
        let (mut q1, mut d1) = (vec![0i8; x.len()], vec![0f32; 8]);
        let (mut q2, mut d2) = (vec![0i8; x.len()], vec![0f32; 8]);
        quantize_row(&x, &mut q1, &mut d1);
        quantize_row_scalar(&x, &mut q2, &mut d2);
        assert_eq!(q1[4 * BLOCK + 1..4 * BLOCK + 3], [2, -4]);
        assert_eq!((q1, d1), (q2, d2));
    }

    #[test]
    fn a_group_gives_what_each_matmul_gives() {
        let mut rng = StdRng::seed_from_u64(13);
        let cols = 64;
        let a = Q8Matrix::quantize(&random(40 * cols, &mut rng), 40, cols).unwrap();
        let b = Q8Matrix::quantize(&random(6 * cols, &mut rng), 6, cols).unwrap();
        let x = random(3 * cols, &mut rng);
        let ys = Q8Matrix::matmul_group(&[&a, &b], &x, 3);
        assert_eq!(ys, vec![a.matmul(&x, 3), b.matmul(&x, 3)]);
        assert_eq!(ys[1].len(), 3 * 6);
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
