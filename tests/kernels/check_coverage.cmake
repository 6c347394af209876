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
  string(REGEX REPLACE "//[^\n]*" "" text "${text}")  # comments may name __global__
  # __global__ void [__launch_bounds__(...)] name(
  string(REGEX MATCHALL "__global__[ \t\r\n]+void[ \t\r\n]+(__launch_bounds__[ \t]*\\([^)]*\\)[ \t\r\n]*)?[A-Za-z_][A-Za-z0-9_]*[ \t\r\n]*\\("
         declarations "${text}")
  # A kernel declared in a form the pattern above does not read must fail, not go unchecked.
  string(REGEX MATCHALL "__global__" keywords "${text}")
  list(LENGTH keywords keyword_count)
  list(LENGTH declarations declaration_count)
  if(NOT keyword_count EQUAL declaration_count)
    get_filename_component(file "${header}" NAME)
    message(FATAL_ERROR "${file}: ${keyword_count} __global__ keywords but ${declaration_count} declarations of the "
                        "form `__global__ void [__launch_bounds__(...)] name(`; write the kernel in that form")
  endif()
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
