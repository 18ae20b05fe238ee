/*
 * How a C VMM embeds spe-policy (QEMU, kvmtool): check the config, build the policy for the
 * VM, back it with the VMM's stage 2 through callbacks, and route the guest's buffer enable,
 * an MMU-notifier invalidation and VM stop to it. A toy VMM: 16 MiB of guest RAM in one
 * memslot, stage 1 off (VA = IPA), pins kept in a page bitmap so the example can check every
 * pin has its unpin.
 *
 * Built and run by .ci/run:
 *   cargo build -p spe-policy-ffi
 *   cc -std=c11 -Wall -Wextra -Werror -I ffi/include ffi/examples/embed.c \
 *      target/debug/libspe_policy_ffi.a -lpthread -ldl -lm -o target/embed-c && target/embed-c
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spe_policy.h"

#define RAM_BASE 0x40000000ull
#define RAM_LEN (16ull << 20)
#define PAGE 4096ull
#define BUFFER (RAM_BASE + (1ull << 20))
#define BUFFER_LEN (64ull << 10)

struct vmm {
	uint8_t *ram;
	int pins[RAM_LEN / PAGE];
	long pin_calls, unpin_calls;
};

static int in_ram(uint64_t ipa, uint64_t len)
{
	return ipa >= RAM_BASE && len <= RAM_LEN && ipa - RAM_BASE <= RAM_LEN - len;
}

static int read_guest(void *ctx, uint64_t ipa, uint8_t *buf, size_t len)
{
	struct vmm *v = ctx;
	if (!in_ram(ipa, len))
		return SPE_HOST_NOT_IN_MEMSLOT;
	memcpy(buf, v->ram + (ipa - RAM_BASE), len);
	return SPE_HOST_OK;
}

static int write_guest(void *ctx, uint64_t ipa, const uint8_t *buf, size_t len)
{
	struct vmm *v = ctx;
	if (!in_ram(ipa, len))
		return SPE_HOST_NOT_IN_MEMSLOT;
	memcpy(v->ram + (ipa - RAM_BASE), buf, len);
	return SPE_HOST_OK;
}

static int pin(void *ctx, uint64_t ipa, uint64_t len)
{
	struct vmm *v = ctx;
	if (!in_ram(ipa, len))
		return SPE_HOST_NOT_IN_MEMSLOT;
	for (uint64_t p = (ipa - RAM_BASE) / PAGE; p < (ipa - RAM_BASE + len + PAGE - 1) / PAGE; p++)
		v->pins[p]++;
	v->pin_calls++;
	return SPE_HOST_OK;
}

static int unpin(void *ctx, uint64_t ipa, uint64_t len)
{
	struct vmm *v = ctx;
	if (!in_ram(ipa, len))
		return SPE_HOST_NOT_IN_MEMSLOT;
	for (uint64_t p = (ipa - RAM_BASE) / PAGE; p < (ipa - RAM_BASE + len + PAGE - 1) / PAGE; p++) {
		if (v->pins[p] == 0)
			return SPE_HOST_NOT_PINNED;
		v->pins[p]--;
	}
	v->unpin_calls++;
	return SPE_HOST_OK;
}

static int fault_in(void *ctx, uint64_t ipa, bool *made_present)
{
	(void)ctx;
	*made_present = false;
	return in_ram(ipa, 1) ? SPE_HOST_OK : SPE_HOST_NOT_IN_MEMSLOT;
}

static void page_state(void *ctx, uint64_t ipa, SpePageState *s)
{
	struct vmm *v = ctx;
	memset(s, 0, sizeof(*s));
	if (!in_ram(ipa, 1))
		return;
	s->in_memslot = true;
	s->present = true;
	s->pinned = v->pins[(ipa - RAM_BASE) / PAGE] > 0;
}

static int no_range_op(void *ctx, uint64_t ipa, uint64_t len)
{
	(void)ctx;
	return in_ram(ipa, len) ? SPE_HOST_OK : SPE_HOST_NOT_IN_MEMSLOT;
}

static int exempt(void *ctx, uint64_t ipa, uint64_t len, bool on)
{
	(void)on;
	return no_range_op(ctx, ipa, len);
}

static int inject(void *ctx, uint32_t vcpu, uint64_t pmbsr, uint64_t pmbptr)
{
	(void)ctx;
	printf("inject into vCPU %u: PMBSR %#llx PMBPTR %#llx\n", vcpu, (unsigned long long)pmbsr,
	       (unsigned long long)pmbptr);
	return SPE_HOST_OK;
}

static int disable_spe(void *ctx, uint32_t vcpu)
{
	(void)ctx;
	printf("SPE disabled for vCPU %u\n", vcpu);
	return SPE_HOST_OK;
}

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "embed.c:%d: ", __LINE__);                         \
			fprintf(stderr, __VA_ARGS__);                                      \
			fprintf(stderr, "\n");                                             \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

int main(void)
{
	static struct vmm v;
	char err[512];
	v.ram = calloc(1, RAM_LEN);
	CHECK(v.ram, "out of memory");
	printf("spe-policy %s\n", spe_version());

	/* A broken config is refused with the key, the value and the fix. */
	const char *bad = "[spe]\nstrategy = \"pin-everything\"\n";
	SpeStatus s = spe_config_check(bad, strlen(bad), SPE_FORMAT_TOML, err, sizeof(err));
	CHECK(s == SPE_STATUS_INVALID, "a bad strategy name was accepted (%d)", s);
	CHECK(strstr(err, "spe.strategy"), "the error does not name the key: %s", err);
	printf("refused as expected: %s\n", err);

	const char *config = "[spe]\nstrategy = \"pin-buffer\"\n";
	s = spe_config_check(config, strlen(config), SPE_FORMAT_TOML, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK, "config: %s", err);

	SpeVm vm;
	spe_vm_default(&vm);
	vm.vcpus = 1;
	vm.ram_bytes = RAM_LEN;
	vm.buffer_per_vcpu = BUFFER_LEN;
	SpePolicy *policy = NULL;
	s = spe_policy_new(config, strlen(config), SPE_FORMAT_TOML, &vm, &policy, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK && policy, "policy: %s", err);
	printf("strategy: %s\n", spe_policy_strategy(policy));

	uint32_t cells[4];
	CHECK(spe_policy_guest_notice(policy, cells) == SPE_STATUS_OK, "notice");
	CHECK(cells[0] == 0x53504550u, "notice magic %#x", cells[0]);
	printf("guest notice: <%#010x %#010x %#010x %#010x>\n", cells[0], cells[1], cells[2], cells[3]);

	SpeHostCallbacks host = {
		.ctx = &v,
		.host_page_size = PAGE,
		.read_guest = read_guest,
		.pin = pin,
		.unpin = unpin,
		.fault_in = fault_in,
		.page_state = page_state,
		.set_dirty_log_exempt = exempt,
		.send_before_switchover = no_range_op,
		.write_guest = write_guest,
		.inject = inject,
		.disable_spe = disable_spe,
	};
	SpeMemslot slot = { .slot = 0, .ipa = RAM_BASE, .len = RAM_LEN };
	SpeOutcome out;
	SpeEvent ev;

	memset(&ev, 0, sizeof(ev));
	ev.kind = SPE_EVENT_KIND_VM_START;
	ev.memslots = &slot;
	ev.n_memslots = 1;
	s = spe_policy_on_event(policy, &host, &ev, &out, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK && out.kind == SPE_OUTCOME_KIND_RESUME, "VmStart: %s", err);

	/* The guest enables its buffer: PMBPTR at the base, PMBLIMITR = limit | E. */
	memset(&ev, 0, sizeof(ev));
	ev.kind = SPE_EVENT_KIND_BUFFER_WRITE;
	ev.reg = SPE_BUFFER_REG_PMBLIMITR;
	ev.regs.pmbptr = BUFFER;
	ev.regs.pmblimitr = (BUFFER + BUFFER_LEN) | 1;
	s = spe_policy_on_event(policy, &host, &ev, &out, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK && out.kind == SPE_OUTCOME_KIND_RESUME, "enable: %s", err);
	uint64_t pinned = spe_policy_pinned_bytes(policy);
	CHECK(pinned >= BUFFER_LEN, "pin-buffer pinned %llu bytes", (unsigned long long)pinned);
	CHECK(v.pins[(BUFFER - RAM_BASE) / PAGE] == 1, "the buffer's first page is not pinned");
	printf("enabled: %llu bytes pinned in %ld pin calls\n", (unsigned long long)pinned,
	       v.pin_calls);

	/* The host wants to swap out a buffer page: refused, it is pinned. */
	memset(&ev, 0, sizeof(ev));
	ev.kind = SPE_EVENT_KIND_HOST_INVALIDATION;
	ev.ipa = BUFFER + PAGE;
	ev.len = PAGE;
	ev.cause = SPE_INVALIDATION_CAUSE_SWAP;
	s = spe_policy_on_event(policy, &host, &ev, &out, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK && out.kind == SPE_OUTCOME_KIND_REFUSE && out.reason == 0,
	      "invalidation of a pinned page: status %d kind %d", s, out.kind);

	/* An event kind C made up is refused, not trusted. */
	memset(&ev, 0, sizeof(ev));
	ev.kind = 99;
	s = spe_policy_on_event(policy, &host, &ev, &out, err, sizeof(err));
	CHECK(s == SPE_STATUS_BAD_ARGUMENT, "event kind 99 was accepted (%d)", s);
	printf("refused as expected: %s\n", err);

	/* Migration switch-over, vCPUs paused: the policy's state goes with the VM's. */
	size_t needed = 0;
	s = spe_policy_save(policy, NULL, 0, &needed, err, sizeof(err));
	CHECK(s == SPE_STATUS_BAD_ARGUMENT && needed > 0, "asking the state's size: %d", s);
	uint8_t *state = malloc(needed);
	CHECK(state, "out of memory");
	s = spe_policy_save(policy, state, needed, &needed, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK, "save: %s", err);
	printf("state: %zu bytes of JSON\n", needed);

	memset(&ev, 0, sizeof(ev));
	ev.kind = SPE_EVENT_KIND_VM_STOP;
	s = spe_policy_on_event(policy, &host, &ev, &out, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK, "VmStop: %s", err);
	CHECK(spe_policy_pinned_bytes(policy) == 0, "pins left after VmStop");
	for (size_t p = 0; p < RAM_LEN / PAGE; p++)
		CHECK(v.pins[p] == 0, "page %zu still pinned after VmStop", p);
	printf("source stopped: %ld pins, %ld unpins, nothing left pinned\n", v.pin_calls,
	       v.unpin_calls);
	spe_policy_free(policy);

	/* The destination (the same RAM contents, its own pins) restores before its vCPUs run. */
	static struct vmm d;
	d.ram = v.ram;
	SpeHostCallbacks dest = host;
	dest.ctx = &d;
	SpePolicy *restored = NULL;
	s = spe_policy_restore(config, strlen(config), SPE_FORMAT_TOML, &vm, state, needed, &dest,
			       &restored, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK && restored, "restore: %s", err);
	CHECK(d.pins[(BUFFER - RAM_BASE) / PAGE] == 1, "the destination did not pin the buffer");
	printf("destination: the buffer pinned again before its vCPUs run (%ld pin calls)\n",
	       d.pin_calls);
	memset(&ev, 0, sizeof(ev));
	ev.kind = SPE_EVENT_KIND_VM_STOP;
	s = spe_policy_on_event(restored, &dest, &ev, &out, err, sizeof(err));
	CHECK(s == SPE_STATUS_OK, "destination VmStop: %s", err);
	for (size_t p = 0; p < RAM_LEN / PAGE; p++)
		CHECK(d.pins[p] == 0, "page %zu still pinned on the destination", p);
	spe_policy_free(restored);
	free(state);
	free(v.ram);
	return 0;
}
