/* npukit-run [--dump] MODEL.bin INPUT.bin... OUTPUT.bin...: runs a model.bin on files of input samples with
 * the npukit runtime and writes the outputs. With --dump it also prints every tensor of every sample as
 * `npukit-dump SAMPLE TENSOR CRC32 NBYTES HEX` lines on stdout (docs/diagnostics.md, `npukit compare`); --dump
 * needs the trace hook (-DNPUKIT_TRACE=1, which `make`, CMake and npukit.codegen.host.build_runtime pass).
 *
 * One file per input, then one per output, in the model's order (npukit_input_info, `npukit inspect`): a
 * model with one input and one output takes `MODEL.bin INPUT.bin OUTPUT.bin`, one with two inputs and one
 * output `MODEL.bin IN0.bin IN1.bin OUT0.bin`. An input file holds samples back to back, each
 * npukit_input_info(i).bytes long, as little-endian integers of that input's type (int8 for 8-bit inputs);
 * every input file must hold the same number of samples. Each output file receives one sample per input
 * sample at that output's type (int8, or int32 for a wide output). The runtime runs on little-endian hosts
 * only, so the samples are used as they are. Host tool: it reads whole files with the C library and
 * allocates; the runtime itself does neither.
 *
 * Exit status: 0 done; 1 usage (also: not one file per input and output of the model); 2 a file cannot be
 * read or written; 3 the model is rejected (the message names the NPUKIT_E_* code); 4 an input file is not
 * a whole number of samples, or the input files hold different numbers of samples; 5 a sample is rejected
 * (an input value outside the input's bit range).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npukit_runtime.h"

static const char *status_name(int rc)
{
    static const char *const NAMES[] = {"NPUKIT_OK", "NPUKIT_E_ARG", "NPUKIT_E_MAGIC", "NPUKIT_E_SIZE",
                                        "NPUKIT_E_VERSION", "NPUKIT_E_CRC", "NPUKIT_E_HEADER", "NPUKIT_E_SECTION",
                                        "NPUKIT_E_RECORD", "NPUKIT_E_INDEX", "NPUKIT_E_VALUE", "NPUKIT_E_TARGET",
                                        "NPUKIT_E_GRAPH", "NPUKIT_E_UNSUPPORTED", "NPUKIT_E_LIMIT",
                                        "NPUKIT_E_ARENA", "NPUKIT_E_INPUT", "NPUKIT_E_IO"};
    return rc <= 0 && -rc < (int)(sizeof NAMES / sizeof NAMES[0]) ? NAMES[-rc] : "NPUKIT_E_?";
}

#if NPUKIT_TRACE
/* Trace callback of --dump: one line per tensor, the format of the generated npukit_dump.c. */
static void dump_line(void *user, const char *name, size_t name_len, const void *data, size_t nbytes)
{
    const unsigned char *p = (const unsigned char *)data;
    unsigned long crc = 0xFFFFFFFFUL;
    size_t i;
    int k;
    for (i = 0; i < nbytes; i++) {
        crc ^= p[i];
        for (k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xEDB88320UL & (0UL - (crc & 1UL)));
        }
    }
    printf("npukit-dump %lu %.*s %08lx %lu ", *(const unsigned long *)user, (int)name_len, name,
           (crc ^ 0xFFFFFFFFUL) & 0xFFFFFFFFUL, (unsigned long)nbytes);
    for (i = 0; i < nbytes; i++) {
        printf("%02x", p[i]);
    }
    printf("\n");
}
#endif

/* The whole file in a heap buffer (malloc's alignment suits npukit_load); NULL on failure. */
static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0;
    *len = 0;
    if (f == NULL) {
        return NULL;
    }
    for (;;) {
        size_t got;
        if (*len == cap) {
            unsigned char *more;
            cap = cap ? 2 * cap : 65536;
            more = (unsigned char *)realloc(buf, cap);
            if (more == NULL) {
                break;
            }
            buf = more;
        }
        got = fread(buf + *len, 1, cap - *len, f);
        *len += got;
        if (got == 0) {
            if (ferror(f)) {
                break;
            }
            fclose(f);
            return buf;
        }
    }
    free(buf);
    fclose(f);
    return NULL;
}

