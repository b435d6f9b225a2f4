// Planning of the CPU sparse convolution (see plan.h).
#include "cpu/conv/plan.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "cpu/common/lru_cache.h"
#include "cpu/conv/kernels.h"

namespace sparsemia::cpu::conv {

using at::Tensor;

namespace {

Tuning read_tuning() {
  Tuning t;
  if (const char* env = std::getenv("SPARSEMIA_CONV_BT")) t.bt = std::max<int64_t>(1, std::atoll(env));
  if (const char* env = std::getenv("SPARSEMIA_CONV_COLUMNS")) t.columns = std::max(std::atof(env), 0.0);
  if (const char* env = std::getenv("SPARSEMIA_CONV_L1")) t.l1 = std::max<int64_t>(1, std::atoll(env));
  if (const char* env = std::getenv("SPARSEMIA_CONV_ROWS")) t.rows = std::max<int64_t>(1, std::atoll(env));
  if (const char* env = std::getenv("SPARSEMIA_CONV_EXPAND")) t.expand = std::atoll(env);
  if (const char* env = std::getenv("SPARSEMIA_CONV_SEGTAPS")) t.segtaps = std::max<int64_t>(1, std::atoll(env));
  return t;
}

std::mutex tuning_mutex;
Tuning& current_tuning() {
  static Tuning t = read_tuning();
  return t;
}

int64_t pair_at(at::IntArrayRef v, int64_t i, const char* what, const char* op) {
  TORCH_CHECK(v.size() == 2, op, ": ", what, " must have two elements, got ", v.size());
  return v[i];
}

}  // namespace

Tuning tuning() {
  std::lock_guard<std::mutex> lock(tuning_mutex);
  return current_tuning();
}

void reload_tuning() {
  std::lock_guard<std::mutex> lock(tuning_mutex);
  current_tuning() = read_tuning();
}

Geometry make_geometry(const Tensor& x, int64_t Cout, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [B, Cin, H, W], got ", x.dim(), "-D");
  Geometry g{};
  g.B = x.size(0), g.Cin = x.size(1), g.H = x.size(2), g.W = x.size(3), g.Cout = Cout;
  g.kh = pair_at(kernel_size, 0, "kernel_size", op), g.kw = pair_at(kernel_size, 1, "kernel_size", op);
  g.sh = pair_at(stride, 0, "stride", op), g.sw = pair_at(stride, 1, "stride", op);
  g.ph = pair_at(padding, 0, "padding", op), g.pw = pair_at(padding, 1, "padding", op);
  g.dh = pair_at(dilation, 0, "dilation", op), g.dw = pair_at(dilation, 1, "dilation", op);
  g.groups = groups;
  TORCH_CHECK(g.kh >= 1 && g.kw >= 1, op, ": kernel_size must be positive, got ", kernel_size);
  TORCH_CHECK(g.sh >= 1 && g.sw >= 1, op, ": stride must be positive, got ", stride);
  TORCH_CHECK(g.ph >= 0 && g.pw >= 0, op, ": padding must be non-negative, got ", padding);
  TORCH_CHECK(g.dh >= 1 && g.dw >= 1, op, ": dilation must be positive, got ", dilation);
  TORCH_CHECK(groups >= 1 && g.Cin % groups == 0 && Cout % groups == 0, op, ": groups (", groups,
              ") must divide both Cin (", g.Cin, ") and Cout (", Cout, ")");
  g.cin_g = g.Cin / groups, g.cout_g = Cout / groups;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  const int64_t eh = g.dh * (g.kh - 1) + 1, ew = g.dw * (g.kw - 1) + 1;
  TORCH_CHECK(Hp >= eh && Wp >= ew, op, ": the padded input (", Hp, "x", Wp,
              ") is smaller than the dilated kernel (", eh, "x", ew, ")");
  g.Ho = (Hp - eh) / g.sh + 1, g.Wo = (Wp - ew) / g.sw + 1;
  g.Hq = (Hp + g.sh - 1) / g.sh, g.Wq = (Wp + g.sw - 1) / g.sw;
  return g;
}

// One image with rows of fewer than 8 outputs (deep layers at batch 1): the
// output plane is computed as one run over the packed row pitch Wq, output
// (oh, ow) at oh * Wq + ow, rounded up to whole 64-byte vectors (columns Wo ..
// Wq - 1 of each row are computed and dropped), so that tiles are whole vectors
// instead of a few lanes of each row (measured at batch 1, 90% sparse, 2
// threads: 4x4 and 2x2 maps 1.05-1.2x faster; 8x8 maps slower, so not them). A
// 1x1 stride-1 unpadded conv is one long row already.
bool flat_plane(const Geometry& g, int64_t bt) {
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  return bt == 1 && g.Wo < 8 && g.Ho > 1 && !pointwise;
}

// The unpadded stride-1 case with Bt = 1 reads the NCHW image in place (not
// as a flat plane, which reads past the last row).
bool reads_in_place(const Geometry& g, int64_t bt, bool flat) {
  return bt == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && !flat;
}

namespace {

// Images per chunk: 1 while an output row fills vectors on its own, else the
// batch goes innermost: the fewest images (a power of two, at most 16) that make
// an output row at least 32 elements and whole 16-lane vectors.
int64_t chunk_batch(const Geometry& g, const Tuning& tuning) {
  if (g.B == 1 || g.Wo >= 16) return 1;
  if (tuning.bt > 0) return std::min<int64_t>(g.B, tuning.bt);
  int64_t bt = 1;
  while (bt < 16 && (g.Wo * bt < 32 || (g.Wo * bt) % 16 != 0)) bt *= 2;
  return std::min(bt, g.B);
}

// `flat`: forward calls may take the flat-plane layout; `expand`: the expanded
// one (forward calls; the weight gradient reads rows as they are).
Packed packed_layout(const Geometry& g, int64_t bt, int64_t elem_size, bool flat, bool expand) {
  Packed p{};
  p.bt = bt;
  p.phase = g.Hq * g.Wq * bt;
  p.plane = g.sh * g.sw * p.phase;
  p.size = g.Cin * p.plane;
  p.x_row = g.Wq * bt;
  p.len = g.Wo * bt;
  p.out_rows = g.Ho;
  p.flat = flat && flat_plane(g, bt);
  if (p.flat) {
    const int64_t vec = 64 / elem_size;
    p.len = ((g.Ho - 1) * g.Wq + g.Wo + vec - 1) / vec * vec;
    p.stage = std::max(p.len, g.Ho * g.Wq);
    p.out_rows = 1;
    p.x_row = 0;
  } else if (reads_in_place(g, bt, false) && g.kh == 1 && g.kw == 1) {
    // Rows are contiguous in input and output alike: one row of H*W.
    p.len = g.Ho * g.Wo;
    p.out_rows = 1;
    p.x_row = 0;
  } else if (expand) {
    const int64_t vec = 64 / elem_size;
    p.x_row = (g.Wo * bt + vec - 1) / vec * vec;
    p.phase = g.Hq * p.x_row;
    p.copy = g.sh * p.phase;
    p.plane = g.kw * p.copy;
    p.size = g.Cin * p.plane;
  }
  return p;
}

// Column groups are used for complete columns (every tap of every group stored,
// so the result is the single-tap sum in another order), for 5-high kernels or
// rows of at least 128 bytes. Measured on dense layers (AVX-512, 2 threads):
// 5x5, and 3x3 with 32-wide rows, 1.35-1.6x faster than single taps; 3x3 with
// 16-wide rows 7% slower; below ~0.8 filled single taps are ahead.
// Tuning::columns = f takes groups whenever the geometry
// allows and at least a share f of their taps is stored (above 1: never); the
// zeros filled in then multiply their inputs, so a NaN or Inf input reaches
// outputs that a pruned tap would have kept it from. Returns the least fill
// (0: none).
double column_fill_wanted(const Geometry& g, int64_t row_len, int64_t elem_size, const Tuning& tuning) {
  if (g.sh != 1 || g.dh != 1 || !column_groups_supported(g.kh)) return 0;
  if (tuning.columns >= 0) return tuning.columns <= 1 ? std::max(tuning.columns, 1e-9) : 0;
  return g.kh >= 5 || row_len * elem_size >= 128 ? 1.0 : 0;
}

// Checks the CSR pattern and builds the entries; with `values`, column groups
// where the geometry allows them and the pattern fills them (their values go to
// `grouped`, [entries * kh]).
template <typename I, typename T>
void make_entries(Entries& e, std::vector<T>& grouped, const Tensor& crow, const Tensor& col, const T* values,
                  const Geometry& g, int64_t row_len, const Tuning& tuning, const char* op) {
  const int64_t M = g.Cout, kk = g.kh * g.kw, K = g.cin_g * kk;
  const I* rp = crow.data_ptr<I>();
  const I* cp = col.data_ptr<I>();
  const int64_t nnz = col.numel();
  TORCH_CHECK(int64_t(rp[0]) == 0 && int64_t(rp[M]) == nnz, op, ": crow must run from 0 to nnz = ", nnz, ", got ",
              int64_t(rp[0]), " .. ", int64_t(rp[M]));
  e.crow.resize(M + 1);
  for (int64_t co = 0; co < M; ++co) {
    e.crow[co] = rp[co];
    TORCH_CHECK(rp[co + 1] >= rp[co], op, ": crow must be non-decreasing");
    for (int64_t q = rp[co]; q < rp[co + 1]; ++q) {
      const int64_t c = cp[q];
      TORCH_CHECK(c >= 0 && c < K, op, ": column index ", c, " out of range [0, ", K, ")");
      // the input-channel blocks (make_blocking) take each row's entries in column order
      TORCH_CHECK(q == rp[co] || c >= int64_t(cp[q - 1]), op, ": col must be sorted within each row");
    }
  }
  e.crow[M] = nnz;
  e.kgroup = 0;
  e.column.clear();
  const double fill = values == nullptr || nnz == 0 ? 0 : column_fill_wanted(g, row_len, sizeof(T), tuning);
  if (fill <= 0) return;

  // The group (ci, kx) of each kernel column and its ky, looked up per tap.
  std::vector<int32_t> key(K), ky(K);
  for (int64_t c = 0; c < K; ++c) key[c] = int32_t((c / kk) * g.kw + c % g.kw), ky[c] = int32_t((c % kk) / g.kw);
  // Groups of a row are numbered in order of first appearance; taps come in
  // column order, so groups are ordered by input channel as the blocks need.
  std::vector<int64_t> stamp(g.cin_g * g.kw, -1), slot(g.cin_g * g.kw);
  int64_t groups = 0;
  for (int64_t co = 0; co < M; ++co) {
    int64_t row_groups = 0;
    for (int64_t q = rp[co]; q < rp[co + 1]; ++q) {
      const int64_t k = key[cp[q]];
      if (stamp[k] != co) stamp[k] = co, ++row_groups;
    }
    groups += row_groups;
    // complete columns only (the default): the first incomplete one decides
    if (fill >= 1 && (rp[co + 1] - rp[co]) != row_groups * g.kh) return;
  }
  if (double(nnz) < fill * double(groups * g.kh)) return;
  std::fill(stamp.begin(), stamp.end(), -1);
  e.kgroup = g.kh;
  e.column.resize(groups);
  grouped.assign(groups * g.kh, T(0));
  int64_t next = 0;
  for (int64_t co = 0; co < M; ++co) {
    e.crow[co] = next;
    for (int64_t q = rp[co]; q < rp[co + 1]; ++q) {
      const int64_t c = cp[q], k = key[c];
      if (stamp[k] != co) {
        stamp[k] = co, slot[k] = next;
        e.column[next++] = c - ky[c] * g.kw;
      }
      grouped[slot[k] * g.kh + ky[c]] += values[q];
    }
  }
  e.crow[M] = next;
}

// Offset in X' of each entry (of its ky = 0 tap for a group); `column` holds
// each entry's kernel column.
template <typename C>
void entry_offsets(const Entries& e, const C* column, const Geometry& g, const Packed& pk, std::vector<int32_t>& offset,
                   const char* op) {
  TORCH_CHECK(pk.size < std::numeric_limits<int32_t>::max(), op, ": the packed input chunk (", pk.size,
              " elements) is too large for 32-bit offsets");
  // Offsets of the K kernel columns within one group, computed once: the
  // per-entry loop below is then a lookup, with no division per entry.
  const int64_t kk = g.kh * g.kw, K = g.cin_g * kk;
  std::vector<int64_t> column_offset(K);
  for (int64_t c = 0; c < K; ++c) {
    const int64_t ci = c / kk, t = c % kk;
    const int64_t ry = (t / g.kw) * g.dh, rx = (t % g.kw) * g.dw;
    if (pk.copy > 0)
      column_offset[c] = ci * pk.plane + (t % g.kw) * pk.copy + (ry % g.sh) * pk.phase + (ry / g.sh) * pk.x_row;
    else
      column_offset[c] = ci * pk.plane + ((ry % g.sh) * g.sw + rx % g.sw) * pk.phase + (ry / g.sh) * g.Wq * pk.bt +
                         (rx / g.sw) * pk.bt;
  }
  offset.resize(e.crow.back());
  for (int64_t co = 0; co < g.Cout; ++co) {
    const int64_t group_offset = (co / g.cout_g) * g.cin_g * pk.plane;
    for (int64_t q = e.crow[co]; q < e.crow[co + 1]; ++q) offset[q] = int32_t(group_offset + column_offset[column[q]]);
  }
}

template <typename C>
void make_blocking(Blocking& b, const Entries& e, const C* column, const Geometry& g, const Packed& pk,
                   int64_t elem_size, const Tuning& tuning) {
  const int64_t vec = 64 / elem_size;  // elements per 64-byte vector
  b.band_len = pk.len <= 8 * vec ? pk.len : 4 * vec;
  b.band_rows = pk.out_rows == 1 ? 1 : tuning.rows;
  int64_t in_rows = 1, in_cols = pk.flat ? pk.plane : b.band_len;
  if (pk.out_rows != 1) {
    in_rows = (b.band_rows - 1) * g.sh + (g.kh - 1) * g.dh + 1;
    const int64_t out_cols = (b.band_len + pk.bt - 1) / pk.bt;
    in_cols = pk.copy > 0 ? g.kw * b.band_len : ((out_cols - 1) * g.sw + (g.kw - 1) * g.dw + 1) * pk.bt;
  }
  const int64_t per_channel = std::max<int64_t>(in_rows * in_cols * elem_size, 1);
  const int64_t fit = std::max<int64_t>(tuning.l1 / per_channel, 1);
  b.nseg = (g.cin_g + fit - 1) / fit;
  // every block reloads and stores the partial sums: keep tuning.segtaps taps per
  // output channel and block on average (measured: ResNet-18's 3%-dense 8x8 layers
  // ran 4 taps per block with 16 blocks; 16 rather than 32 with the plain layout of
  // 5-10% dense layers: 3x3 layers of VGG-16 and ResNet-18 at batch 32 up to 1.2x faster)
  const int64_t taps = e.crow.back() / std::max<int64_t>(g.Cout, 1);
  b.nseg = std::max<int64_t>(1, std::min(b.nseg, taps / tuning.segtaps));
  b.seg.clear();
  if (b.nseg <= 1) {
    b.nseg = 1;
    return;
  }
  const int64_t block = (g.cin_g + b.nseg - 1) / b.nseg;  // channels per block, evened out
  const int64_t cols = block * g.kh * g.kw;               // kernel columns per block
  const int64_t M = g.Cout;
  b.seg.resize(M * (b.nseg + 1));
  for (int64_t co = 0; co < M; ++co) {
    int64_t p = e.crow[co];
    const int64_t end = e.crow[co + 1];
    int64_t* sg = b.seg.data() + co * (b.nseg + 1);
    for (int64_t s = 0; s < b.nseg; ++s) {
      sg[s] = p;
      while (p < end && int64_t(column[p]) < (s + 1) * cols) ++p;
    }
    sg[b.nseg] = end;
  }
}

// `values` nullptr: the weight gradient (single taps, rows as they are).
template <typename I, typename T>
void make_plan(Plan<T>& plan, const Chunks& ch, const Tensor& crow, const Tensor& col, const T* values,
               const Geometry& g, const Tuning& tuning, const char* op) {
  const bool forward = values != nullptr;
  // column groups step through output rows, which a flat plane does not have
  const bool flat = forward && flat_plane(g, ch.bt);
  make_entries<I, T>(plan.entries, plan.grouped, crow, col, flat ? nullptr : values, g, ch.bt * g.Wo, tuning, op);
  for (int last = 0; last < 2; ++last) {
    if (last == 1 && ch.last_bt == ch.bt) {
      plan.layout[1] = plan.layout[0];
      plan.offset[1] = plan.offset[0];
      plan.blocking[1] = plan.blocking[0];
      break;
    }
    const int64_t bt = last ? ch.last_bt : ch.bt;
    // Expanded when the layer does enough work per packed element (the copy is kw times
    // larger). Measured (AVX-512, batch 32, VGG-16): 20-60% dense layers 5-35% faster
    // expanded; 3-5% dense ones 10-40% slower (32x32 maps: 4.1 -> 5.9 ms). 10% dense
    // ones are slower too (the copy triples the input a block of input channels reads,
    // so fewer channels fit a block in L1): VGG-16 and ResNet-18 pruned to 90% and 95%,
    // batch 32, 2 threads, 3-5% faster as a whole with the plain layout below 15%.
    const int64_t taps = g.Cout * g.cin_g * g.kh * g.kw;
    const bool dense_enough = col.numel() >= 64 * g.Cin * g.kw && 100 * col.numel() >= 15 * taps;
    const bool expand = forward && (tuning.expand >= 2 || (tuning.expand == 1 && dense_enough));
    plan.layout[last] = packed_layout(g, bt, sizeof(T), flat, expand);
    if (plan.entries.kgroup > 0) {
      const int64_t* column = plan.entries.column.data();
      entry_offsets(plan.entries, column, g, plan.layout[last], plan.offset[last], op);
      make_blocking(plan.blocking[last], plan.entries, column, g, plan.layout[last], sizeof(T), tuning);
    } else {
      const I* column = col.data_ptr<I>();
      entry_offsets(plan.entries, column, g, plan.layout[last], plan.offset[last], op);
      make_blocking(plan.blocking[last], plan.entries, column, g, plan.layout[last], sizeof(T), tuning);
    }
  }
}

// Plans of recent calls, reused while the weight's index (and, for column
// groups, value) tensors are the same, unmodified objects (so also across the
// training steps of a weight whose values change): at batch 1 building
// a plan, O(nnz), costs more than a deep layer's convolution. Entries hold weak
// references, so a cached tensor's address cannot be taken by a new tensor
// while its entry lives, and its storage is freed as usual.
// Version counters miss one kind of write: torch's fused optimizers (the
// trainer's default Adam) update parameters in place without bumping them. So a
// plan holding values also keys on the number of optimizer steps taken in the
// process (counted by a hook sparsemia.ops registers): after any step it is
// rebuilt, while inference, which takes no steps, keeps hitting the cache.
std::atomic<int64_t> optimizer_steps{0};

struct PlanKey {
  std::array<int64_t, 26> ints;  // geometry, chunking, dtypes, tuning
  std::array<const c10::TensorImpl*, 3> impl;
  std::array<int64_t, 4> version;  // crow, col, values (or col again), optimizer steps (0: no values)
  bool operator==(const PlanKey& o) const { return ints == o.ints && impl == o.impl && version == o.version; }
};

struct CachedPlan {
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  std::array<WeakImpl, 3> refs;
  std::shared_ptr<const void> plan;
  bool alive() const {
    for (const auto& r : refs)
      if (r.expired()) return false;
    return true;
  }
};

LruCache<PlanKey, CachedPlan>& plan_cache() {
  static LruCache<PlanKey, CachedPlan> cache(32);
  return cache;
}

std::shared_ptr<const void> find_plan(const PlanKey& key) {
  auto hit = plan_cache().find(key, [](const CachedPlan& c) { return c.alive(); });
  return hit ? hit->plan : nullptr;
}

void insert_plan(const PlanKey& key, const std::array<const Tensor*, 3>& tensors, std::shared_ptr<const void> plan) {
  using WeakImpl = CachedPlan::WeakImpl;
  plan_cache().insert(key, CachedPlan{{WeakImpl(tensors[0]->getIntrusivePtr()), WeakImpl(tensors[1]->getIntrusivePtr()),
                                       WeakImpl(tensors[2]->getIntrusivePtr())},
                                      std::move(plan)});
}

int64_t bits_of(double v) {
  int64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

}  // namespace

void note_optimizer_step() { optimizer_steps.fetch_add(1, std::memory_order_relaxed); }

Chunks chunks_of(const Geometry& g, const Tuning& tuning) {
  Chunks ch{};
  ch.bt = chunk_batch(g, tuning);
  ch.count = (g.B + ch.bt - 1) / ch.bt;
  ch.last_bt = g.B - (ch.count - 1) * ch.bt;
  return ch;
}

template <typename T>
std::shared_ptr<const Plan<T>> plan_for(const Chunks& ch, const Tensor& crow, const Tensor& col, const Tensor& values,
                                        bool forward, const Geometry& g, const Tuning& tuning, const char* op) {
  const auto build = [&] {
    auto plan = std::make_shared<Plan<T>>();
    const T* v = forward ? values.data_ptr<T>() : nullptr;
    if (crow.scalar_type() == at::kInt)
      make_plan<int32_t, T>(*plan, ch, crow, col, v, g, tuning, op);
    else
      make_plan<int64_t, T>(*plan, ch, crow, col, v, g, tuning, op);
    return plan;
  };
  if (crow.is_inference() || col.is_inference() || values.is_inference()) return build();
  // Whether a plan bakes the values in (column groups) depends on the pattern and
  // settings only: look for a pattern-only plan (col in the values slot), then
  // for one of these values.
  PlanKey key;
  key.ints = {g.B, g.Cin, g.H, g.W, g.Cout, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups, ch.bt,
              ch.last_bt, int64_t(c10::CppTypeToScalarType<T>::value), int64_t(crow.scalar_type()), forward ? 1 : 0,
              int64_t(sizeof(T)), tuning.bt, bits_of(tuning.columns), tuning.l1, tuning.rows, tuning.expand,
              tuning.segtaps};
  key.impl = {crow.unsafeGetTensorImpl(), col.unsafeGetTensorImpl(), col.unsafeGetTensorImpl()};
  key.version = {crow._version(), col._version(), col._version(), 0};
  if (auto hit = find_plan(key)) return std::static_pointer_cast<const Plan<T>>(hit);
  PlanKey with_values = key;
  with_values.impl[2] = values.unsafeGetTensorImpl();
  with_values.version[2] = values._version();
  with_values.version[3] = optimizer_steps.load(std::memory_order_relaxed) + 1;
  if (forward)
    if (auto hit = find_plan(with_values)) return std::static_pointer_cast<const Plan<T>>(hit);
  auto plan = build();
  if (plan->entries.kgroup == 0)
    insert_plan(key, {&crow, &col, &col}, plan);
  else
    insert_plan(with_values, {&crow, &col, &values}, plan);
  return plan;
}

template std::shared_ptr<const Plan<float>> plan_for<float>(const Chunks&, const Tensor&, const Tensor&, const Tensor&,
                                                            bool, const Geometry&, const Tuning&, const char*);
template std::shared_ptr<const Plan<double>> plan_for<double>(const Chunks&, const Tensor&, const Tensor&,
                                                              const Tensor&, bool, const Geometry&, const Tuning&,
                                                              const char*);

}  // namespace sparsemia::cpu::conv
