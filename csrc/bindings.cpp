// pybind11 module args_fast._C: validates every argument (errors name it), then runs the CPU loop or
// the CUDA launchers of kernels.h on the current stream. Python registers these as torch custom ops
// (args_fast/compiled.py).
#include <torch/extension.h>

#include <cmath>

#include "kernels.h"
#include "ops.h"

#ifdef ARGS_FAST_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace args_fast {
namespace {

using at::Tensor;

std::string shape_str(const Tensor& t) { return c10::str(t.sizes()); }

void check_float(const Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.is_floating_point(), name, " must be a floating point tensor, got ", t.scalar_type());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef want, const char* want_str) {
  TORCH_CHECK_VALUE(t.sizes() == want, name, " must have shape ", want_str, " = ", want, ", got ", shape_str(t));
}

void check_device(const Tensor& t, const char* name, const Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on ", ref.device(), " like top_logits, got ",
                    t.device());
}

DType dtype_of(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kDouble: return DType::F64;
    default: TORCH_CHECK_TYPE(false, name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  }
}

#ifdef ARGS_FAST_WITH_CUDA
FloatMatrix matrix(const Tensor& t, const char* name) { return {t.data_ptr(), dtype_of(t, name), t.stride(0), t.stride(1)}; }

CacheView cache_view(const Tensor& t) {
  CacheView c{t.data_ptr(), {}, {}, int(t.element_size())};
  for (int d = 0; d < 5; ++d) c.shape[d] = t.size(d), c.stride[d] = t.stride(d);
  return c;
}
#endif

std::tuple<Tensor, Tensor, Tensor> select_commit(
    const Tensor& top_logits, const Tensor& top_ids, const Tensor& rewards, const std::optional<Tensor>& uniforms,
    double w, double temperature, const Tensor& finished, const std::optional<Tensor>& eos_ids, int64_t pad_id,
    const Tensor& k_cache, const Tensor& v_cache, const Tensor& prefix_end) {
  TORCH_CHECK_VALUE(top_logits.dim() == 2 && top_logits.size(1) >= 1,
                    "top_logits must have shape (B, k) with k >= 1, got ", shape_str(top_logits));
  const int64_t B = top_logits.size(0), k = top_logits.size(1);
  check_float(top_logits, "top_logits");
  dtype_of(top_logits, "top_logits");
  check_shape(top_ids, "top_ids", {B, k}, "(B, k)");
  TORCH_CHECK_TYPE(top_ids.scalar_type() == at::kLong, "top_ids must be int64, got ", top_ids.scalar_type());
  check_shape(rewards, "rewards", {B, k}, "(B, k)");
  dtype_of(rewards, "rewards");
  if (uniforms) {
    check_shape(*uniforms, "uniforms", {B, k}, "(B, k)");
    dtype_of(*uniforms, "uniforms");
    TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0,
                      "temperature must be a finite number > 0 when uniforms are given, got ", temperature);
  }
  TORCH_CHECK_VALUE(std::isfinite(w), "w must be finite, got ", w);
  check_shape(finished, "finished", {B}, "(B,)");
  TORCH_CHECK_TYPE(finished.scalar_type() == at::kBool, "finished must be bool, got ", finished.scalar_type());
  if (eos_ids) {
    TORCH_CHECK_VALUE(eos_ids->dim() == 1, "eos_ids must be 1-D, got ", shape_str(*eos_ids));
    TORCH_CHECK_TYPE(eos_ids->scalar_type() == at::kLong, "eos_ids must be int64, got ", eos_ids->scalar_type());
  }
  check_shape(prefix_end, "prefix_end", {B}, "(B,)");
  TORCH_CHECK_TYPE(prefix_end.scalar_type() == at::kLong, "prefix_end must be int64, got ", prefix_end.scalar_type());
  for (auto [t, name] : {std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"}}) {
    TORCH_CHECK_VALUE(t->dim() == 5 && t->size(1) == B,
                      name, " must have shape (layers, B, H_kv, S, D) with B = ", B, ", got ", shape_str(*t));
    check_float(*t, name);
    TORCH_CHECK_VALUE(t->stride(4) == 1 || t->size(4) == 1, name,
                      " must be contiguous in its last (head) dim; got strides ", t->strides());
    check_device(*t, name, top_logits);
  }
  TORCH_CHECK_VALUE(k_cache.sizes().slice(0, 4) == v_cache.sizes().slice(0, 4),
                    "k_cache and v_cache must agree in (layers, B, H_kv, S), got ", shape_str(k_cache), " and ",
                    shape_str(v_cache));
  const int64_t S = k_cache.size(3);
  TORCH_CHECK_VALUE(S >= k, "k_cache has S = ", S, " slots, fewer than the k = ", k, " candidates");
  check_device(top_ids, "top_ids", top_logits);
  check_device(rewards, "rewards", top_logits);
  if (uniforms) check_device(*uniforms, "uniforms", top_logits);
  check_device(finished, "finished", top_logits);
  if (eos_ids) check_device(*eos_ids, "eos_ids", top_logits);
  check_device(prefix_end, "prefix_end", top_logits);

  if (top_logits.is_cpu()) {
    // The host sees prefix_end: check the candidate slots [prefix_end, prefix_end + k) exist before any write.
    const auto pe = prefix_end.accessor<int64_t, 1>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK_VALUE(pe[b] >= 0 && pe[b] + k <= S, "prefix_end[", b, "] = ", pe[b], " must be in [0, S - k] = [0, ",
                        S - k, "] (the k candidate slots start there)");
    return select_commit_cpu(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id,
                             k_cache, v_cache, prefix_end);
  }
#ifdef ARGS_FAST_WITH_CUDA
  TORCH_CHECK_VALUE(top_logits.is_cuda(), "top_logits must be on CPU or CUDA, got ", top_logits.device());
  // On the GPU an out-of-range prefix_end is caught by the kernel (device trap), not here: no host sync.
  const c10::cuda::CUDAGuard guard(top_logits.device());
  Tensor choice = at::empty({B}, top_ids.options()), token = at::empty({B}, top_ids.options());
  Tensor reward = at::empty({B}, top_logits.options().dtype(at::kFloat));
  SelectCommitArgs a{};
  a.logits = matrix(top_logits, "top_logits");
  a.rewards = matrix(rewards, "rewards");
  a.uniforms = uniforms ? matrix(*uniforms, "uniforms") : FloatMatrix{nullptr, DType::F32, 0, 0};
  a.top_ids = top_ids.const_data_ptr<int64_t>(), a.ids_s0 = top_ids.stride(0), a.ids_s1 = top_ids.stride(1);
  if (eos_ids) a.eos_ids = eos_ids->const_data_ptr<int64_t>(), a.n_eos = eos_ids->size(0), a.eos_s0 = eos_ids->stride(0);
  a.finished = finished.data_ptr<bool>(), a.finished_s0 = finished.stride(0);
  a.prefix_end = prefix_end.data_ptr<int64_t>(), a.prefix_s0 = prefix_end.stride(0);
  a.choice = choice.data_ptr<int64_t>(), a.token = token.data_ptr<int64_t>(), a.reward = reward.data_ptr<float>();
  a.batch = B, a.k = k, a.pad_id = pad_id, a.w = float(w), a.temperature = float(temperature);
  const char* err = launch_select_commit(a, cache_view(k_cache), cache_view(v_cache),
                                         c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "select_commit CUDA launch failed: ", err);
  return {choice, token, reward};
#else
  TORCH_CHECK(false, "args_fast._C was built without CUDA; top_logits is on ", top_logits.device());
#endif
}

