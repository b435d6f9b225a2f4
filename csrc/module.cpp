// The Python module sparsemia._C: loading it registers the operators; the few
// functions here are controls that are not operators (CPU ISA selection,
// the conv tuning knobs).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <mutex>
#include <set>
#include <thread>

#include "cpu/common/isa.h"
#include "cpu/conv/plan.h"

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

// Distinct threads one at::parallel_for in this library's code runs on: shows
// whether the kernels' loops really are split across torch's intra-op threads.
int64_t parallel_threads_used() {
  std::mutex mu;
  std::set<std::thread::id> ids;
  const int64_t n = 4 * std::max(at::get_num_threads(), 1);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    // enough work per task that one thread cannot take every task before the others start
    volatile double sink = 0;
    for (int64_t i = begin; i < end; ++i)
      for (int k = 0; k < 2000000; ++k) sink = sink + 1e-9 * k;
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  return int64_t(ids.size());
}

}  // namespace

namespace sparsemia::program {
void bind(pybind11::module& m);  // cpu/program/program.cpp
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparsemia compiled operators (registered under torch.ops.sparsemia)";
  m.def("get_cpu_isa", &get_cpu_isa, "ISA the CPU kernels use now");
  m.def("best_cpu_isa", &best_cpu_isa, "Widest ISA this CPU supports");
  m.def("set_cpu_isa", &set_cpu_isa, "Force the CPU kernels' ISA: 'scalar', 'vec128', 'avx2' or 'avx512'");
  m.def("reload_conv_tuning", &sparsemia::cpu::conv::reload_tuning,
        "Read the SPARSEMIA_CONV_{BT,COLUMNS,L1,ROWS} tuning knobs from the environment again");
  m.def("note_optimizer_step", &sparsemia::cpu::conv::note_optimizer_step,
        "Count an optimizer step: cached convolution plans that hold weight values are rebuilt (fused optimizers "
        "write parameters without bumping their version counters); sparsemia.ops calls it from an optimizer hook");
  m.def("with_cuda", &with_cuda, "Whether the CUDA kernels were compiled in");
  m.def("parallel_threads_used", &parallel_threads_used,
        "Threads one at::parallel_for of the compiled kernels runs on (torch.get_num_threads() when threading works)");
  sparsemia::program::bind(m);
}
