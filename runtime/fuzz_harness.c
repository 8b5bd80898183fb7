/* Fuzz harness (built with -fsanitize=address,undefined by `make fuzz-harness` and the tests): reads cases
 * from stdin, each a u32 little-endian length and that many bytes of a (mutated) model.bin, and for each
 * prints one line "LOAD INVOKE CRC": npukit_load's status, npukit_invoke_io's on all-zero inputs ("-" when
 * the load failed, "s" when the model is too large to run here), and the CRC-32 of the outputs (each in
 * turn, in the model's order) for a pattern input, ((i * 73 + 11) mod 256) - 128 clipped to each input's
 * range, which the tests compare with the reference engine's ("-" when not run).
 *
 * Each case is copied into a heap block of exactly its size, and the arena and every input and output block
 * are exactly the sizes the model declares, so AddressSanitizer reports any read or write past them. The
 * harness also holds the API contract on every model that loads: a short arena, a misaligned arena, NULL
 * buffers and an unloaded model are refused, and the output does not depend on what the arena held
 * before (it is run on a zeroed and on a garbage-filled arena). A broken contract exits with status 3.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npukit_runtime.h"

#define MAX_CASE (64UL << 20)
#define MAX_ARENA (16UL << 20)
#define MAX_WORK 2e7 /* multiply-accumulates and copies per run: keep a case below a second under ASan */

static int contract(const char *what)
{
    fprintf(stderr, "fuzz_harness: API contract broken: %s\n", what);
    exit(3);
}

/* Rough work of one run, from the prepared ops (double: only compared with MAX_WORK). */
static double work(const npukit_model_t *m)
{
    double total = 0;
    uint32_t i;
    for (i = 0; i < m->n_ops; i++) {
        const npukit_op_t *op = &m->ops[i];
        const double out = m->tensors[op->out].elems, in = m->tensors[op->in[0]].elems;
        switch (op->kind) {
        case NPUKIT_OP_CONV:
            total += out * (op->p.conv.in_c / op->p.conv.groups) * (double)op->p.conv.k_h * op->p.conv.k_w;
            break;
        case NPUKIT_OP_LINEAR:
            total += out * in;
            break;
        case NPUKIT_OP_MAXPOOL:
        case NPUKIT_OP_AVGPOOL:
            total += out * (double)op->p.pool.k_h * op->p.pool.k_w;
            break;
        default:
            total += out + in;
            break;
        }
    }
    return total;
}

/* CRC-32 continued from `crc` (0 to start): chained over the outputs, it is the CRC of their concatenation. */
static uint32_t crc32(uint32_t crc, const unsigned char *p, size_t n)
{
    int k;
    crc ^= 0xFFFFFFFFUL;
    while (n-- > 0) {
        crc ^= *p++;
        for (k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xEDB88320UL & (0u - (crc & 1u)));
        }
    }
    return crc ^ 0xFFFFFFFFUL;
}

/* The pattern input, at the input's element width (host order: the runtime runs on little-endian hosts). */
static void pattern(const npukit_model_t *m, unsigned k, unsigned char *in)
{
    const npukit_tensor_t *t = &m->tensors[m->inputs[k]];
    const int64_t hi = t->bits >= 8 ? 127 : ((int64_t)1 << (t->bits - 1)) - 1, lo = -hi - 1;
    uint32_t i;
    for (i = 0; i < t->elems; i++) {
        int64_t v = (int64_t)((i * 73u + 11u) % 256u) - 128;
        v = v < lo ? lo : (v > hi ? hi : v);
        switch (t->elem_bytes) {
        case 1: { const int8_t e = (int8_t)v; memcpy(in + i, &e, 1); break; }
        case 2: { const int16_t e = (int16_t)v; memcpy(in + 2 * (size_t)i, &e, 2); break; }
        case 4: { const int32_t e = (int32_t)v; memcpy(in + 4 * (size_t)i, &e, 4); break; }
        default: memcpy(in + 8 * (size_t)i, &v, 8); break;
        }
    }
}

