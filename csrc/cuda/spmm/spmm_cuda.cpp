// CUDA implementations of the CSR operators (schemas in csrc/ops.cpp): argument
// checks, layout choices and the launch on torch's current stream. The kernels
// themselves (csr_spmm.cu, csr_sddmm.cu) see raw pointers only.
//
// Linear layers run as Y^T = W @ X^T so that the kernels stream rows of a
// row-major [K, B] operand: x is transposed once on the way in and y once on
// the way out. csr_transpose is built from ATen ops (a stable sort by column).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "cuda/spmm/launch.h"

namespace sparsemia::cuda {
namespace {

using at::Tensor;

Dtype dtype_of(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::f32;
    case at::kDouble: return Dtype::f64;
    case at::kHalf: return Dtype::f16;
    case at::kBFloat16: return Dtype::bf16;
    default: TORCH_CHECK(false, op, ": the CUDA kernels take float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
}

Index index_of(const Tensor& crow, const Tensor& col, const char* op) {
  TORCH_CHECK(crow.scalar_type() == col.scalar_type() &&
                  (crow.scalar_type() == at::kInt || crow.scalar_type() == at::kLong),
              op, ": crow and col must both be int32 or both int64, got ", crow.scalar_type(), " and ",
              col.scalar_type());
  return crow.scalar_type() == at::kInt ? Index::i32 : Index::i64;
}

void check_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor& first = **tensors.begin();
  for (const Tensor* t : tensors) {
    TORCH_CHECK(t->is_cuda() && t->device() == first.device(), op, ": all tensors must be on one CUDA device, got ",
                t->device(), " and ", first.device());
  }
}

bool aligned(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % kVectorBytes == 0; }

// One vector load per lane is possible when every row of X and Y starts on a
// 16-byte boundary and N is a whole number of vectors.
int vector_width(const Tensor& x, int64_t ldx, const Tensor& y, int64_t ldy, int64_t N) {
  const int64_t vec = kVectorBytes / int64_t(x.element_size());
  const bool ok = aligned(x) && aligned(y) && ldx % vec == 0 && ldy % vec == 0 && N % vec == 0;
  return ok ? int(vec) : 1;
}

// Y [G, M, N] = W_g @ X [G, K, N] (+ bias [G, M]); x and y contiguous.
void spmm_into(const Tensor& crow, const Tensor& col, const Tensor& values, const Tensor& x, const Tensor& y,
               const Tensor& bias, const char* op) {
  const int64_t G = x.size(0), N = x.size(2), M = y.size(1);
  TORCH_CHECK(G <= 65535, op, ": at most 65535 stacked models per launch, got ", G);
  CsrSpmmArgs args{};
  args.crow = crow.data_ptr();
  args.crow_group_stride = M + 1;
  args.col = col.data_ptr();
  args.values = values.data_ptr();
  args.x = x.data_ptr();
  args.x_group_stride = x.stride(0);
  args.ldx = x.stride(1);
  args.y = y.data_ptr();
  args.y_group_stride = y.stride(0);
  args.ldy = y.stride(1);
  args.bias = bias.defined() ? bias.data_ptr() : nullptr;
  args.bias_group_stride = M;
  args.M = M;
  args.N = N;
  args.groups = G;
  args.avg_row_nnz = double(col.numel()) / double(std::max<int64_t>(1, G * M));
  args.vec = vector_width(x, args.ldx, y, args.ldy, N);
  C10_CUDA_CHECK(csr_spmm(dtype_of(values, op), index_of(crow, col, op), args, c10::cuda::getCurrentCUDAStream()));
}

void check_values(const Tensor& values, const Tensor& col, const Tensor& x, const char* op) {
  TORCH_CHECK(values.dim() == 1 && values.numel() == col.numel(), op,
              ": values must be 1-D with one entry per column index, got ", values.sizes());
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), op, ": x must have the weight's dtype ", values.scalar_type(),
              ", got ", x.scalar_type());
}

Tensor bias_rows(const c10::optional<Tensor>& bias, const Tensor& values, at::IntArrayRef shape, const char* op) {
  if (!bias) return Tensor();
  TORCH_CHECK(bias->sizes() == shape, op, ": bias must have shape ", shape, ", got ", bias->sizes());
  TORCH_CHECK(bias->scalar_type() == values.scalar_type() && bias->device() == values.device(), op,
              ": bias must have the weight's dtype and device");
  return bias->contiguous();
}

