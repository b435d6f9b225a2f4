// Sparse matmul kernels compiled for the avx512 ISA (selected at run time).
// x86 only: elsewhere the ISA is never selected and nothing is compiled here.
#include "cpu/common/isa.h"  // SPARSEMIA_X86
#if SPARSEMIA_X86
#define SM_NS avx512
#define SM_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,avx2")))
#define SM_VBYTES 64
#define SM_ISA_LEVEL 2
#include "cpu/spmm/kernels_impl.inc"
#endif
