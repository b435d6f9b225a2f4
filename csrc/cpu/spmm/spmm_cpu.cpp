// CPU implementations of the sparse matmul operators: argument checks, the
// work split across torch's intra-op threads, and the call into the kernels of
// the active ISA (kernels_*.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <tuple>
#include <vector>

#include "cpu/common/checks.h"
#include "cpu/common/parallel.h"
#include "cpu/spmm/kernels.h"

namespace sparsemia::cpu {
namespace {

using at::Tensor;

// Below this many multiply-adds a call runs on the calling thread. Measured with
// benchmarks/thread_crossover.py (2-core AVX2 EPYC): a second thread pays from about
// 1e5-4e5 multiply-adds on a quiet machine (1.5-1.8x at 4e5-8e5, mixed below), while on a
// busy one every parallel region can wait a scheduler time slice (8-16 ms), e.g. CSR
// 1024^2 at 90%, batch 1 (1.1e5): 0.16 ms on one thread, 8 ms on two beside one busy process.
constexpr int64_t kMinParallelWork = int64_t(1) << 18;

// How many pieces to cut `work` (multiply-adds) into: one when the whole job
// is too small to pay for waking the thread pool.
int64_t num_parts(int64_t rows, int64_t work) {
  if (rows <= 1 || work < kMinParallelWork) return 1;
  return std::min<int64_t>(rows, int64_t(at::get_num_threads()) * 4);
}

// Columns of X processed per pass, so that the K rows of X the pass touches
// (K * width elements) stay in a core's L2 cache.
int64_t panel_width(int64_t K, int64_t N, size_t elem) {
  const int64_t budget = (int64_t(1) << 20) / int64_t(elem);
  int64_t w = std::max<int64_t>(64, (budget / std::max<int64_t>(K, 1)) / 64 * 64);
  return std::min(w, std::max<int64_t>(N, 1));
}

// Runs f(t) for the parts t of [0, parts) on torch's threads (inline for one part).
template <typename F>
void run_parts(int64_t parts, const F& f) {
  run_each(parts, parts > 1, f);
}

// X [K, N] as contiguous column panels: pack(n0, width) returns X[:, n0 : n0 + width]
// as a contiguous [K, width] tensor, so each pass streams dense rows of X.
using PackFn = std::function<Tensor(int64_t, int64_t)>;

PackFn panels_of_x(const Tensor& x) {
  return [x](int64_t n0, int64_t w) { return x.narrow(1, n0, w).contiguous(); };
}
// For x [B, K] in a linear layer: X = x^T.
PackFn panels_of_xt(const Tensor& x) {
  return [x](int64_t n0, int64_t w) { return x.narrow(0, n0, w).t().contiguous(); };
}

// Y = W X for W in CSR (values [nnz], R = C = 1) or BSR (values [nblocks, R, C]),
// X given as column panels, Y element (i, n) at y[i * y_rs + n * y_cs].
template <typename T, typename I>
void matmul(const Tensor& crow, const Tensor& col, const Tensor& values, bool blocked, const PackFn& pack, T* y,
            int64_t y_rs, int64_t y_cs, const T* bias, int64_t N, int64_t K) {
  const int64_t rows = crow.numel() - 1;  // block rows for BSR
  const int64_t R = blocked ? values.size(1) : 1, C = blocked ? values.size(2) : 1;
  if (rows == 0 || N == 0) return;
  const I* crow_p = crow.data_ptr<I>();
  const auto kt = kernels_for<T, I>(active_isa());
  const int64_t stored = int64_t(crow_p[rows]) - int64_t(crow_p[0]);
  const int64_t parts = num_parts(rows, (stored * R * C + rows * R) * N);
  const auto bounds = balanced_rows<I>(crow_p, rows, parts, std::max<int64_t>(1, 4 / (R * C)));
  const int64_t P = panel_width(K, N, sizeof(T));
  for (int64_t n0 = 0; n0 < N; n0 += P) {
    const int64_t w = std::min(N - n0, P);
    const Tensor panel = pack(n0, w);
    if (blocked) {
      BsrArgs<T, I> args{crow_p, col.data_ptr<I>(), values.data_ptr<T>(), R, C, panel.data_ptr<T>(), w,
                         y + n0 * y_cs, y_rs, y_cs, bias};
      run_parts(parts, [&](int64_t t) { kt.bsr_rows(args, bounds[t], bounds[t + 1], 0, w); });
    } else {
      CsrArgs<T, I> args{crow_p, col.data_ptr<I>(), values.data_ptr<T>(), panel.data_ptr<T>(), w, y + n0 * y_cs,
                         y_rs, y_cs, bias};
      run_parts(parts, [&](int64_t t) { kt.csr_rows(args, bounds[t], bounds[t + 1], 0, w); });
    }
  }
}

template <typename F>
void dispatch_types(const Tensor& values, const Tensor& index, const F& f) {
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "sparsemia_cpu", [&] {
    using T = scalar_t;
    if (index.scalar_type() == at::kInt)
      f(T{}, int32_t{});
    else
      f(T{}, int64_t{});
  });
}

void check_bsr_values(const Tensor& values, const Tensor& col, const char* op) {
  TORCH_CHECK(values.dim() == 3 && values.size(0) == col.numel(), op,
              ": values must be [nblocks, R, C] with one block per column index, got ", values.sizes());
  TORCH_CHECK(values.size(1) >= 1 && values.size(2) >= 1 && values.size(1) <= 64, op,
              ": the CPU kernels take blocks of 1 to 64 rows, got ", values.size(1));
}

// The weight's checks shared by the spmm and linear ops; `features` is x's
// dimension the weight contracts (K). Returns the weight's rows M.
int64_t check_weight(const Tensor& crow, const Tensor& col, const Tensor& values, const Tensor& x, bool blocked,
                     int64_t features, const char* op) {
  check_pattern(crow, col, op);
  check_values(values, x, op);
  if (!blocked) {
    TORCH_CHECK(values.dim() == 1 && values.numel() == col.numel(), op,
                ": values must be 1-D with one entry per column index");
    return crow.numel() - 1;
  }
  check_bsr_values(values, col, op);
  TORCH_CHECK(features % values.size(2) == 0, op, ": x's ", features, " features must be a multiple of the block width ",
              values.size(2));
  return (crow.numel() - 1) * values.size(1);
}

// y [M, N] = W x for x [K, N].
Tensor spmm_op(const Tensor& crow_in, const Tensor& col_in, const Tensor& values_in, const Tensor& x_in, bool blocked,
               const char* op) {
  TORCH_CHECK(x_in.dim() == 2, op, ": x must be 2-D [K, N], got ", x_in.dim(), "-D");
  const int64_t M = check_weight(crow_in, col_in, values_in, x_in, blocked, x_in.size(0), op);
  const Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  const int64_t K = x_in.size(0), N = x_in.size(1);
  Tensor y = at::empty({M, N}, x_in.options());
  dispatch_types(values, crow, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    matmul<T, I>(crow, col, values, blocked, panels_of_x(x_in), y.data_ptr<T>(), N, 1, nullptr, N, K);
  });
  return y;
}

