// A dense 1x1 convolution (stride 1, no padding) as one GEMM per image over the
// channels, [Cout, Cin] @ [Cin, H * W]: what sparsemia.compile runs for a 1x1
// layer too dense for the sparse kernels (a residual block's projection), as an
// operator its C++ programs can call. An ATen composition, so any device's
// batched GEMM serves; registered for the CPU, where compile runs.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace sparsemia::cpu::conv {
namespace {

using at::Tensor;

Tensor conv1x1_gemm(const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias) {
  const char* op = "conv1x1_gemm";
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [B, Cin, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1), op, ": weight must have shape [Cout, ", x.size(1),
              "], got ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), op, ": x must have the weight's dtype ", weight.scalar_type(),
              ", got ", x.scalar_type());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), M = weight.size(0);
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == M, op, ": bias must have shape [", M, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), op, ": bias must have the weight's dtype");
  }
  const Tensor x3 = x.reshape({B, C, H * W});
  const Tensor w3 = weight.expand({B, M, C});
  const Tensor y = bias ? at::baddbmm(bias->view({1, M, 1}), w3, x3) : at::bmm(w3, x3);
  return y.view({B, M, H, W});
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsemia, CPU, m) { m.impl("conv1x1_gemm", &conv1x1_gemm); }

}  // namespace sparsemia::cpu::conv
