// A kernel no test launches: check_coverage.cmake must fail on this directory.
__global__ void untested_kernel(float* out) { out[0] = 1.0f; }