Tensor csr_spmm_op(const Tensor& crow, const Tensor& col, const Tensor& values, const Tensor& x) {
  const char* op = "csr_spmm";
  check_device(op, {&crow, &col, &values, &x});
  TORCH_CHECK(crow.dim() == 1 && col.dim() == 1 && crow.numel() >= 1, op, ": crow [M+1] and col [nnz] must be 1-D");
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [K, N], got ", x.dim(), "-D");
  check_values(values, col, x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = crow.numel() - 1;
  Tensor y = at::empty({M, x.size(1)}, x.options());
  spmm_into(crow.contiguous(), col.contiguous(), values.contiguous(), x.contiguous().unsqueeze(0), y.unsqueeze(0),
            Tensor(), op);
  return y;
}

Tensor csr_linear_op(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                  const c10::optional<Tensor>& bias) {
  const char* op = "csr_linear";
  check_device(op, {&crow, &col, &values, &x});
  TORCH_CHECK(crow.dim() == 1 && col.dim() == 1 && crow.numel() >= 1, op, ": crow [M+1] and col [nnz] must be 1-D");
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [B, K], got ", x.dim(), "-D");
  check_values(values, col, x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = crow.numel() - 1;
  const Tensor b = bias_rows(bias, values, {M}, op);
  const Tensor xt = x.t().contiguous();  // [K, B]
  Tensor yt = at::empty({M, x.size(0)}, x.options());
  spmm_into(crow.contiguous(), col.contiguous(), values.contiguous(), xt.unsqueeze(0), yt.unsqueeze(0), b, op);
  return yt.t().contiguous();
}

Tensor stacked_csr_linear_op(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                          const c10::optional<Tensor>& bias) {
  const char* op = "stacked_csr_linear";
  check_device(op, {&crow, &col, &values, &x});
  TORCH_CHECK(crow.dim() == 2 && col.dim() == 1, op, ": crow must be [G, M+1] and col [nnz]");
  TORCH_CHECK(x.dim() == 3 && x.size(0) == crow.size(0), op, ": x must be [G, B, K] with G = ", crow.size(0),
              ", got ", x.sizes());
  check_values(values, col, x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t G = x.size(0), B = x.size(1), M = crow.size(1) - 1;
  const Tensor b = bias_rows(bias, values, {G, M}, op);
  const Tensor xt = x.transpose(1, 2).contiguous();  // [G, K, B]
  Tensor yt = at::empty({G, M, B}, x.options());
  spmm_into(crow.contiguous(), col.contiguous(), values.contiguous(), xt, yt, b, op);
  return yt.transpose(1, 2).contiguous();
}

Tensor csr_sddmm_op(const Tensor& crow_in, const Tensor& col_in, const Tensor& a_in, const Tensor& b_in) {
  const char* op = "csr_sddmm";
  check_device(op, {&crow_in, &col_in, &a_in, &b_in});
  const Index index = index_of(crow_in, col_in, op);
  TORCH_CHECK(a_in.dim() == 2 && b_in.dim() == 2 && a_in.size(1) == b_in.size(1), op,
              ": a [M, N] and b [K, N] must be 2-D with the same N, got ", a_in.sizes(), " and ", b_in.sizes());
  TORCH_CHECK(a_in.size(0) == crow_in.numel() - 1, op, ": a must have one row per weight row (", crow_in.numel() - 1,
              "), got ", a_in.size(0));
  TORCH_CHECK(a_in.scalar_type() == b_in.scalar_type(), op, ": a and b must have one dtype");
  const c10::cuda::CUDAGuard guard(a_in.device());
  const Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), a = a_in.contiguous(), b = b_in.contiguous();
  Tensor out = at::empty({col.numel()}, a.options());
  if (col.numel() == 0) return out;
  CsrSddmmArgs args{};
  args.crow = crow.data_ptr();
  args.col = col.data_ptr();
  args.a = a.data_ptr();
  args.lda = a.size(1);
  args.b = b.data_ptr();
  args.ldb = b.size(1);
  args.out = out.data_ptr();
  args.M = crow.numel() - 1;
  args.N = a.size(1);
  args.vec = vector_width(a, args.lda, b, args.ldb, args.N);
  C10_CUDA_CHECK(csr_sddmm(dtype_of(a, op), index, args, c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<Tensor, Tensor, Tensor> csr_transpose_op(const Tensor& crow_in, const Tensor& col_in, int64_t ncols) {
  const char* op = "csr_transpose";
  check_device(op, {&crow_in, &col_in});
  index_of(crow_in, col_in, op);
  TORCH_CHECK(ncols >= 0, op, ": ncols must be non-negative, got ", ncols);
  const c10::cuda::CUDAGuard guard(crow_in.device());
  const Tensor crow = crow_in.to(at::kLong), col = col_in.to(at::kLong);
  const int64_t M = crow.numel() - 1, nnz = col.numel();
  const Tensor rows = at::repeat_interleave(at::arange(M, crow.options()), crow.diff(), /*dim=*/0, /*output_size=*/nnz);
  // Entries are stored row by row, so a stable sort by column keeps each
  // transposed row sorted.
  const Tensor perm = std::get<1>(at::sort(col, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  const Tensor counts = at::bincount(col, /*weights=*/{}, /*minlength=*/ncols);  // synchronises
  TORCH_CHECK(counts.numel() == ncols, op, ": a column index is out of range [0, ", ncols, ")");
  Tensor crow_t = at::zeros({ncols + 1}, crow.options());
  crow_t.narrow(0, 1, ncols).copy_(counts.cumsum(0));
  return {crow_t.to(crow_in.scalar_type()), rows.index_select(0, perm).to(col_in.scalar_type()), perm};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsemia, CUDA, m) {
  m.impl("csr_spmm", &csr_spmm_op);
  m.impl("csr_linear", &csr_linear_op);
  m.impl("csr_sddmm", &csr_sddmm_op);
  m.impl("csr_transpose", &csr_transpose_op);
  m.impl("stacked_csr_linear", &stacked_csr_linear_op);
}

}  // namespace sparsemia::cuda
