// Questions the CUDA launchers ask of the device and of the code the build gave it, each asked once
// per process and key.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <map>
#include <mutex>
#include <optional>
#include <tuple>

namespace rcm_fsad {

// Answers of driver queries, each asked once per process and key: the calls take microseconds, a share
// of a small forward's time. (Also the autotuned forward's choices, each timed once, outside the lock.)
template <typename Key, typename Value>
class QueryCache {
 public:
  template <typename Query>
  Value get(const Key& key, const Query& query) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (const auto it = known_.find(key); it != known_.end()) return it->second;
    return known_.emplace(key, query()).first->second;
  }

  // The answer for key if it was asked, without asking.
  std::optional<Value> find(const Key& key) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = known_.find(key);
    return it == known_.end() ? std::nullopt : std::optional<Value>(it->second);
  }

  // Keeps value as the answer for key, unless one is kept already (another thread's): returns the kept one.
  Value remember(const Key& key, const Value& value) {
    const std::lock_guard<std::mutex> lock(mutex_);
    return known_.emplace(key, value).first->second;
  }

 private:
  std::mutex mutex_;
  std::map<Key, Value> known_;
};

// A clear error where the build has no code the current device runs: a build made where no GPU is
// visible is for Hopper only (sm_90a), and on another GPU every launch would fail with CUDA's bare "no
// kernel image" error; likewise where the build's code is PTX newer than the driver. One kernel answers
// for all, the smallest (device_queries.cu's probe): every CUDA source of the extension is built for the
// same architectures. An error of another kind is raised as it is, and not remembered.
void check_build_runs_on_device();

// How many blocks of `threads` threads and `shared_bytes` of dynamic shared memory of `kernel` one
// SM of the current device holds, after the kernel's opt-in to more than 48 KB of shared memory
// where it needs it; asked once per (kernel, device, size).
template <typename Kernel>
int resident_blocks_per_sm(Kernel kernel, int threads, size_t shared_bytes) {
  using Key = std::tuple<const void*, c10::DeviceIndex, int, size_t>;
  static QueryCache<Key, int> cache;
  const Key key{reinterpret_cast<const void*>(kernel), c10::cuda::current_device(), threads, shared_bytes};
  return cache.get(key, [&] {
    if (shared_bytes > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
    }
    int blocks_per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, shared_bytes));
    return blocks_per_sm;
  });
}

}  // namespace rcm_fsad
