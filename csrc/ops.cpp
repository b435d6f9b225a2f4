// Every sparsemia operator schema, in one place. Each device registers its
// implementations beside its kernels (cpu/, cuda/); Python adds fake kernels
// and autograd (src/sparsemia/ops/: matmul.py, conv.py, stacked.py). The Triton
// operators (sparsemia::triton_*) are declared with triton_op in
// src/sparsemia/ops/backends/triton.py, where torch.compile can trace into them.
//
// Conventions: CSR weights are (crow [M+1], col [nnz], values [nnz]); BSR
// weights are (crow [M/R+1], col [nblocks] block-columns, values [nblocks, R, C]).
// Index tensors are int32 or int64 (both of one dtype). "linear" ops take
// x [B, K] and return x @ W^T [B, M]; "spmm" ops take x [K, N] and return W @ x.
#include <torch/library.h>

TORCH_LIBRARY(sparsemia, m) {
  m.def("csr_spmm(Tensor crow, Tensor col, Tensor values, Tensor x) -> Tensor");
  m.def("csr_linear(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias) -> Tensor");
  m.def("csr_sddmm(Tensor crow, Tensor col, Tensor a, Tensor b) -> Tensor");
  m.def("csr_transpose(Tensor crow, Tensor col, int ncols) -> (Tensor, Tensor, Tensor)");
  m.def("bsr_spmm(Tensor crow, Tensor col, Tensor values, Tensor x) -> Tensor");
  m.def("bsr_linear(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias) -> Tensor");
  m.def("bsr_sddmm(Tensor crow, Tensor col, Tensor a, Tensor b, int R, int C) -> Tensor");
  // Stacked models: x [G, B, K]; crow [G, M+1] holds offsets into the shared
  // col/values, the G models' entries stored one model after another
  // (crow[g][M] == crow[g+1][0], crow[0][0] == 0); bias [G, M]. Returns [G, B, M].
  m.def("stacked_csr_linear(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias) -> Tensor");

  // ---- convolution (csrc/cpu/conv) ----
  // x [B, Cin, H, W]; the CSR weight is the matrix [Cout, Cin/groups*kh*kw]
  // (column = (ci * kh + ky) * kw + kx within the row's group). Returns
  // [B, Cout, Ho, Wo], like F.conv2d with the same stride/padding/dilation/groups.
  m.def("csr_conv2d(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  // Inference epilogue: max_pool2d(relu(csr_conv2d(...)), pool) with kernel = stride = pool, no
  // padding, floor mode (pool = 1: the ReLU alone). Returns [B, Cout, Ho / pool, Wo / pool]; the
  // full-size output is never written to memory. No autograd (training composes the three ops).
  m.def("csr_conv2d_relu_pool(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups, int pool) -> Tensor");
  // Residual epilogue: csr_conv2d(...) + residual, then the ReLU when relu (a ResNet block's
  // last convolution with its shortcut), the sum added as the kernels store their output.
  // residual [B, Cout, Ho, Wo], any strides. Returns [B, Cout, Ho, Wo].
  m.def("csr_conv2d_add(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups, Tensor residual, bool relu) -> Tensor");
  // Dense 1x1 convolution (stride 1, no padding) as one GEMM per image: x [B, Cin, H, W], weight
  // [Cout, Cin], bias [Cout]. Returns [B, Cout, H, W]. No autograd (compile's inference lowering).
  m.def("conv1x1_gemm(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // Depth-wise convolution: x [B, C, H, W], a dense weight [C, 1, kh, kw] whose zero taps are
  // skipped (pruned), groups = C; the result clamped to [min, max] (ReLU: [0, inf], ReLU6: [0, 6],
  // none: [-inf, inf]). Returns [B, C, Ho, Wo], like clamp(F.conv2d(...), min, max).
  m.def("depthwise_conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
        "float min, float max) -> Tensor");
  // Inference: depthwise_conv2d(clamp(x, in_min, in_max), ...), the input clamped as it is read
  // (the activation of the layer before, fused).
  m.def("depthwise_conv2d_clamp_in(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, float in_min, float in_max, float min, float max) -> Tensor");
  // d loss / d values at the stored entries, given grad_out [B, Cout, Ho, Wo]. Returns [nnz].
  m.def("csr_conv2d_weight_grad(Tensor x, Tensor grad_out, Tensor crow, Tensor col, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
}