std::tuple<Tensor, Tensor> topk_logits(const Tensor& logits, int64_t k) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits must have shape (B, V), got ", shape_str(logits));
  dtype_of(logits, "logits");
  [[maybe_unused]] const int64_t B = logits.size(0);
  const int64_t V = logits.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= std::min<int64_t>(kTopkMaxK, V), "k must be in [1, min(", kTopkMaxK,
                    ", V)] = [1, ", std::min<int64_t>(kTopkMaxK, V), "], got ", k);
  TORCH_CHECK_VALUE(V < (int64_t(1) << 31), "logits has V = ", V, " columns; at most 2^31 - 1 are supported");
  if (logits.is_cpu()) return topk_logits_cpu(logits, k);
#ifdef ARGS_FAST_WITH_CUDA
  TORCH_CHECK_VALUE(logits.is_cuda(), "logits must be on CPU or CUDA, got ", logits.device());
  TORCH_CHECK_VALUE(B <= 65535, "logits has B = ", B, " rows; the CUDA top-k supports at most 65535");
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor x = logits.stride(1) == 1 ? logits : logits.contiguous();  // rows read with unit stride
  Tensor values = at::empty({B, k}, x.options().dtype(at::kFloat));
  Tensor indices = at::empty({B, k}, x.options().dtype(at::kLong));
  Tensor ws = at::empty({int64_t(topk_workspace_bytes(B, V, int(k)))}, x.options().dtype(at::kByte));
  const char* err = launch_topk(x.const_data_ptr(), dtype_of(x, "logits"), B, V, x.stride(0), int(k),
                                values.data_ptr<float>(), indices.data_ptr<int64_t>(), ws.data_ptr(),
                                c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "topk_logits CUDA launch failed: ", err);
  return {values, indices};
#else
  TORCH_CHECK(false, "args_fast._C was built without CUDA; logits is on ", logits.device());
#endif
}

}  // namespace
}  // namespace args_fast

PYBIND11_MODULE(_C, m) {
  m.doc() = "args_fast compiled ops (csrc/): select_commit and topk_logits, CPU and optionally CUDA";
#ifdef ARGS_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("topk_max_k") = args_fast::kTopkMaxK;
  m.def("select_commit", &args_fast::select_commit, "select one of k candidates per row and commit its K/V");
  m.def("topk_logits", &args_fast::topk_logits, "top-k (k <= 64) of (B, V) logits: fp32 values, int64 indices");
}
