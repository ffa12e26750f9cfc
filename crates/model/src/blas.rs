//! Single-precision GEMM for the CPU training path (`backprop`): OpenBLAS (the `openblas` feature, on by
//! default; `scripts/setup.sh` installs the system library) or, without it, the pure-Rust `gemm` crate that
//! candle uses. OpenBLAS runs these shapes ~25-40% faster here (BENCHMARKS.md).
//!
//! Every call is single-threaded; `par_gemm_rows` splits the rows of a large product across rayon's
//! threads, so one thread pool owns the cores (OpenBLAS's own pool would spin beside rayon's).
//!
//! This is the crate's only `unsafe` code: the FFI call and the `gemm` crate's pointer API. The safe wrapper
//! checks every extent against the slices first, so no call can read or write out of bounds.
#![allow(unsafe_code)]

use rayon::prelude::*;

/// Whether an operand is used as stored (row-major) or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum T {
    N,
    T,
}

/// Elements a row-major `rows x cols` view with leading dimension `ld` spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// `c[m,n] = alpha * op(a)[m,k] * op(b)[k,n] + beta * c`, all row-major with leading dimensions `lda`, `ldb`,
/// `ldc`. Panics if a view does not fit its slice (a bug in the caller, never bad user input).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    ta: T,
    tb: T,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let (ar, ac) = if ta == T::N { (m, k) } else { (k, m) };
    let (br, bc) = if tb == T::N { (k, n) } else { (n, k) };
    assert!(
        lda >= ac.max(1) && ldb >= bc.max(1) && ldc >= n.max(1),
        "sgemm: leading dimension too small"
    );
    assert!(
        a.len() >= span(ar, ac, lda) && b.len() >= span(br, bc, ldb) && c.len() >= span(m, n, ldc),
        "sgemm: operand view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    let call = Call {
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        lda,
        ldb,
        beta,
        ldc,
    };
    backend::sgemm(&call, a, b, c);
}

/// A GEMM whose views `sgemm` has checked against their slices: what a backend runs.
#[derive(Debug, Clone, Copy)]
struct Call {
    ta: T,
    tb: T,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    lda: usize,
    ldb: usize,
    beta: f32,
    ldc: usize,
}

/// `sgemm` with `op(a)` = `a` as stored, `a` and `c` contiguous (`lda = k`, `ldc = n`), rows split across
/// the thread pool. `b` is shared by all threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_gemm_rows(
    tb: T,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // whole multiples of 16 rows per thread: one block each, no tail thread with a sliver
    let rows = m.div_ceil(threads).div_ceil(16) * 16;
    if rows >= m || k == 0 {
        return sgemm(T::N, tb, m, n, k, alpha, a, k.max(1), b, ldb, beta, c, n);
    }
    c[..m * n]
        .par_chunks_mut(rows * n)
        .zip(a[..m * k].par_chunks(rows * k))
        .for_each(|(c, a)| {
            let mr = c.len() / n;
            sgemm(T::N, tb, mr, n, k, alpha, a, k, b, ldb, beta, c, n);
        });
}

#[cfg(feature = "openblas")]
mod backend {
    use super::{Call, T};
    use std::ffi::c_int;

    const ROW_MAJOR: c_int = 101;
    const NO_TRANS: c_int = 111;
    const TRANS: c_int = 112;

    // Declared here rather than through `openblas-src`, whose build script compiles a download client this
    // project never uses: only linking to the system library is needed.
    #[link(name = "openblas")]
    unsafe extern "C" {
        fn cblas_sgemm(
            layout: c_int,
            ta: c_int,
            tb: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f32,
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            beta: f32,
            c: *mut f32,
            ldc: c_int,
        );
        fn openblas_set_num_threads(n: c_int);
    }

    static SINGLE_THREADED: std::sync::Once = std::sync::Once::new();

    fn int(x: usize) -> c_int {
        c_int::try_from(x).unwrap_or_else(|_| panic!("sgemm: dimension {x} exceeds the BLAS int"))
    }

    pub(super) fn sgemm(c: &Call, a: &[f32], b: &[f32], out: &mut [f32]) {
        // SAFETY: takes no pointers; called once before any GEMM.
        SINGLE_THREADED.call_once(|| unsafe { openblas_set_num_threads(1) });
        let t = |x: T| if x == T::N { NO_TRANS } else { TRANS };
        // SAFETY: the caller (`super::sgemm`) checked that each row-major view with its leading dimension lies
        // inside its slice; `out` is exclusively borrowed and cannot alias `a` or `b`.
        unsafe {
            cblas_sgemm(
                ROW_MAJOR,
                t(c.ta),
                t(c.tb),
                int(c.m),
                int(c.n),
                int(c.k),
                c.alpha,
                a.as_ptr(),
                int(c.lda),
                b.as_ptr(),
                int(c.ldb),
                c.beta,
                out.as_mut_ptr(),
                int(c.ldc),
            )
        }
    }
}

