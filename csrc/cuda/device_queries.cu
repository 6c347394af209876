// The device probes of device_queries.h and wgmma_runs.h.
#include "device_queries.h"

#include <cstdlib>
#include <cstring>

#include "wgmma_runs.h"

namespace rcm_fsad {
namespace {

// Never launched: its static shared memory says which code the device loaded, the fat binary's
// choice, the same for the wgmma kernel in deform_conv2d_forward_cuda.cu (every CUDA source of the
// extension is built for the same architectures). 16 bytes in the code compiled for sm_90a, where the
// wgmma kernel has its body; none in any other. (Read with cudaFuncGetAttributes, which a stream being
// captured into a CUDA graph allows, unlike a copy from a symbol.)
__global__ void wgmma_code_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ int marker[4];
  marker[threadIdx.x % 4] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = marker[(threadIdx.x + 1) % 4];
#else
  out[threadIdx.x] = 0;
#endif
}

// Whether the code the current device runs has the wgmma kernel's body (built for sm_90a, which only
// compute capability 9.0 runs). False, without asking, on any other device, where the build may have no
// code at all (a 9.0a-only build on an sm_80 card: the query would fail).
bool wgmma_code_loaded() {
  static QueryCache<c10::DeviceIndex, bool> cache;
  return cache.get(c10::cuda::current_device(), [] {
    const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
    if (properties->major != 9 || properties->minor != 0) return false;
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, wgmma_code_probe_kernel));
    return attributes.sharedSizeBytes > 0;
  });
}

// RCM_FSAD_DISABLE_WGMMA=1 keeps the wgmma kernel from running (implicit_gemm_wgmma then takes the
// default path): a switch for a device or driver where it misbehaves, read at each call. Unset, empty
// or 0: it runs where its code is loaded.
bool wgmma_disabled() {
  const char* text = std::getenv("RCM_FSAD_DISABLE_WGMMA");
  if (text == nullptr || *text == '\0' || std::strcmp(text, "0") == 0) return false;
  TORCH_CHECK(std::strcmp(text, "1") == 0, "RCM_FSAD_DISABLE_WGMMA must be 0 or 1, got '", text, "'");
  return true;
}

}  // namespace

void check_build_runs_on_device() {
  static QueryCache<c10::DeviceIndex, cudaError_t> cache;
  const cudaError_t status = cache.get(c10::cuda::current_device(), [] {
    cudaFuncAttributes attributes{};
    const cudaError_t error = cudaFuncGetAttributes(&attributes, wgmma_code_probe_kernel);
    switch (error) {
      case cudaSuccess:
        return error;
      case cudaErrorNoKernelImageForDevice:
      case cudaErrorInvalidDeviceFunction:
      case cudaErrorUnsupportedPtxVersion:
        (void)cudaGetLastError();  // not sticky: cleared, so that no later check reports it
        return error;
      default:
        C10_CUDA_CHECK(error);
        return error;
    }
  });
  if (status == cudaSuccess) return;
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(status != cudaErrorUnsupportedPtxVersion, "deform_conv2d: this build of rcm_fsad_ops runs on ",
              properties->name, " only from PTX newer than its driver takes (", cudaGetErrorString(status),
              "). Update the driver, or rebuild where this GPU is visible (README: Building).");
  TORCH_CHECK(false, "deform_conv2d: this build of rcm_fsad_ops has no CUDA code that ", properties->name,
              " (compute capability ", properties->major, ".", properties->minor,
              ") can run. Rebuild it where this GPU is visible, or with TORCH_CUDA_ARCH_LIST=\"",
              properties->major, ".", properties->minor,
              "\" (README: Building); `python -m rcm_fsad_ops info` lists the architectures it was built for.");
}

bool wgmma_kernel_runs() { return !wgmma_disabled() && wgmma_code_loaded(); }

}  // namespace rcm_fsad