/* Runs the model: 1 when it is too large to run here, else npukit_invoke_io's status; *crc: see above. */
static int run(const npukit_model_t *m, uint32_t *crc)
{
    const size_t arena_len = npukit_arena_bytes(m);
    const unsigned n_in = npukit_num_inputs(m), n_out = npukit_num_outputs(m);
    const void *ins[NPUKIT_MAX_IO];
    void *outs[NPUKIT_MAX_IO], *agains[NPUKIT_MAX_IO];
    unsigned char *in[NPUKIT_MAX_IO], *out[NPUKIT_MAX_IO], *again[NPUKIT_MAX_IO];
    size_t out_len[NPUKIT_MAX_IO];
    unsigned char *arena, *shifted;
    npukit_io_info info;
    unsigned k;
    int rc;
    if (arena_len > MAX_ARENA || work(m) > MAX_WORK) {
        return 1;
    }
    arena = (unsigned char *)malloc(arena_len ? arena_len : 1);
    shifted = (unsigned char *)malloc(arena_len + 4);
    if (!arena || !shifted) {
        contract("out of memory");
    }
    for (k = 0; k < n_in; k++) {
        if (npukit_input_info(m, k, &info) != NPUKIT_OK || (in[k] = (unsigned char *)calloc(info.bytes, 1)) == NULL) {
            contract("npukit_input_info failed, or out of memory");
        }
        ins[k] = in[k];
    }
    for (k = 0; k < n_out; k++) {
        if (npukit_output_info(m, k, &info) != NPUKIT_OK) {
            contract("npukit_output_info failed");
        }
        out_len[k] = info.bytes;
        out[k] = (unsigned char *)malloc(info.bytes);
        again[k] = (unsigned char *)malloc(info.bytes);
        if (!out[k] || !again[k]) {
            contract("out of memory");
        }
        outs[k] = out[k];
        agains[k] = again[k];
    }
    if (npukit_input_info(m, n_in, &info) != NPUKIT_E_ARG || npukit_output_info(m, n_out, &info) != NPUKIT_E_ARG) {
        contract("an input or output index past the last was not refused");
    }
    memset(arena, 0, arena_len);
    rc = npukit_invoke_io(m, arena, arena_len, ins, outs);
    if (rc == NPUKIT_OK) {
        memset(arena, 0xA5, arena_len); /* garbage: a result must not depend on it */
        if (npukit_invoke_io(m, arena, arena_len, ins, agains) != NPUKIT_OK) {
            contract("a second run was refused");
        }
        for (k = 0; k < n_out; k++) {
            if (memcmp(out[k], again[k], out_len[k]) != 0) {
                contract("the output depends on the arena's previous contents");
            }
        }
        for (k = 0; k < n_in; k++) {
            pattern(m, k, in[k]);
        }
        if (npukit_invoke_io(m, arena, arena_len, ins, outs) != NPUKIT_OK) {
            contract("an input inside the input's range was refused");
        }
        *crc = 0;
        for (k = 0; k < n_out; k++) {
            *crc = crc32(*crc, out[k], out_len[k]);
        }
    }
    if (npukit_invoke_io(m, arena, arena_len - 1, ins, outs) != NPUKIT_E_ARENA
        || npukit_invoke_io(m, shifted + 1, arena_len + 3, ins, outs) != NPUKIT_E_ARENA
        || npukit_invoke_io(m, arena, arena_len, NULL, outs) != NPUKIT_E_ARG
        || npukit_invoke_io(m, arena, arena_len, ins, NULL) != NPUKIT_E_ARG
        || npukit_invoke_io(NULL, arena, arena_len, ins, outs) != NPUKIT_E_ARG
        || npukit_invoke(m, arena, arena_len, in[0], NULL) != NPUKIT_E_ARG
        || npukit_invoke(m, arena, arena_len, in[0], out[0]) != (n_in == 1 && n_out == 1 ? rc : NPUKIT_E_IO)) {
        contract("a bad argument to npukit_invoke(_io) was not refused");
    }
    for (k = 0; k < n_in; k++) {
        free(in[k]);
    }
    for (k = 0; k < n_out; k++) {
        free(out[k]);
        free(again[k]);
    }
    free(arena);
    free(shifted);
    return rc;
}

int main(void)
{
    static npukit_model_t model;
    unsigned char head[4];
    unsigned long cases = 0, loaded = 0;
    while (fread(head, 1, 4, stdin) == 4) {
        const size_t len = (size_t)head[0] | (size_t)head[1] << 8 | (size_t)head[2] << 16 | (size_t)head[3] << 24;
        unsigned char *bin;
        int rc;
        if (len > MAX_CASE) {
            contract("case too large");
        }
        bin = (unsigned char *)malloc(len ? len : 1);
        if (bin == NULL || fread(bin, 1, len, stdin) != len) {
            contract("truncated case stream");
        }
        rc = npukit_load(bin, len, &model);
        if (rc == NPUKIT_OK) {
            uint32_t crc = 0;
            const int inv = run(&model, &crc);
            loaded++;
            if (inv == 1) {
                printf("0 s -\n");
            } else if (inv == NPUKIT_OK) {
                printf("0 0 %08lx\n", (unsigned long)crc);
            } else {
                printf("0 %d -\n", inv);
            }
        } else {
            if (rc >= 0 || npukit_invoke(&model, bin, len, bin, bin) != NPUKIT_E_ARG) {
                contract("a failed load left a usable model, or returned a non-negative error");
            }
            printf("%d - -\n", rc);
        }
        free(bin);
        cases++;
    }
    fprintf(stderr, "fuzz_harness: %lu cases, %lu loaded\n", cases, loaded);
    return 0;
}
