# ctest helper: every __global__ kernel declared in csrc/kernels/*.cuh must be launched by the
# CPU-emulation tests (named as kernels::<name>< in test_deform_kernels.cpp), so that a new kernel
# cannot land untested.
#   cmake -DKERNELS_DIR=<csrc/kernels> -DTEST_SOURCE=<test_deform_kernels.cpp> -P check_coverage.cmake
file(GLOB headers "${KERNELS_DIR}/*.cuh")
file(READ "${TEST_SOURCE}" tests)
set(found 0)
set(missing "")
foreach(header IN LISTS headers)
  file(READ "${header}" text)
  # __global__ void [__launch_bounds__(...)] name(
  string(REGEX MATCHALL "__global__[ \t\r\n]+void[ \t\r\n]+(__launch_bounds__[ \t]*\\([^)]*\\)[ \t\r\n]*)?[A-Za-z_][A-Za-z0-9_]*[ \t\r\n]*\\("
         declarations "${text}")
  foreach(declaration IN LISTS declarations)
    string(REGEX REPLACE ".*[ \t\r\n\\)]([A-Za-z_][A-Za-z0-9_]*)[ \t\r\n]*\\($" "\\1" name "${declaration}")
    math(EXPR found "${found} + 1")
    get_filename_component(file "${header}" NAME)
    string(FIND "${tests}" "kernels::${name}<" at)
    if(at EQUAL -1)
      list(APPEND missing "${name} (${file})")
    else()
      message(STATUS "tested: ${name} (${file})")
    endif()
  endforeach()
endforeach()
if(found EQUAL 0)
  message(FATAL_ERROR "no __global__ kernel found under ${KERNELS_DIR}")
endif()
if(missing)
  string(REPLACE ";" ", " missing "${missing}")
  message(FATAL_ERROR "__global__ kernels without a CPU-emulation test in test_deform_kernels.cpp: ${missing}")
endif()