// y [B, M] = x W^T + bias for x [B, K].
Tensor linear_op(const Tensor& x_in, const Tensor& crow_in, const Tensor& col_in, const Tensor& values_in,
                 const c10::optional<Tensor>& bias_in, bool blocked, const char* op) {
  TORCH_CHECK(x_in.dim() == 2, op, ": x must be 2-D [B, K], got ", x_in.dim(), "-D");
  const int64_t M = check_weight(crow_in, col_in, values_in, x_in, blocked, x_in.size(1), op);
  check_bias(bias_in, values_in, M, op);
  const int64_t B = x_in.size(0), K = x_in.size(1);
  const Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  const Tensor bias = bias_in ? bias_in->contiguous() : Tensor();
  Tensor y = at::empty({B, M}, x_in.options());
  dispatch_types(values, crow, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    matmul<T, I>(crow, col, values, blocked, panels_of_xt(x_in), y.data_ptr<T>(), 1, M,
                 bias.defined() ? bias.data_ptr<T>() : nullptr, B, K);
  });
  return y;
}

Tensor csr_spmm(const Tensor& crow, const Tensor& col, const Tensor& values, const Tensor& x) {
  return spmm_op(crow, col, values, x, false, "csr_spmm");
}
Tensor bsr_spmm(const Tensor& crow, const Tensor& col, const Tensor& values, const Tensor& x) {
  return spmm_op(crow, col, values, x, true, "bsr_spmm");
}
Tensor csr_linear(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                  const c10::optional<Tensor>& bias) {
  return linear_op(x, crow, col, values, bias, false, "csr_linear");
}
Tensor bsr_linear(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                  const c10::optional<Tensor>& bias) {
  return linear_op(x, crow, col, values, bias, true, "bsr_linear");
}

