// CPU implementations: plain loops, the same definitions as the CUDA kernels.
// Built with -ffp-contract=off so score = logit + w * reward rounds like torch's separate ops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "ops.h"

namespace args_fast {

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_commit_cpu(
    const at::Tensor& top_logits, const at::Tensor& top_ids, const at::Tensor& rewards,
    const std::optional<at::Tensor>& uniforms, double w, double temperature, const at::Tensor& finished,
    const std::optional<at::Tensor>& eos_ids, int64_t pad_id, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& prefix_end) {
  const int64_t B = top_logits.size(0), k = top_logits.size(1);
  // .float() exactly as the reference: scores are fp32 whatever the input dtype.
  const at::Tensor logits_f = top_logits.to(at::kFloat), rewards_f = rewards.to(at::kFloat);
  const auto lg = logits_f.accessor<float, 2>(), rw = rewards_f.accessor<float, 2>();
  const auto ids = top_ids.accessor<int64_t, 2>();
  auto fin = finished.accessor<bool, 1>();
  auto pe = prefix_end.accessor<int64_t, 1>();
  const at::Tensor u_f = uniforms ? uniforms->to(at::kFloat) : at::empty({B, k}, logits_f.options());
  const auto uf = u_f.accessor<float, 2>();
  at::Tensor eos = eos_ids ? *eos_ids : at::empty({0}, top_ids.options());
  const auto eo = eos.accessor<int64_t, 1>();

  at::Tensor choice = at::empty({B}, top_ids.options()), token = at::empty({B}, top_ids.options());
  at::Tensor reward = at::empty({B}, top_logits.options().dtype(at::kFloat));
  auto ch = choice.accessor<int64_t, 1>(), tk = token.accessor<int64_t, 1>();
  auto rr = reward.accessor<float, 1>();
  const float wf = float(w), tf = float(temperature);
  const float u_lo = FLT_MIN, u_hi = 1.0f - FLT_EPSILON;
  for (int64_t b = 0; b < B; ++b) {
    float best_s = 0.f;
    int64_t best_j = -1;
    for (int64_t j = 0; j < k; ++j) {
      float s = lg[b][j] + wf * rw[b][j];
      if (uniforms) {
        float u = uf[b][j];
        u = u < u_lo ? u_lo : (u > u_hi ? u_hi : u);  // NaN passes through, as torch.clamp
        s = s / tf - std::log(-std::log(u));
      }
      if (best_j < 0 || argmax_better(s, j, best_s, best_j)) best_s = s, best_j = j;
    }
    const bool done = fin[b];
    tk[b] = done ? pad_id : ids[b][best_j];
    rr[b] = done ? std::numeric_limits<float>::quiet_NaN() : rw[b][best_j];
    bool is_eos = false;
    for (int64_t e = 0; e < eos.size(0); ++e) is_eos |= tk[b] == eo[e];
    fin[b] = done || is_eos;
    ch[b] = best_j;
  }

  // Commit: for every layer and head, slot prefix_end + choice -> slot prefix_end (rows of D elements).
  for (const at::Tensor* cache : {&k_cache, &v_cache}) {
    const int64_t es = cache->element_size(), row_bytes = cache->size(4) * es;
    char* base = static_cast<char*>(cache->data_ptr());
    at::parallel_for(0, cache->size(0) * cache->size(2), 16, [&](int64_t lo, int64_t hi) {
      for (int64_t lh = lo; lh < hi; ++lh) {
        const int64_t l = lh / cache->size(2), h = lh % cache->size(2);
        for (int64_t b = 0; b < B; ++b) {
          if (ch[b] == 0) continue;
          char* head = base + (l * cache->stride(0) + b * cache->stride(1) + h * cache->stride(2)) * es;
          std::memcpy(head + pe[b] * cache->stride(3) * es, head + (pe[b] + ch[b]) * cache->stride(3) * es, row_bytes);
        }
      }
    });
  }
  for (int64_t b = 0; b < B; ++b) pe[b] += 1;
  return {choice, token, reward};
}

namespace {
template <typename T>
void topk_rows(const T* x, int64_t B, int64_t V, int64_t s0, int64_t s1, int64_t k, float* values, int64_t* indices) {
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    std::vector<uint64_t> heap;  // min-heap of the k largest keys seen so far
    heap.reserve(k);
    for (int64_t b = lo; b < hi; ++b) {
      heap.clear();
      const T* row = x + b * s0;
      float kept_min = 0.f;  // value of the smallest kept key once the heap is full
      for (int64_t i = 0; i < V; ++i) {
        const float x = static_cast<float>(row[i * s1]);
        // Scanning in index order, an equal value can never displace the kept one (lower index wins), so
        // most elements are rejected by one float compare; !(x <= kept_min) lets NaN through, as it must.
        if (int64_t(heap.size()) == k && x <= kept_min) continue;
        const uint64_t key = topk_key(x, i);
        if (int64_t(heap.size()) < k) {
          heap.push_back(key);
          std::push_heap(heap.begin(), heap.end(), std::greater<>());
        } else if (key > heap.front()) {
          std::pop_heap(heap.begin(), heap.end(), std::greater<>());
          heap.back() = key;
          std::push_heap(heap.begin(), heap.end(), std::greater<>());
        } else {
          continue;
        }
        if (int64_t(heap.size()) == k) kept_min = static_cast<float>(row[int64_t(uint32_t(~uint32_t(heap.front()))) * s1]);
      }
      std::sort(heap.begin(), heap.end(), std::greater<>());
      for (int64_t r = 0; r < k; ++r) {
        const int64_t idx = uint32_t(~uint32_t(heap[r]));
        values[b * k + r] = static_cast<float>(row[idx * s1]);
        indices[b * k + r] = idx;
      }
    }
  });
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_logits_cpu(const at::Tensor& logits, int64_t k) {
  const int64_t B = logits.size(0), V = logits.size(1);
  at::Tensor values = at::empty({B, k}, logits.options().dtype(at::kFloat));
  at::Tensor indices = at::empty({B, k}, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "topk_logits_cpu", [&] {
    topk_rows(logits.const_data_ptr<scalar_t>(), B, V, logits.stride(0), logits.stride(1), k,
              values.data_ptr<float>(), indices.data_ptr<int64_t>());
  });
  return {values, indices};
}

}  // namespace args_fast
