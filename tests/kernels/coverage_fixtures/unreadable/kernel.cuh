// A kernel declared in a form check_coverage.cmake does not read: it must fail, not skip it.
__global__ static void unreadable_kernel(float* out) { out[0] = 1.0f; }