int main(int argc, char **argv)
{
    static npukit_model_t model; /* large (its op table): static, not on the stack */
    static unsigned char *in[NPUKIT_MAX_IO], *out[NPUKIT_MAX_IO];
    static size_t in_bytes[NPUKIT_MAX_IO], out_bytes[NPUKIT_MAX_IO];
    const void *ins[NPUKIT_MAX_IO];
    void *outs[NPUKIT_MAX_IO];
    unsigned char *bin, *arena;
    size_t bin_len, in_len, n = 0, i;
    unsigned k, n_in, n_out;
    npukit_io_info info;
    FILE *f;
    int rc, dump = argc >= 2 && strcmp(argv[1], "--dump") == 0;
    unsigned long sample;

    if (dump) {
#if !NPUKIT_TRACE
        fprintf(stderr, "npukit-run: --dump needs a runtime built with -DNPUKIT_TRACE=1\n");
        return 1;
#endif
        argv++;
        argc--;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: npukit-run [--dump] MODEL.bin INPUT.bin... OUTPUT.bin... (one file per input, "
                        "then one per output)\n");
        return 1;
    }
    bin = read_file(argv[1], &bin_len);
    if (bin == NULL) {
        fprintf(stderr, "npukit-run: cannot read %s\n", argv[1]);
        return 2;
    }
    rc = npukit_load(bin, bin_len, &model);
    if (rc != NPUKIT_OK) {
        fprintf(stderr, "npukit-run: %s: %s (%s)\n", argv[1], npukit_strerror(rc), status_name(rc));
        return 3;
    }
    n_in = npukit_num_inputs(&model);
    n_out = npukit_num_outputs(&model);
    if ((unsigned)argc - 2 != n_in + n_out) {
        fprintf(stderr, "npukit-run: %s has %u input(s) and %u output(s): give %u input file(s), then %u output "
                        "file(s)\n", argv[1], n_in, n_out, n_in, n_out);
        return 1;
    }
    for (k = 0; k < n_in; k++) {
        const char *path = argv[2 + k];
        (void)npukit_input_info(&model, k, &info);
        in_bytes[k] = info.bytes;
        in[k] = read_file(path, &in_len);
        if (in[k] == NULL) {
            fprintf(stderr, "npukit-run: cannot read %s\n", path);
            return 2;
        }
        if (in_len % in_bytes[k] != 0) {
            fprintf(stderr, "npukit-run: %s has %lu bytes, not a whole number of %lu-byte samples of input %.*s\n",
                    path, (unsigned long)in_len, (unsigned long)in_bytes[k], (int)info.name_len, info.name);
            return 4;
        }
        if (k > 0 && in_len / in_bytes[k] != n) {
            fprintf(stderr, "npukit-run: %s holds %lu samples, %s %lu: give every input the same number\n", path,
                    (unsigned long)(in_len / in_bytes[k]), argv[2], (unsigned long)n);
            return 4;
        }
        n = in_len / in_bytes[k];
    }
    arena = (unsigned char *)malloc(npukit_arena_bytes(&model) + 1);
    if (arena == NULL) {
        fprintf(stderr, "npukit-run: out of memory\n");
        return 2;
    }
    for (k = 0; k < n_out; k++) {
        (void)npukit_output_info(&model, k, &info);
        out_bytes[k] = info.bytes;
        out[k] = (unsigned char *)malloc(n * out_bytes[k] + 1);
        if (out[k] == NULL) {
            fprintf(stderr, "npukit-run: out of memory\n");
            return 2;
        }
    }
    for (i = 0; i < n; i++) {
        sample = (unsigned long)i;
        for (k = 0; k < n_in; k++) {
            ins[k] = in[k] + i * in_bytes[k];
        }
        for (k = 0; k < n_out; k++) {
            outs[k] = out[k] + i * out_bytes[k];
        }
#if NPUKIT_TRACE
        rc = npukit_invoke_io_traced(&model, arena, npukit_arena_bytes(&model), ins, outs, dump ? dump_line : NULL,
                                     &sample);
#else
        (void)sample;
        rc = npukit_invoke_io(&model, arena, npukit_arena_bytes(&model), ins, outs);
#endif
        if (rc != NPUKIT_OK) {
            fprintf(stderr, "npukit-run: sample %lu of %s: %s (%s)\n", (unsigned long)i, argv[2],
                    npukit_strerror(rc), status_name(rc));
            return 5;
        }
    }
    for (k = 0; k < n_out; k++) {
        const char *path = argv[2 + n_in + k];
        f = fopen(path, "wb");
        if (f == NULL || fwrite(out[k], 1, n * out_bytes[k], f) != n * out_bytes[k] || fclose(f) != 0) {
            fprintf(stderr, "npukit-run: cannot write %s\n", path);
            return 2;
        }
        free(out[k]);
    }
    for (k = 0; k < n_in; k++) {
        free(in[k]);
    }
    free(arena);
    free(bin);
    return 0;
}