#[cfg(not(feature = "openblas"))]
mod backend {
    use super::{Call, T};

    pub(super) fn sgemm(c: &Call, a: &[f32], b: &[f32], out: &mut [f32]) {
        // (row stride, column stride) of op(x) for a row-major x with leading dimension ld
        let strides = |t: T, ld: usize| -> (isize, isize) {
            if t == T::N {
                (ld as isize, 1)
            } else {
                (1, ld as isize)
            }
        };
        let (a_rs, a_cs) = strides(c.ta, c.lda);
        let (b_rs, b_cs) = strides(c.tb, c.ldb);
        // SAFETY: the caller (`super::sgemm`) checked that each view lies inside its slice; `out` is
        // exclusively borrowed. The gemm crate computes dst = alpha*dst + beta*lhs*rhs, hence the swapped
        // scalars; with read_dst false it never reads dst (BLAS's beta = 0 semantics, NaNs in out included).
        unsafe {
            gemm::gemm(
                c.m,
                c.n,
                c.k,
                out.as_mut_ptr(),
                1,
                c.ldc as isize,
                c.beta != 0.0,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                c.beta,
                c.alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn naive(
        ta: T,
        tb: T,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
    ) -> Vec<f32> {
        let at = |i: usize, p: usize| {
            if ta == T::N {
                a[i * lda + p]
            } else {
                a[p * lda + i]
            }
        };
        let bt = |p: usize, j: usize| {
            if tb == T::N {
                b[p * ldb + j]
            } else {
                b[j * ldb + p]
            }
        };
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
        c
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn every_transpose_with_padded_leading_dimensions_matches_the_naive_product() {
        let (m, n, k) = (37, 29, 53);
        for ta in [T::N, T::T] {
            for tb in [T::N, T::T] {
                let (ar, ac) = if ta == T::N { (m, k) } else { (k, m) };
                let (br, bc) = if tb == T::N { (k, n) } else { (n, k) };
                let (lda, ldb, ldc) = (ac + 3, bc + 5, n + 2);
                let a = data(span(ar, ac, lda), 1);
                let b = data(span(br, bc, ldb), 2);
                let mut c = data(span(m, n, ldc), 3);
                let c0 = c.clone();
                sgemm(ta, tb, m, n, k, 0.5, &a, lda, &b, ldb, 2.0, &mut c, ldc);
                let want = naive(ta, tb, (m, n, k), &a, lda, &b, ldb);
                for i in 0..m {
                    for j in 0..n {
                        let w = 0.5 * want[i * n + j] + 2.0 * c0[i * ldc + j];
                        let got = c[i * ldc + j];
                        assert!(
                            (got - w).abs() < 1e-4 * (1.0 + w.abs()),
                            "{ta:?}{tb:?} [{i},{j}]: {got} vs {w}"
                        );
                    }
                    // the padding between rows is never written
                    for j in n..ldc.min(c.len() - i * ldc) {
                        assert_eq!(c[i * ldc + j], c0[i * ldc + j]);
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_what_c_held_and_row_split_equals_one_call() {
        let (m, n, k) = (203, 70, 41);
        let a = data(m * k, 4);
        let b = data(n * k, 5);
        let mut one = vec![f32::NAN; m * n];
        sgemm(T::N, T::T, m, n, k, 1.0, &a, k, &b, k, 0.0, &mut one, n);
        assert!(one.iter().all(|x| x.is_finite()));
        let mut split = vec![f32::NAN; m * n];
        par_gemm_rows(T::T, m, n, k, 1.0, &a, &b, k, 0.0, &mut split);
        // equal to rounding, not bit for bit: on some CPUs (seen on AMD EPYC with AVX-512) OpenBLAS picks its
        // kernel for a row by the call's row count, so a split can sum in another order
        for (i, (x, y)) in one.iter().zip(&split).enumerate() {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "[{i}]: {x} vs {y}");
        }
        let want = naive(T::N, T::T, (m, n, k), &a, k, &b, k);
        for (i, (x, w)) in split.iter().zip(&want).enumerate() {
            assert!((x - w).abs() < 1e-4 * (1.0 + w.abs()), "[{i}]: {x} vs {w}");
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_past_its_slice_is_refused() {
        let a = vec![0f32; 10];
        let mut c = vec![0f32; 4];
        sgemm(T::N, T::N, 2, 2, 6, 1.0, &a, 6, &a, 2, 0.0, &mut c, 2);
    }
}
