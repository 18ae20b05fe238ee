/* The few kernel macros Linux perf's arm-spe-pkt-decoder.c needs, so that it builds outside
 * the kernel's tools/ tree (spe-policy's perf_compare harness; not part of the kernel). */
#ifndef SPE_POLICY_SHIM_BITOPS_H
#define SPE_POLICY_SHIM_BITOPS_H
#include <stdint.h>
typedef uint64_t u64;
#define BIT(n) (1UL << (n))
#define BIT_ULL(n) (1ULL << (n))
#define GENMASK_ULL(h, l) ((~0ULL >> (63 - (h))) & (~0ULL << (l)))
#endif
