// CUDA select_commit: pick one of the k candidates per row and commit its K/V, in two launches.
//
// 1. select_kernel (one warp per row): score = logit + w * reward (fp32), greedy argmax or Gumbel-max
//    on the passed uniforms, token / reward / finished, then prefix_end += 1.
// 2. commit_kernel (grid-stride over layers x B x H_kv x D, both caches): copy slot
//    prefix_end - 1 + choice to slot prefix_end - 1, i.e. the winner into the row's next prefix slot.
// Stream order is the only synchronisation: no host sync, so the pair is CUDA-graph capturable.
// Arithmetic mirrors torch's CUDA kernels for args_fast.ops.select_candidates op by op (round-to-
// nearest intrinsics stop nvcc from fusing them into FMAs; division by T is a multiply by 1/T as
// torch does for a scalar divisor), so choices agree with the reference bit for bit up to logf.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdio>

#include "kernels.h"

namespace args_fast {
namespace {

__device__ __forceinline__ float load_float(const FloatMatrix& m, int64_t r, int64_t c) {
  const int64_t off = r * m.s0 + c * m.s1;
  switch (m.dtype) {
    case DType::F32: return static_cast<const float*>(m.data)[off];
    case DType::F16: return __half2float(static_cast<const __half*>(m.data)[off]);
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(m.data)[off]);
    default: return static_cast<float>(static_cast<const double*>(m.data)[off]);
  }
}

// torch.argmax order: NaN beats everything, then larger score, then lower index; j < 0 is "empty".
__device__ __forceinline__ bool better(float sa, int ja, float sb, int jb) {
  if (jb < 0) return ja >= 0;
  if (ja < 0) return false;
  const bool na = isnan(sa), nb = isnan(sb);
  if (na || nb) return na && (!nb || ja < jb);
  return sa > sb || (sa == sb && ja < jb);
}

constexpr int kRowsPerBlock = 4;

__global__ void select_kernel(SelectCommitArgs a, float inv_temperature, int64_t slots) {
  const int lane = threadIdx.x & 31;
  const int64_t b = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (b >= a.batch) return;  // whole warp leaves together
  const bool sample = a.uniforms.data != nullptr;
  float best_s = 0.f;
  int best_j = -1;
  for (int j = lane; j < a.k; j += 32) {
    float s = __fadd_rn(load_float(a.logits, b, j), __fmul_rn(a.w, load_float(a.rewards, b, j)));
    if (sample) {
      float u = load_float(a.uniforms, b, j);
      u = u < FLT_MIN ? FLT_MIN : (u > 1.0f - FLT_EPSILON ? 1.0f - FLT_EPSILON : u);  // NaN passes, as clamp
      s = __fsub_rn(__fmul_rn(s, inv_temperature), logf(-logf(u)));
    }
    if (better(s, j, best_s, best_j)) best_s = s, best_j = j;
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float s = __shfl_xor_sync(0xffffffffu, best_s, off);
    const int j = __shfl_xor_sync(0xffffffffu, best_j, off);
    if (better(s, j, best_s, best_j)) best_s = s, best_j = j;
  }
  if (lane != 0) return;
  const int64_t end = a.prefix_end[b * a.prefix_s0];
  if (end < 0 || end + a.k > slots) {  // candidates would lie outside the cache: fail loudly, never clamp
    printf("args_fast select_commit: prefix_end[%lld]=%lld outside [0, S-k] (S=%lld, k=%lld)\n",
           (long long)b, (long long)end, (long long)slots, (long long)a.k);
    __trap();
  }
  const bool done = a.finished[b * a.finished_s0];
  const int64_t token = done ? a.pad_id : a.top_ids[b * a.ids_s0 + best_j * a.ids_s1];
  bool eos = false;
  for (int64_t e = 0; e < a.n_eos; ++e) eos |= token == a.eos_ids[e * a.eos_s0];
  a.choice[b] = best_j;
  a.token[b] = token;
  a.reward[b] = done ? __int_as_float(0x7fc00000) : load_float(a.rewards, b, best_j);
  a.finished[b * a.finished_s0] = done || eos;
  a.prefix_end[b * a.prefix_s0] = end + 1;
}

// Copies rows of D elements as VT words; caches chosen by blockIdx.y (0: keys, 1: values).
template <typename VT>
__global__ void commit_kernel(CacheView kc, CacheView vc, const int64_t* prefix_end, int64_t prefix_s0,
                              const int64_t* choice) {
  const CacheView c = blockIdx.y == 0 ? kc : vc;
  const int64_t L = c.shape[0], B = c.shape[1], H = c.shape[2];
  const int64_t words = c.shape[4] * c.elem_size / int64_t(sizeof(VT));
  const int64_t total = L * B * H * words;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t word = i % words;
    int64_t r = i / words;
    const int64_t h = r % H;
    r /= H;
    const int64_t b = r % B, l = r / B;
    const int64_t dst = prefix_end[b * prefix_s0] - 1;  // select_kernel already advanced it
    const int64_t src = dst + choice[b];
    if (src == dst) continue;
    char* row = static_cast<char*>(c.data) + (l * c.stride[0] + b * c.stride[1] + h * c.stride[2]) * c.elem_size;
    reinterpret_cast<VT*>(row + dst * c.stride[3] * c.elem_size)[word] =
        reinterpret_cast<const VT*>(row + src * c.stride[3] * c.elem_size)[word];
  }
}

// Widest word (16, 8, 4, 2, 1 bytes) that divides the row, every outer stride and the base address.
int word_bytes(const CacheView& c) {
  for (int w = 16; w > 1; w >>= 1) {
    bool ok = (c.shape[4] * c.elem_size) % w == 0 && reinterpret_cast<uintptr_t>(c.data) % w == 0;
    for (int d = 0; d < 4; ++d) ok = ok && (c.stride[d] * c.elem_size) % w == 0;
    if (ok) return w;
  }
  return 1;
}

template <typename VT>
void launch_commit(const CacheView& k, const CacheView& v, const SelectCommitArgs& a, cudaStream_t stream) {
  const int64_t rows = k.shape[0] * k.shape[1] * k.shape[2];
  const int64_t words = std::max(k.shape[4] * k.elem_size, v.shape[4] * v.elem_size) / int64_t(sizeof(VT));
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((rows * words + threads - 1) / threads, 8192);
  commit_kernel<VT><<<dim3(unsigned(std::max<int64_t>(blocks, 1)), 2), threads, 0, stream>>>(
      k, v, a.prefix_end, a.prefix_s0, a.choice);
}

}  // namespace

const char* launch_select_commit(const SelectCommitArgs& a, const CacheView& k_cache, const CacheView& v_cache,
                                 void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (a.batch == 0) return nullptr;
  const unsigned blocks = unsigned((a.batch + kRowsPerBlock - 1) / kRowsPerBlock);
  select_kernel<<<blocks, 32 * kRowsPerBlock, 0, stream>>>(a, 1.0f / a.temperature, k_cache.shape[3]);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return cudaGetErrorString(err);
  switch (std::min(word_bytes(k_cache), word_bytes(v_cache))) {
    case 16: launch_commit<uint4>(k_cache, v_cache, a, stream); break;
    case 8: launch_commit<uint2>(k_cache, v_cache, a, stream); break;
    case 4: launch_commit<uint32_t>(k_cache, v_cache, a, stream); break;
    case 2: launch_commit<uint16_t>(k_cache, v_cache, a, stream); break;
    default: launch_commit<uint8_t>(k_cache, v_cache, a, stream); break;
  }
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace args_fast
