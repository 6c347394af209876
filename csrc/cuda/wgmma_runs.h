// Whether the CUDA backend's wgmma forward kernel runs here (defined in device_queries.cu): for the
// forward's launcher (deform_conv2d_forward_cuda.cu) and rcm_fsad_ops.info() (csrc/python_module.cpp).
#pragma once

namespace rcm_fsad {

// Whether RCM_FSAD_DEFORM_CONV_ALGO=implicit_gemm_wgmma takes the wgmma kernel on the current CUDA
// device, where the mma.sync kernel applies: the device loaded the build's sm_90a code (compute
// capability 9.0 with a build for 9.0a), and RCM_FSAD_DISABLE_WGMMA is not 1. Needs a CUDA device;
// a value of RCM_FSAD_DISABLE_WGMMA other than 0, 1 or empty is an error naming it.
bool wgmma_kernel_runs();

}  // namespace rcm_fsad
