// Batched transpose through shared memory, for the layout conversions around the CUDA kernels (NCHW
// input and grad_output to the NHWC they read; NHWC output and input gradient back to NCHW). PyTorch's
// permuted copy makes one side of each access strided: on an H200 its three conversions took 0.32 of
// the 1.06 ms of the bf16 N32 C256 56x56 forward (session 12's profile), about 640 GB/s.
// Torch-free: launched by csrc/cuda/layout_cuda.cu and by the CPU emulation harness.
#pragma once

#include "common.cuh"

namespace rcm_fsad {
namespace kernels {

// A block moves kTile x kTile tiles: kThreadRows rows of 32 threads, each thread kTile / kThreadRows
// elements, reading along a row of the source and writing along a row of the destination, so that
// both sides are coalesced.
struct TransposeTiles {
  static constexpr int kTile = 32;
  static constexpr int kThreadRows = 8;
  static constexpr int kThreads = kTile * kThreadRows;
};

// One tile in flight; the extra column puts a tile column's elements in different banks.
template <typename T>
struct TransposeShared {
  T tile[TransposeTiles::kTile][TransposeTiles::kTile + 1];
};

template <typename T>
constexpr size_t transpose_shared_bytes() {
  return sizeof(TransposeShared<T>);
}

// The launch grid: a block per tile, as far as the grid's limits go (the kernel strides over the rest).
struct TransposeGrid {
  uint32_t x, y, z;
};

RCM_HD TransposeGrid transpose_grid(int64_t batch, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = TransposeTiles::kTile;
  return {static_cast<uint32_t>(min_of<int64_t>((cols + kTile - 1) / kTile, (int64_t{1} << 31) - 1)),
          static_cast<uint32_t>(min_of<int64_t>((rows + kTile - 1) / kTile, 65535)),
          static_cast<uint32_t>(min_of<int64_t>(batch, 65535))};
}

// out[b][c][r] = out_t(in[b][r][c]) for in: (batch, rows, cols) and out: (batch, cols, rows), both
// contiguous. NCHW -> NHWC: rows = C, cols = H*W; NHWC -> NCHW: rows = H*W, cols = C. out_t may differ
// from in_t (an input gradient summed in float, stored in the tensor's dtype).
// Grid: transpose_grid, or any other (x, y, z): x walks the column tiles, y the row tiles, z the batch,
// each grid-strided.
// Block: TransposeTiles::kThreads; dynamic shared memory: transpose_shared_bytes<in_t>().
template <typename in_t, typename out_t>
__global__ void __launch_bounds__(TransposeTiles::kThreads)
    batched_transpose_kernel(int64_t batch, int64_t rows, int64_t cols, const in_t* __restrict__ in,
                             out_t* __restrict__ out) {
  using T = TransposeTiles;
  RCM_DYNAMIC_SHARED(TransposeShared<in_t>, shared);
  const int tx = static_cast<int>(threadIdx.x % T::kTile);
  const int ty = static_cast<int>(threadIdx.x / T::kTile);
  const int64_t row_tiles = (rows + T::kTile - 1) / T::kTile;
  const int64_t col_tiles = (cols + T::kTile - 1) / T::kTile;
  // The loop bounds hang on the block's indices only, so every thread reaches every barrier.
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const in_t* src = in + b * rows * cols;
    out_t* dst = out + b * rows * cols;
    for (int64_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
      for (int64_t ct = blockIdx.x; ct < col_tiles; ct += gridDim.x) {
        const int64_t r0 = rt * T::kTile;
        const int64_t c0 = ct * T::kTile;
        RCM_UNROLL
        for (int i = ty; i < T::kTile; i += T::kThreadRows) {
          if (r0 + i < rows && c0 + tx < cols) shared->tile[i][tx] = src[(r0 + i) * cols + c0 + tx];
        }
        __syncthreads();
        RCM_UNROLL
        for (int i = ty; i < T::kTile; i += T::kThreadRows) {
          if (c0 + i < cols && r0 + tx < rows) dst[(c0 + i) * rows + r0 + tx] = static_cast<out_t>(shared->tile[tx][i]);
        }
        // The next tile overwrites this one.
        __syncthreads();
      }
    }
  }
}

}  // namespace kernels
}  // namespace rcm_fsad
