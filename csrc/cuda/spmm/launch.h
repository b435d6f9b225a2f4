// Launchers of the CUDA sparse kernels. This header and the .cu files that
// implement it depend only on the CUDA runtime (no torch headers), so each
// kernel file compiles in seconds; spmm_cuda.cpp adapts torch tensors to them.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sparsemia::cuda {

enum class Dtype { f32, f64, f16, bf16 };
enum class Index { i32, i64 };

// Y[g] = W_g @ X[g] (+ bias[g] on every column), for g < groups.
// W_g: CSR rows crow[g * crow_group_stride + (0..M)] (absolute offsets into
// col/values). X[g]: [K, N] rows of stride ldx; Y[g]: [M, N] rows of stride ldy.
// vec: elements per vector load (1, or 16 bytes' worth when x, y, ldx, ldy and
// N allow); the caller checks alignment.
struct CsrSpmmArgs {
  const void* crow;
  int64_t crow_group_stride;
  const void* col;
  const void* values;
  const void* x;
  int64_t x_group_stride, ldx;
  void* y;
  int64_t y_group_stride, ldy;
  const void* bias;  // nullptr or [groups, M] with stride bias_group_stride
  int64_t bias_group_stride;
  int64_t M, N, groups;
  double avg_row_nnz;  // chooses the narrow (several rows per warp) path
  int vec;
};
cudaError_t csr_spmm(Dtype dtype, Index index, const CsrSpmmArgs& args, cudaStream_t stream);

// out[p - crow[0]] = dot(A[i, :], B[col[p], :]) for the stored entries p of row i.
// A: [M, N] rows of stride lda; B: [K, N] rows of stride ldb.
struct CsrSddmmArgs {
  const void* crow;
  const void* col;
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  void* out;
  int64_t M, N;
  int vec;
};
cudaError_t csr_sddmm(Dtype dtype, Index index, const CsrSddmmArgs& args, cudaStream_t stream);

// Bytes per vector load: 16 (the widest global load).
constexpr int kVectorBytes = 16;

}  // namespace sparsemia::cuda
