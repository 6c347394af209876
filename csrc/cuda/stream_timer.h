// Device time of work queued on a CUDA stream, between two events: what the autotuned forward
// (RCM_FSAD_DEFORM_CONV_ALGO=autotune) times its candidate paths with.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

namespace rcm_fsad {

class StreamTimer {
 public:
  StreamTimer() {
    C10_CUDA_CHECK(cudaEventCreate(&start_));
    C10_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~StreamTimer() {
    // No check: a destructor must not throw, and a failed destroy leaks one event at most.
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  StreamTimer(const StreamTimer&) = delete;
  StreamTimer& operator=(const StreamTimer&) = delete;

  // Milliseconds the device spent on what `work` queues on `stream`; waits for it to finish. The work
  // queued before is not counted: the start event completes only after it.
  template <typename Work>
  float milliseconds(cudaStream_t stream, const Work& work) {
    C10_CUDA_CHECK(cudaEventRecord(start_, stream));
    work();
    C10_CUDA_CHECK(cudaEventRecord(stop_, stream));
    C10_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

 private:
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

}  // namespace rcm_fsad
