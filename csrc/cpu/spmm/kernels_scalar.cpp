// Sparse matmul kernels compiled for the scalar ISA (selected at run time).
#define SM_NS scalar
#define SM_TARGET 
#define SM_VBYTES 0
#define SM_ISA_LEVEL 0
#include "cpu/spmm/kernels_impl.inc"