Tensor csr_sddmm(const Tensor& crow_in, const Tensor& col_in, const Tensor& a_in, const Tensor& b_in) {
  check_pattern(crow_in, col_in, "csr_sddmm");
  check_values(a_in, b_in, "csr_sddmm");
  TORCH_CHECK(a_in.dim() == 2 && b_in.dim() == 2 && a_in.size(1) == b_in.size(1),
              "csr_sddmm: a [M, N] and b [K, N] must be 2-D with the same N, got ", a_in.sizes(), " and ", b_in.sizes());
  const int64_t M = crow_in.numel() - 1;
  TORCH_CHECK(a_in.size(0) == M, "csr_sddmm: a must have ", M, " rows (one per weight row), got ", a_in.size(0));
  const Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  Tensor out = at::empty({col.numel()}, a.options());
  if (M == 0 || col.numel() == 0) return out;
  dispatch_types(a, crow, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    const I* crow_p = crow.data_ptr<I>();
    SddmmArgs<T, I> args{crow_p, col.data_ptr<I>(), a.data_ptr<T>(), a.size(1), b.data_ptr<T>(), b.size(1),
                         out.data_ptr<T>() - int64_t(crow_p[0]), a.size(1), 1, 1};
    const auto kt = kernels_for<T, I>(active_isa());
    const int64_t parts = num_parts(M, (col.numel() + M) * a.size(1));
    const auto bounds = balanced_rows<I>(crow_p, M, parts, 1);
    run_parts(parts, [&](int64_t p) { kt.csr_sddmm(args, bounds[p], bounds[p + 1]); });
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> csr_transpose(const Tensor& crow_in, const Tensor& col_in, int64_t ncols) {
  check_pattern(crow_in, col_in, "csr_transpose");
  TORCH_CHECK(ncols >= 0, "csr_transpose: ncols must be non-negative, got ", ncols);
  const Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  const int64_t M = crow.numel() - 1, nnz = col.numel();
  Tensor crow_t = at::zeros({ncols + 1}, crow.options());
  Tensor col_t = at::empty({nnz}, col.options());
  Tensor perm = at::empty({nnz}, crow.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "csr_transpose", [&] {
    using I = index_t;
    const I* rp = crow.data_ptr<I>();
    const I* cp = col.data_ptr<I>();
    I* rtp = crow_t.data_ptr<I>();
    I* ctp = col_t.data_ptr<I>();
    int64_t* pp = perm.data_ptr<int64_t>();
    const int64_t base = rp[0];
    for (int64_t p = 0; p < nnz; ++p) {
      TORCH_CHECK(cp[p] >= 0 && cp[p] < ncols, "csr_transpose: column index ", cp[p], " out of range [0, ", ncols, ")");
      ++rtp[cp[p] + 1];
    }
    for (int64_t j = 0; j < ncols; ++j) rtp[j + 1] += rtp[j];
    std::vector<int64_t> next(rtp, rtp + ncols);
    // Rows are visited in order, so each transposed row comes out sorted.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t p = rp[i] - base; p < rp[i + 1] - base; ++p) {
        const int64_t dst = next[cp[p]]++;
        ctp[dst] = I(i);
        pp[dst] = p;
      }
  });
  return {crow_t, col_t, perm};
}

Tensor bsr_sddmm(const Tensor& crow_in, const Tensor& col_in, const Tensor& a_in, const Tensor& b_in, int64_t R,
                 int64_t C) {
  check_pattern(crow_in, col_in, "bsr_sddmm");
  check_values(a_in, b_in, "bsr_sddmm");
  TORCH_CHECK(R >= 1 && C >= 1, "bsr_sddmm: block shape must be positive, got ", R, "x", C);
  TORCH_CHECK(a_in.dim() == 2 && b_in.dim() == 2 && a_in.size(1) == b_in.size(1),
              "bsr_sddmm: a [M, N] and b [K, N] must be 2-D with the same N");
  const int64_t nbr = crow_in.numel() - 1;
  TORCH_CHECK(a_in.size(0) == nbr * R, "bsr_sddmm: a must have ", nbr * R, " rows, got ", a_in.size(0));
  TORCH_CHECK(b_in.size(0) % C == 0, "bsr_sddmm: b's rows must be a multiple of the block width ", C);
  const Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  Tensor out = at::empty({col.numel(), R, C}, a.options());
  if (nbr == 0 || col.numel() == 0) return out;
  dispatch_types(a, crow, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    const I* crow_p = crow.data_ptr<I>();
    SddmmArgs<T, I> args{crow_p, col.data_ptr<I>(), a.data_ptr<T>(), a.size(1), b.data_ptr<T>(), b.size(1),
                         out.data_ptr<T>() - int64_t(crow_p[0]) * R * C, a.size(1), R, C};
    const auto kt = kernels_for<T, I>(active_isa());
    const int64_t parts = num_parts(nbr, (col.numel() * R * C + nbr) * a.size(1));
    const auto bounds = balanced_rows<I>(crow_p, nbr, parts, 1);
    run_parts(parts, [&](int64_t p) { kt.bsr_sddmm(args, bounds[p], bounds[p + 1]); });
  });
  return out;
}

