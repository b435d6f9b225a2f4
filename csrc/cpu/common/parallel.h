// The work split shared by the CPU kernel families: cost-balanced ranges of
// rows (or output channels) and the run of those ranges on torch's intra-op
// threads.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace sparsemia::cpu {

// Boundaries splitting rows [0, rows) of a CSR pattern into `parts` ranges of
// about equal cost, the cost of a row being its stored entries plus a fixed
// per-row overhead `row_cost`. crow[0] need not be 0.
template <typename I>
std::vector<int64_t> balanced_rows(const I* crow, int64_t rows, int64_t parts, int64_t row_cost) {
  std::vector<int64_t> bounds(parts + 1, rows);
  bounds[0] = 0;
  const auto cost = [&](int64_t i) { return int64_t(crow[i]) - int64_t(crow[0]) + row_cost * i; };
  const int64_t total = cost(rows);
  int64_t lo = 0;
  for (int64_t t = 1; t < parts; ++t) {
    const int64_t target = total * t / parts;
    int64_t l = lo, hi = rows;
    while (l < hi) {
      const int64_t mid = l + (hi - l) / 2;
      if (cost(mid) < target)
        l = mid + 1;
      else
        hi = mid;
    }
    bounds[t] = lo = l;
  }
  return bounds;
}

// Runs f(begin, end) over task ranges covering [0, tasks): on torch's intra-op
// threads when `threaded` and there is more than one task, else inline on the
// calling thread (so a small job never wakes the thread pool).
template <typename F>
void run_tasks(int64_t tasks, bool threaded, const F& f) {
  if (!threaded || tasks == 1) {
    for (int64_t t = 0; t < tasks; ++t) f(t, t + 1);
    return;
  }
  at::parallel_for(0, tasks, 1, f);
}

// run_tasks with f(t) called once per task.
template <typename F>
void run_each(int64_t tasks, bool threaded, const F& f) {
  run_tasks(tasks, threaded, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) f(t);
  });
}

}  // namespace sparsemia::cpu
