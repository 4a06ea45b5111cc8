// The tensor-core and asynchronous-copy instructions the hand-written bf16 kernels share
// (fp8_linear, attention_flash), as PTX: mma.sync m16n8k16 with fp32 sums, ldmatrix, cp.async.
// sm_80 and newer. Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   a (16 x 16, row-major) a[0]: row g, columns 2t, 2t+1; a[1]: row g+8, same; a[2], a[3]: the same
//     rows, columns 2t+8, 2t+9.
//   b (16 x 8) b0: rows (the sum's index) 2t, 2t+1 of column g; b1: rows 2t+8, 2t+9.
//   c (16 x 8) c[0], c[1]: row g, columns 2t, 2t+1; c[2], c[3]: row g+8.
#pragma once

#include <cstdint>
#include <cstring>
#include <cuda_bf16.h>

namespace mla::cuda_detail {

// 16 bytes from global to shared memory without passing through registers. A source size of 0
// reads nothing and writes zeros: rows and columns past an operand's end stay zero, so they add
// nothing to the products (the source address must still be a valid one).
__device__ __forceinline__ void copy_16_async(void* shared, const void* global, bool valid) {
  const auto destination = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(destination), "l"(global), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most kPending committed groups of copies are still in flight.
template <int kPending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// c += a b for one 16x8x16 tile: a 16 rows x 16 sums (row-major fragments), b 16 sums x 8 columns,
// fp32 sums.
__device__ __forceinline__ void mma_bf16_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 bf16 matrices from shared memory: lanes 8i .. 8i+7 give the addresses of matrix i's
// rows (16 bytes each, 16-byte aligned), and out[i] is this lane's pair of matrix i: row lane / 4,
// columns 2 (lane % 4) and the next. With kTranspose each matrix is read transposed: out[i] holds
// its rows 2 (lane % 4) and the next of column lane / 4.
template <bool kTranspose>
__device__ __forceinline__ void load_matrices_x4(uint32_t (&out)[4], const __nv_bfloat16* row) {
  const auto address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTranspose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3])
                 : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3])
                 : "r"(address));
  }
}

// Two floats rounded to bf16 as one operand register, `low` in the low half (the lower column).
__device__ __forceinline__ uint32_t pack_bf16_pair(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

}  // namespace mla::cuda_detail
