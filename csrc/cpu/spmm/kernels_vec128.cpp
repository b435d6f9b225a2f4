// Sparse matmul kernels on 128-bit vectors: SSE2 on x86-64 and NEON on Arm, the
// baseline of both (no target attribute needed), so this ISA runs on every such CPU.
#define SM_NS vec128
#define SM_TARGET
#define SM_VBYTES 16
#define SM_ISA_LEVEL 0
#include "cpu/spmm/kernels_impl.inc"
