// The package's extension module. It carries no functions: loading it runs the TORCH_LIBRARY
// registrations, and its constants tell rcm_fsad_ops.info() how it was built.
#include <Python.h>

#include <ATen/Parallel.h>

#include "rcm_fsad_build_config.h"

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rcm_fsad_ops compiled operators",
                                   -1, nullptr};
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
