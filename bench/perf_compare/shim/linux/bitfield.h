/* FIELD_GET for Linux perf's arm-spe-pkt-decoder.h outside the kernel tree (spe-policy's
 * perf_compare harness; not part of the kernel). */
#ifndef SPE_POLICY_SHIM_BITFIELD_H
#define SPE_POLICY_SHIM_BITFIELD_H
#include <linux/bitops.h>
#define FIELD_GET(mask, v) (((v) & (mask)) / ((mask) & ~((mask) << 1)))
#endif
