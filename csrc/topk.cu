// CUDA top-k over the vocabulary for decode (k <= 64), by block radix select on unique 64-bit keys.
//
// Key of element i = (order-preserving bits of float(x_i)) << 32 | ~i: larger key = larger value, and
// among equal values the lower index. NaN maps above +inf and -0 onto +0, as torch.topk orders them.
// Keys are unique, so the k largest are exactly the keys >= the k-th largest one, which a radix
// select finds in at most 8 passes of 8 bits (usually 3-4: it stops once the bucket that holds
// the k-th key is taken whole); no sort of the row is ever done.
//
// A block takes a chunk of kChunk elements of one row (16 keys per thread, in registers) and writes
// its chunk's top-k keys; rows longer than one chunk take a second launch over the B x chunks x k
// partial keys (a third only beyond kChunk^2 / k = 262,144 elements), whose single block per row
// writes the sorted values (re-read from the logits, so the dtype's exact value) and indices.
// Key 0 is below every real key and marks padding.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace args_fast {
namespace {

constexpr int kThreads = 256, kItems = 16, kChunk = kThreads * kItems;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ uint64_t make_key(float x, int64_t i) {
  uint32_t u = isnan(x) ? 0xffffffffu : __float_as_uint(x == 0.f ? 0.f : x);
  if (u != 0xffffffffu) u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (uint64_t(u) << 32) | uint32_t(~uint32_t(i));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
topk_kernel(const T* __restrict__ logits, int64_t row_stride, const uint64_t* __restrict__ in_keys, int64_t n,
            int k, uint64_t* __restrict__ out_keys, float* __restrict__ values, int64_t* __restrict__ indices) {
  __shared__ int hist[256];
  __shared__ uint64_t sel[kTopkMaxK];
  __shared__ int s_valid, s_count, s_digit, s_above, s_bin;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t row = blockIdx.y, base = int64_t(blockIdx.x) * kChunk;

  uint64_t key[kItems];
  int valid = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {  // coalesced: consecutive threads read consecutive elements
    const int64_t i = base + j * kThreads + tid;
    uint64_t x = 0;
    if (i < n) x = in_keys ? in_keys[row * n + i] : make_key(to_float(logits[row * row_stride + i]), i);
    key[j] = x;
    valid += x != 0;
  }
  if (tid == 0) s_valid = 0, s_count = 0;
  __syncthreads();
  if (valid) atomicAdd(&s_valid, valid);
  __syncthreads();
  const int want = min(k, s_valid);

  // Radix select: after each pass the keys matching (prefix, mask) hold the k-th largest key, and
  // `remaining` of them still belong to the top-k (the rest of the top-k have a larger prefix).
  uint64_t prefix = 0, mask = 0;
  int remaining = want;
  for (int shift = 56; shift >= 0 && remaining > 0; shift -= 8) {
    for (int d = tid; d < 256; d += kThreads) hist[d] = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const bool in = key[j] != 0 && (key[j] & mask) == prefix;
      const int digit = in ? int((key[j] >> shift) & 255) : 256;
      const unsigned peers = __match_any_sync(0xffffffffu, digit);  // one shared atomic per distinct digit
      if (in && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
    }
    __syncthreads();
    if (warp == 0) {  // lane l owns digits 255 - 8l ... 248 - 8l, so lanes run from high digits to low
      int c[8], total = 0;
#pragma unroll
      for (int q = 0; q < 8; ++q) total += c[q] = hist[255 - 8 * lane - q];
      int incl = total;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int t = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += t;
      }
      int above = incl - total;  // keys in higher digits
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        if (above < remaining && above + c[q] >= remaining) s_digit = 255 - 8 * lane - q, s_above = above, s_bin = c[q];
        above += c[q];
      }
    }
    __syncthreads();
    remaining -= s_above;
    prefix |= uint64_t(s_digit) << shift;
    mask |= uint64_t(255) << shift;
    const bool whole_bucket = s_bin == remaining;
    __syncthreads();  // everyone has read s_* before the next pass rewrites them
    if (whole_bucket) break;
  }

  // Exactly `want` keys pass: those with a larger prefix plus the whole final bucket.
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    if (key[j] != 0 && (key[j] & mask) >= prefix) {
      const int p = atomicAdd(&s_count, 1);
      if (p < kTopkMaxK) sel[p] = key[j];
    }
  }
  __syncthreads();
  if (tid < want) {  // rank sort of <= 64 unique keys
    const uint64_t mine = sel[tid];
    int rank = 0;
    for (int q = 0; q < want; ++q) rank += sel[q] > mine;
    if (out_keys) {
      out_keys[(row * gridDim.x + blockIdx.x) * k + rank] = mine;
    } else {
      const int64_t idx = uint32_t(~uint32_t(mine));
      values[row * k + rank] = to_float(logits[row * row_stride + idx]);
      indices[row * k + rank] = idx;
    }
  } else if (tid < k && out_keys) {
    out_keys[(row * gridDim.x + blockIdx.x) * k + tid] = 0;  // chunk with fewer than k elements
  }
}

int64_t chunks_of(int64_t n) { return (n + kChunk - 1) / kChunk; }

template <typename T>
const char* run_topk(const T* logits, int64_t batch, int64_t vocab, int64_t row_stride, int k, float* values,
                     int64_t* indices, uint64_t* ws, cudaStream_t stream) {
  uint64_t* buf[2] = {ws, ws + batch * chunks_of(vocab) * k};
  const uint64_t* in = nullptr;
  for (int64_t n = vocab, p = 0;; p ^= 1) {
    const int64_t chunks = chunks_of(n);
    uint64_t* out = chunks == 1 ? nullptr : buf[p];
    topk_kernel<T><<<dim3(unsigned(chunks), unsigned(batch)), kThreads, 0, stream>>>(
        logits, row_stride, in, n, k, out, values, indices);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return cudaGetErrorString(err);
    if (!out) return nullptr;
    in = out;
    n = chunks * k;
  }
}

}  // namespace

size_t topk_workspace_bytes(int64_t batch, int64_t vocab, int k) {
  return chunks_of(vocab) <= 1 ? 0 : size_t(2 * batch * chunks_of(vocab) * k) * sizeof(uint64_t);
}

const char* launch_topk(const void* logits, DType dtype, int64_t batch, int64_t vocab, int64_t row_stride, int k,
                        float* values, int64_t* indices, void* workspace, void* stream_ptr) {
  if (batch == 0) return nullptr;
  auto ws = static_cast<uint64_t*>(workspace);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (dtype) {
    case DType::F32: return run_topk(static_cast<const float*>(logits), batch, vocab, row_stride, k, values, indices, ws, stream);
    case DType::F16: return run_topk(static_cast<const __half*>(logits), batch, vocab, row_stride, k, values, indices, ws, stream);
    case DType::BF16: return run_topk(static_cast<const __nv_bfloat16*>(logits), batch, vocab, row_stride, k, values, indices, ws, stream);
    case DType::F64: return run_topk(static_cast<const double*>(logits), batch, vocab, row_stride, k, values, indices, ws, stream);
  }
  return "launch_topk: unsupported dtype";
}

}  // namespace args_fast
