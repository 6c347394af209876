// The package's extension module: loading it runs the TORCH_LIBRARY registrations, and its
// constants and functions tell rcm_fsad_ops.info() how it was built and what it runs.
#include <Python.h>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <exception>

#include "cpu/cpu_capability.h"
#include "cpu/weight_cache.h"
#include "rcm_fsad_build_config.h"
#ifdef RCM_FSAD_WITH_CUDA
#include "cuda/wgmma_runs.h"
#endif

namespace {

PyObject* cpu_capability(PyObject*, PyObject*) { return PyUnicode_FromString(rcm_fsad::cpu_capability()); }

PyObject* cpu_bfloat16_gemms(PyObject*, PyObject*) { return PyBool_FromLong(rcm_fsad::cpu_bfloat16_gemms()); }

PyObject* cpu_float32_gemms(PyObject*, PyObject*) {
  return PyUnicode_FromString(rcm_fsad::cpu_float32_gemms_in_onednn() ? "onednn" : "blas");
}

// The CPU forward's weight cache (cpu/weight_cache.h): its counters as a dict.
PyObject* cpu_weight_cache(PyObject*, PyObject*) {
  const rcm_fsad::cpu::ForwardWeightCacheStats stats = rcm_fsad::cpu::forward_weight_cache_stats();
  return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L}", "entries", static_cast<long long>(stats.entries), "bytes",
                       static_cast<long long>(stats.bytes), "hits", static_cast<long long>(stats.hits), "builds",
                       static_cast<long long>(stats.builds), "capacity", static_cast<long long>(stats.capacity));
}

PyObject* clear_cpu_weight_cache(PyObject*, PyObject*) {
  rcm_fsad::cpu::clear_forward_weight_cache();
  Py_RETURN_NONE;
}

// rcm_fsad::wgmma_kernel_runs() for the current CUDA device (False in a build without CUDA); its errors
// as RuntimeError.
PyObject* wgmma_runs(PyObject*, PyObject*) {
#ifdef RCM_FSAD_WITH_CUDA
  try {
    return PyBool_FromLong(rcm_fsad::wgmma_kernel_runs());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS, "The CPU build of the hot loops that runs: avx2+fma or default."},
    {"cpu_bfloat16_gemms", cpu_bfloat16_gemms, METH_NOARGS,
     "Whether a bfloat16 forward's GEMMs run in bfloat16 on this CPU now (AVX512-BF16, oneDNN on)."},
    {"cpu_float32_gemms", cpu_float32_gemms, METH_NOARGS,
     "What runs float32 GEMMs with the weight on the CPU now: onednn (oneDNN on) or blas."},
    {"cpu_weight_cache", cpu_weight_cache, METH_NOARGS,
     "The CPU forward's weight cache: entries, bytes, hits, builds and capacity (RCM_FSAD_CPU_WEIGHT_CACHE_BYTES)."},
    {"clear_cpu_weight_cache", clear_cpu_weight_cache, METH_NOARGS,
     "Drops the CPU forward's cached weight operands and zeroes the cache's counters."},
    {"wgmma_runs", wgmma_runs, METH_NOARGS,
     "Whether implicit_gemm_wgmma takes the wgmma kernel on the current CUDA device (needs one)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rcm_fsad_ops compiled operators",
                                   -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef RCM_FSAD_WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
  // Whether at::parallel_for runs on torch's intra-op threads in this library's files (built with
  // OpenMP), or serially.
#ifdef INTRA_OP_PARALLEL
  const int intra_op_parallel = 1;
#else
  const int intra_op_parallel = 0;
#endif
  if (PyModule_AddIntConstant(module, "built_with_cuda", with_cuda) < 0 ||
      PyModule_AddIntConstant(module, "intra_op_parallel", intra_op_parallel) < 0 ||
      PyModule_AddStringConstant(module, "cuda_arch_list", RCM_FSAD_CUDA_ARCHS) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