// ---- stacked models ----

Tensor stacked_csr_linear(const Tensor& x_in, const Tensor& crow_in, const Tensor& col_in, const Tensor& values_in,
                          const c10::optional<Tensor>& bias_in) {
  TORCH_CHECK(crow_in.dim() == 2, "stacked_csr_linear: crow must be 2-D [G, M+1], got ", crow_in.dim(), "-D");
  check_pattern(crow_in.select(0, 0), col_in, "stacked_csr_linear");
  check_values(values_in, x_in, "stacked_csr_linear");
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(0) == crow_in.size(0), "stacked_csr_linear: x must be [G, B, K] with G = ",
              crow_in.size(0), ", got ", x_in.sizes());
  const int64_t G = x_in.size(0), B = x_in.size(1), K = x_in.size(2), M = crow_in.size(1) - 1;
  if (bias_in) {
    TORCH_CHECK(bias_in->dim() == 2 && bias_in->size(0) == G && bias_in->size(1) == M,
                "stacked_csr_linear: bias must be [", G, ", ", M, "], got ", bias_in->sizes());
    TORCH_CHECK(bias_in->scalar_type() == values_in.scalar_type(), "stacked_csr_linear: bias must have the weight's dtype");
  }
  const Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  const Tensor xt = x_in.transpose(1, 2).contiguous();  // [G, K, B]
  const Tensor bias = bias_in ? bias_in->contiguous() : Tensor();
  Tensor y = at::empty({G, B, M}, x_in.options());
  if (G == 0 || B == 0 || M == 0) return y;
  dispatch_types(values, crow, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    const auto kt = kernels_for<T, I>(active_isa());
    const I* crow_p = crow.data_ptr<I>();
    const int64_t per_model = std::max<int64_t>(1, std::min<int64_t>(M, at::get_num_threads() * 4 / G));
    const int64_t nnz = int64_t(crow_p[G * (M + 1) - 1]) - int64_t(crow_p[0]);
    const int64_t parts = (nnz + G * M) * B < kMinParallelWork ? 1 : G * per_model;
    const auto task = [&](int64_t t) {
      const int64_t first = parts == 1 ? 0 : t / per_model, last = parts == 1 ? G : first + 1;
      for (int64_t g = first; g < last; ++g) {
        const int64_t piece = parts == 1 ? 0 : t % per_model, pieces = parts == 1 ? 1 : per_model;
        CsrArgs<T, I> args{crow_p + g * (M + 1), col.data_ptr<I>(), values.data_ptr<T>(),
                           xt.data_ptr<T>() + g * K * B, B, y.data_ptr<T>() + g * B * M, 1, M,
                           bias.defined() ? bias.data_ptr<T>() + g * M : nullptr};
        kt.csr_rows(args, M * piece / pieces, M * (piece + 1) / pieces, 0, B);
      }
    };
    run_parts(parts, task);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsemia, CPU, m) {
  m.impl("csr_spmm", &csr_spmm);
  m.impl("csr_linear", &csr_linear);
  m.impl("csr_sddmm", &csr_sddmm);
  m.impl("csr_transpose", &csr_transpose);
  m.impl("bsr_spmm", &bsr_spmm);
  m.impl("bsr_linear", &bsr_linear);
  m.impl("bsr_sddmm", &bsr_sddmm);
  m.impl("stacked_csr_linear", &stacked_csr_linear);
}

}  // namespace sparsemia::cpu
