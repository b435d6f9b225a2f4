// SDDMM at the stored entries of a CSR pattern: out[p] = A[i, :] . B[col[p], :],
// the weight gradient of a sparse layer. One warp per row; for each stored
// entry the warp streams both rows with vector loads and reduces by shuffles.
#include "cuda/spmm/common.cuh"
#include "cuda/spmm/launch.h"

namespace sparsemia::cuda {
namespace {

constexpr int kWarps = 8;

template <typename T, typename I, int VEC>
__global__ void __launch_bounds__(kWarps * 32) csr_sddmm_kernel(CsrSddmmArgs args) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const I* crow = static_cast<const I*>(args.crow);
  const I* col = static_cast<const I*>(args.col);
  const T* a = static_cast<const T*>(args.a);
  const T* b = static_cast<const T*>(args.b);
  T* out = static_cast<T*>(args.out);
  const int64_t base = crow[0];
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; row < args.M; row += warps) {
    const T* arow = a + row * args.lda;
    for (int64_t p = crow[row], end = crow[row + 1]; p < end; ++p) {
      const T* brow = b + int64_t(col[p]) * args.ldb;
      A acc = A(0);
      for (int64_t n = int64_t(lane) * VEC; n < args.N; n += 32 * VEC) {
        if constexpr (VEC > 1) {
          const Vec<T, VEC> av = load_vec<T, VEC>(arow + n), bv = load_vec<T, VEC>(brow + n);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc += to_acc(av.v[v]) * to_acc(bv.v[v]);
        } else {
          acc += to_acc(arow[n]) * to_acc(brow[n]);
        }
      }
      acc = warp_sum(acc);
      if (lane == 0) out[p - base] = from_acc<T>(acc);
    }
  }
}

template <typename T, typename I>
cudaError_t launch(const CsrSddmmArgs& args, cudaStream_t stream) {
  constexpr int kVec = kVectorBytes / sizeof(T);
  const int64_t blocks = (args.M + kWarps - 1) / kWarps;
  const dim3 grid(static_cast<unsigned>(blocks < (int64_t(1) << 30) ? blocks : (int64_t(1) << 30)));
  if (args.vec == 1)
    csr_sddmm_kernel<T, I, 1><<<grid, kWarps * 32, 0, stream>>>(args);
  else
    csr_sddmm_kernel<T, I, kVec><<<grid, kWarps * 32, 0, stream>>>(args);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_index(Index index, const CsrSddmmArgs& args, cudaStream_t stream) {
  return index == Index::i32 ? launch<T, int32_t>(args, stream) : launch<T, int64_t>(args, stream);
}

}  // namespace

cudaError_t csr_sddmm(Dtype dtype, Index index, const CsrSddmmArgs& args, cudaStream_t stream) {
  if (args.M == 0) return cudaSuccess;
  switch (dtype) {
    case Dtype::f32: return dispatch_index<float>(index, args, stream);
    case Dtype::f64: return dispatch_index<double>(index, args, stream);
    case Dtype::f16: return dispatch_index<__half>(index, args, stream);
    case Dtype::bf16: return dispatch_index<__nv_bfloat16>(index, args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sparsemia::cuda
