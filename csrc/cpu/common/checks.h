// Argument checks shared by the CPU operators: one clear message per bad
// argument, naming the op, the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

namespace sparsemia::cpu {

// crow and col of a CSR / BSR pattern: 1-D, both int32 or both int64, on the CPU.
inline void check_pattern(const at::Tensor& crow, const at::Tensor& col, const char* op) {
  TORCH_CHECK(crow.dim() == 1 && col.dim() == 1, op, ": crow and col must be 1-D, got ", crow.dim(), "-D and ",
              col.dim(), "-D");
  TORCH_CHECK(crow.scalar_type() == col.scalar_type() &&
                  (crow.scalar_type() == at::kInt || crow.scalar_type() == at::kLong),
              op, ": crow and col must both be int32 or both int64, got ", crow.scalar_type(), " and ",
              col.scalar_type());
  TORCH_CHECK(crow.numel() >= 1, op, ": crow must have at least one element");
  TORCH_CHECK(crow.device().is_cpu() && col.device().is_cpu(), op, ": crow and col must be CPU tensors");
}

// values (or the first operand) and x: float32 or float64, one dtype, on the CPU.
inline void check_values(const at::Tensor& values, const at::Tensor& x, const char* op) {
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
              ": the CPU kernels take float32 or float64 values, got ", values.scalar_type());
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), op, ": x must have the weight's dtype ",
              values.scalar_type(), ", got ", x.scalar_type());
  TORCH_CHECK(values.device().is_cpu() && x.device().is_cpu(), op, ": values and x must be CPU tensors");
}

// An optional bias: [M], the weight's dtype, on the CPU.
inline void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& values, int64_t M, const char* op) {
  if (!bias) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == M, op, ": bias must have shape [", M, "], got ", bias->sizes());
  TORCH_CHECK(bias->scalar_type() == values.scalar_type(), op, ": bias must have the weight's dtype ",
              values.scalar_type(), ", got ", bias->scalar_type());
  TORCH_CHECK(bias->device().is_cpu(), op, ": bias must be a CPU tensor");
}

}  // namespace sparsemia::cpu
