#!/usr/bin/env bash
# Builds perf_spe_bench against Linux perf's SPE packet decoder from a kernel tree:
#   bench/perf_compare/build.sh /path/to/linux [--desc]
# --desc also times arm_spe_pkt_desc() (the packet descriptions).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=${1:?usage: build.sh KERNEL_TREE [--desc]}
dec="$tree/tools/perf/util/arm-spe-decoder"
[ -f "$dec/arm-spe-pkt-decoder.c" ] || { echo "no $dec/arm-spe-pkt-decoder.c" >&2; exit 1; }
extra=()
[ "${2:-}" = "--desc" ] && extra=(-DPERF_SPE_DESC)
cc -O2 -std=gnu11 "${extra[@]}" -I "$here/shim" -I "$dec" \
  -o "$here/perf_spe_bench" "$here/perf_spe_bench.c" "$dec/arm-spe-pkt-decoder.c"
echo "built $here/perf_spe_bench; run it on the test data:"
echo "  $here/perf_spe_bench spe-policy/tests/data/kunpeng_branch_2021_a.bin spe-policy/tests/data/quipper_arm_spe_decoder_test.bin spe-policy/tests/data/kunpeng_branch_2021_b.bin"
