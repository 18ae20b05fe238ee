/*
 * spe-policy's side of the perf comparison (docs/BENCHMARKS.md, "perf_compare"): times Linux
 * perf's own SPE packet decoder, arm_spe_get_packet(), on the buffer the `spe_4mib` criterion
 * group decodes, against memcpy of the same bytes in the same process. Build it with build.sh
 * against a kernel tree; perf's code is compiled from that tree, never copied here.
 *
 * Usage: perf_spe_bench A.bin B.bin C.bin [rounds]
 * The buffer: the three files concatenated in order, again and again, while the next one
 * still fits in 4 MiB (spe_policy_bench::realistic_spe_buffer does the same).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arm-spe-pkt-decoder.h"

#define LEN (4u << 20)

static unsigned char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(1);
	}
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
	if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
		fprintf(stderr, "%s: cannot read\n", path);
		exit(1);
	}
	fclose(f);
	*len = (size_t)n;
	return b;
}

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

/* perf's dump loop (arm_spe_dump): a packet, or one bad byte. */
static size_t decode(const unsigned char *buf, size_t len, int describe)
{
	struct arm_spe_pkt pkt;
	char desc[ARM_SPE_PKT_DESC_MAX];
	size_t pos = 0, n = 0;
	while (pos < len) {
		int ret = arm_spe_get_packet(buf + pos, len - pos, &pkt);
#ifdef PERF_SPE_DESC
		if (describe && ret > 0)
			arm_spe_pkt_desc(&pkt, desc, sizeof(desc));
#else
		(void)describe;
		(void)desc;
#endif
		pos += ret > 0 ? (size_t)ret : 1;
		n += pkt.type + 1;
	}
	return n;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s A.bin B.bin C.bin [rounds]\n", argv[0]);
		return 2;
	}
	int rounds = argc > 4 ? atoi(argv[4]) : 50;
	size_t lens[3];
	unsigned char *src[3];
	for (int i = 0; i < 3; i++)
		src[i] = read_file(argv[i + 1], &lens[i]);
	/* One allocation for source and destination, 1.5 buffers apart (see BENCHMARKS.md). */
	unsigned char *mem = malloc(LEN * 3);
	unsigned char *buf = mem, *dst = mem + LEN + LEN / 2;
	size_t len = 0;
	for (;;) {
		int i;
		for (i = 0; i < 3; i++) {
			if (len + lens[i] > LEN)
				break;
			memcpy(buf + len, src[i], lens[i]);
			len += lens[i];
		}
		if (i < 3)
			break;
	}
	double best_copy = 1e30, best_decode = 1e30, best_desc = 1e30;
	volatile size_t sink = 0;
	for (int r = 0; r < rounds; r++) {
		double t0 = now_ns();
		memcpy(dst, buf, len);
		sink += dst[r % len];
		double t1 = now_ns();
		sink += decode(buf, len, 0);
		double t2 = now_ns();
#ifdef PERF_SPE_DESC
		sink += decode(buf, len, 1);
#endif
		double t3 = now_ns();
		if (t1 - t0 < best_copy)
			best_copy = t1 - t0;
		if (t2 - t1 < best_decode)
			best_decode = t2 - t1;
		if (t3 - t2 < best_desc)
			best_desc = t3 - t2;
	}
	printf("buffer %zu bytes, best of %d rounds\n", len, rounds);
	printf("memcpy          %10.1f us\n", best_copy / 1e3);
	printf("packet decode   %10.1f us  %6.2fx memcpy\n", best_decode / 1e3,
	       best_decode / best_copy);
#ifdef PERF_SPE_DESC
	printf("+ descriptions  %10.1f us  %6.2fx memcpy\n", best_desc / 1e3,
	       best_desc / best_copy);
#endif
	return (int)(sink & 0);
}
