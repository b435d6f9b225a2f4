// A straight-line program of operator calls, run from C++ in one Python call:
// the forward of a model compiled by sparsemia.compile (or a segment of it).
//
// At batch 1 a small pruned model spends most of its time between kernels: the
// Python of the graph, one Python-to-dispatcher crossing per operator with its
// argument parsing, and the interpreter's bookkeeping. Here the program is
// built once (each step an operator handle with its constant arguments already
// converted to IValues and the slots its register inputs go to), and a forward
// is one loop of boxed calls over a register file, below autograd (no graph is
// recorded; outputs are ordinary tensors that do not require grad), with the
// GIL released. A register is dropped after its last use, so the allocator
// reuses the memory as the eager forward would.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include <string>
#include <utility>
#include <vector>

namespace sparsemia::program {
namespace {

namespace py = pybind11;

struct Step {
  // An operator call, or (op unset) a switch of torch's intra-op thread count.
  std::optional<c10::OperatorHandle> op;
  std::vector<c10::IValue> args;              // constants; register slots hold None
  std::vector<std::pair<int64_t, int64_t>> slots;  // (argument index, register)
  std::vector<int64_t> outs;                  // a register per returned value
  std::vector<int64_t> frees;                 // registers whose last use is this step
  int threads = 0;
};

class Program {
 public:
  Program(int64_t registers, std::vector<int64_t> inputs, std::vector<int64_t> outputs)
      : registers_(registers), inputs_(std::move(inputs)), outputs_(std::move(outputs)) {
    for (int64_t r : inputs_) check_register(r);
    for (int64_t r : outputs_) check_register(r);
  }

  // Appends a call of the operator `name`.`overload` (e.g. "aten::linear", ""). `args`: its
  // positional arguments, converted to IValues with the schema's types; the entries at
  // `slots`' argument indices are placeholders for the registers named there.
  void add_call(const std::string& name, const std::string& overload, const py::list& args,
                const std::vector<std::pair<int64_t, int64_t>>& slots, const std::vector<int64_t>& outs) {
    Step step;
    step.op = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    const auto& schema = step.op->schema();
    TORCH_CHECK(int64_t(args.size()) <= int64_t(schema.arguments().size()), "program: ", name, " takes at most ",
                schema.arguments().size(), " arguments, got ", args.size());
    TORCH_CHECK(outs.size() == schema.returns().size(), "program: ", name, " returns ", schema.returns().size(),
                " values, got ", outs.size(), " output registers");
    std::vector<bool> is_slot(args.size(), false);
    for (const auto& [index, reg] : slots) {
      TORCH_CHECK(index >= 0 && index < int64_t(args.size()), "program: argument index ", index, " out of range");
      check_register(reg);
      is_slot[index] = true;
    }
    for (size_t i = 0; i < args.size(); ++i) {
      const auto& type = schema.arguments()[i].type();
      step.args.push_back(is_slot[i] ? c10::IValue() : torch::jit::toIValue(args[i], type));
    }
    // trailing arguments left out take the schema's defaults
    for (size_t i = args.size(); i < schema.arguments().size(); ++i) {
      const auto& default_value = schema.arguments()[i].default_value();
      TORCH_CHECK(default_value.has_value(), "program: ", name, ": argument ", schema.arguments()[i].name(),
                  " has no default");
      step.args.push_back(*default_value);
    }
    for (int64_t r : outs) check_register(r);
    step.slots = slots;
    step.outs = outs;
    steps_.push_back(std::move(step));
  }

  void add_set_threads(int threads) {
    TORCH_CHECK(threads >= 1, "program: threads must be >= 1");
    Step step;
    step.threads = threads;
    steps_.push_back(std::move(step));
  }

  // Marks registers to drop after the steps that use them last (computed here from the program).
  void finish() {
    std::vector<int64_t> last(registers_, -1);
    for (size_t s = 0; s < steps_.size(); ++s)
      for (const auto& slot : steps_[s].slots) last[slot.second] = int64_t(s);
    std::vector<bool> kept(registers_, false);
    for (int64_t r : outputs_) kept[r] = true;
    for (int64_t r = 0; r < registers_; ++r)
      if (last[r] >= 0 && !kept[r]) steps_[last[r]].frees.push_back(r);
  }

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) const {
    TORCH_CHECK(inputs.size() == inputs_.size(), "program: expected ", inputs_.size(), " inputs, got ",
                inputs.size());
    py::gil_scoped_release no_gil;
    // Below autograd: the kernels' epilogues have no derivative formulas and a forward records nothing.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const int threads = at::get_num_threads();
    std::vector<c10::IValue> reg(registers_);
    for (size_t i = 0; i < inputs.size(); ++i) reg[inputs_[i]] = inputs[i];
    torch::jit::Stack stack;
    stack.reserve(16);
    bool switched = false;
    try {
      for (const Step& step : steps_) {
        if (!step.op) {
          if (at::get_num_threads() != step.threads) at::set_num_threads(step.threads);
          switched = true;
          continue;
        }
        stack = step.args;
        for (const auto& [index, r] : step.slots) stack[index] = reg[r];
        for (int64_t r : step.frees) reg[r] = c10::IValue();  // a last use: the stack holds the only reference
        step.op->callBoxed(stack);
        for (size_t o = 0; o < step.outs.size(); ++o) reg[step.outs[o]] = std::move(stack[o]);
        stack.clear();
      }
    } catch (...) {
      if (switched) at::set_num_threads(threads);
      throw;
    }
    if (switched && at::get_num_threads() != threads) at::set_num_threads(threads);
    std::vector<at::Tensor> out;
    out.reserve(outputs_.size());
    for (int64_t r : outputs_) {
      TORCH_CHECK(reg[r].isTensor(), "program: output register ", r, " holds no tensor");
      out.push_back(reg[r].toTensor());
    }
    return out;
  }

  int64_t size() const { return int64_t(steps_.size()); }

 private:
  void check_register(int64_t r) const {
    TORCH_CHECK(r >= 0 && r < registers_, "program: register ", r, " out of range [0, ", registers_, ")");
  }

  int64_t registers_;
  std::vector<int64_t> inputs_, outputs_;
  std::vector<Step> steps_;
};

}  // namespace

void bind(py::module& m) {
  py::class_<Program>(m, "Program",
                      "A straight-line program of operator calls over a register file, run in one call "
                      "(sparsemia.compile's forward)")
      .def(py::init<int64_t, std::vector<int64_t>, std::vector<int64_t>>(), py::arg("registers"),
           py::arg("inputs"), py::arg("outputs"))
      .def("add_call", &Program::add_call, py::arg("name"), py::arg("overload"), py::arg("args"),
           py::arg("slots"), py::arg("outs"))
      .def("add_set_threads", &Program::add_set_threads, py::arg("threads"))
      .def("finish", &Program::finish)
      .def("run", &Program::run, py::arg("inputs"))
      .def("__len__", &Program::size);
}

}  // namespace sparsemia::program
