// CSR weight times dense matrix, row-split (in the spirit of Sputnik, Gale et
// al. 2020): a group of SUB lanes owns one output row and a tile of SUB * VEC
// output columns. The group stages SUB of the row's (column, value) pairs in
// registers with one coalesced load, then broadcasts them by shuffles while
// every lane streams VEC consecutive elements of the matching rows of X with
// one vector load each and accumulates in fp32 (fp64 for fp64).
//
// SUB = 32 (one row per warp) for wide outputs; SUB = 8 (four rows per warp)
// is the path for short rows or narrow outputs (small batches), where a whole
// warp per row would leave most lanes idle. Rows of one warp may differ in
// length, so the loop runs to the warp's longest row and shuffles stay
// warp-uniform. blockIdx.z indexes stacked models.
#include "cuda/spmm/common.cuh"
#include "cuda/spmm/launch.h"

namespace sparsemia::cuda {
namespace {

constexpr int kWarps = 4;  // warps per block

template <typename T, typename I, int VEC, int SUB>
__global__ void __launch_bounds__(kWarps * 32) csr_spmm_kernel(CsrSpmmArgs args) {
  using A = typename Acc<T>::type;
  constexpr int kRowsPerWarp = 32 / SUB;
  constexpr int kTile = SUB * VEC;
  const int lane = threadIdx.x & 31;
  const int sub_lane = lane % SUB;
  const int64_t g = blockIdx.z;
  const int64_t row = (int64_t(blockIdx.x) * kWarps + threadIdx.x / 32) * kRowsPerWarp + lane / SUB;
  const bool row_ok = row < args.M;

  const I* crow = static_cast<const I*>(args.crow) + g * args.crow_group_stride;
  const I* col = static_cast<const I*>(args.col);
  const T* values = static_cast<const T*>(args.values);
  const T* x = static_cast<const T*>(args.x) + g * args.x_group_stride;
  T* y = static_cast<T*>(args.y) + g * args.y_group_stride;

  const int64_t start = row_ok ? int64_t(crow[row]) : 0;
  const int64_t length = row_ok ? int64_t(crow[row + 1]) - start : 0;
  const int64_t warp_length = group_max<32>(length);
  const A bias = (args.bias != nullptr && row_ok)
                     ? to_acc(static_cast<const T*>(args.bias)[g * args.bias_group_stride + row])
                     : A(0);
  const int64_t tiles = (args.N + kTile - 1) / kTile;

  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const int64_t n0 = tile * kTile + int64_t(sub_lane) * VEC;
    const bool cols_ok = n0 < args.N;  // N % VEC == 0 whenever VEC > 1
    A acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = A(0);

    for (int64_t p0 = 0; p0 < warp_length; p0 += SUB) {
      // Stage SUB (column, value) pairs of this group's row: one per lane.
      const int64_t p = p0 + sub_lane;
      const bool p_ok = p < length;
      const long long my_col = p_ok ? static_cast<long long>(col[start + p]) : 0;
      const A my_val = p_ok ? to_acc(values[start + p]) : A(0);
      const int64_t count = warp_length - p0 < SUB ? warp_length - p0 : SUB;
#pragma unroll 4
      for (int j = 0; j < count; ++j) {
        const long long c = __shfl_sync(0xffffffffu, my_col, j, SUB);
        const A w = __shfl_sync(0xffffffffu, my_val, j, SUB);
        if (p0 + j < length && cols_ok) {
          const T* xp = x + c * args.ldx + n0;
          if constexpr (VEC > 1) {
            const Vec<T, VEC> xv = load_vec<T, VEC>(xp);
#pragma unroll
            for (int v = 0; v < VEC; ++v) acc[v] += w * to_acc(xv.v[v]);
          } else {
            acc[0] += w * to_acc(__ldg(xp));
          }
        }
      }
    }
    if (row_ok && cols_ok) {
      T* yp = y + row * args.ldy + n0;
      if constexpr (VEC > 1) {
        Vec<T, VEC> out;
#pragma unroll
        for (int v = 0; v < VEC; ++v) out.v[v] = from_acc<T>(acc[v] + bias);
        store_vec<T, VEC>(yp, out);
      } else {
        yp[0] = from_acc<T>(acc[0] + bias);
      }
    }
  }
}

template <typename T, typename I, int VEC, int SUB>
cudaError_t launch(const CsrSpmmArgs& args, cudaStream_t stream) {
  constexpr int kRowsPerBlock = kWarps * 32 / SUB;
  const int64_t tiles = (args.N + SUB * VEC - 1) / (SUB * VEC);
  const dim3 grid(static_cast<unsigned>((args.M + kRowsPerBlock - 1) / kRowsPerBlock),
                  static_cast<unsigned>(tiles < 65535 ? tiles : 65535), static_cast<unsigned>(args.groups));
  csr_spmm_kernel<T, I, VEC, SUB><<<grid, kWarps * 32, 0, stream>>>(args);
  return cudaGetLastError();
}

template <typename T, typename I>
cudaError_t dispatch_shape(const CsrSpmmArgs& args, cudaStream_t stream) {
  constexpr int kVec = kVectorBytes / sizeof(T);
  const int vec = args.vec == 1 ? 1 : kVec;
  // Narrow path: a 32-lane tile would be mostly empty, or rows are too short
  // for a warp's worth of staged nonzeros.
  const bool narrow = args.N <= 8 * vec || args.avg_row_nnz <= 4.0;
  if (vec == 1) return narrow ? launch<T, I, 1, 8>(args, stream) : launch<T, I, 1, 32>(args, stream);
  return narrow ? launch<T, I, kVec, 8>(args, stream) : launch<T, I, kVec, 32>(args, stream);
}

template <typename T>
cudaError_t dispatch_index(Index index, const CsrSpmmArgs& args, cudaStream_t stream) {
  return index == Index::i32 ? dispatch_shape<T, int32_t>(args, stream) : dispatch_shape<T, int64_t>(args, stream);
}

}  // namespace

cudaError_t csr_spmm(Dtype dtype, Index index, const CsrSpmmArgs& args, cudaStream_t stream) {
  if (args.M == 0 || args.N == 0 || args.groups == 0) return cudaSuccess;
  switch (dtype) {
    case Dtype::f32: return dispatch_index<float>(index, args, stream);
    case Dtype::f64: return dispatch_index<double>(index, args, stream);
    case Dtype::f16: return dispatch_index<__half>(index, args, stream);
    case Dtype::bf16: return dispatch_index<__nv_bfloat16>(index, args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sparsemia::cuda
