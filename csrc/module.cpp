// The Python module sparsemia._C: loading it registers the operators; the few
// functions here are controls that are not operators (CPU ISA selection).
#include <torch/extension.h>

#include "cpu/spmm/kernels.h"

namespace {

std::string get_cpu_isa() { return sparsemia::cpu::isa_name(sparsemia::cpu::active_isa()); }
std::string best_cpu_isa() { return sparsemia::cpu::isa_name(sparsemia::cpu::best_isa()); }
void set_cpu_isa(const std::string& name) { sparsemia::cpu::set_isa(sparsemia::cpu::isa_from_name(name.c_str())); }
bool with_cuda() {
#ifdef SPARSEMIA_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparsemia compiled operators (registered under torch.ops.sparsemia)";
  m.def("get_cpu_isa", &get_cpu_isa, "ISA the CPU kernels use now");
  m.def("best_cpu_isa", &best_cpu_isa, "Widest ISA this CPU supports");
  m.def("set_cpu_isa", &set_cpu_isa, "Force the CPU kernels' ISA: 'scalar', 'avx2' or 'avx512'");
  m.def("with_cuda", &with_cuda, "Whether the CUDA kernels were compiled in");
}
