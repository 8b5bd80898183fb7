/* npukit-run [--dump] MODEL.bin INPUT.bin OUTPUT.bin: runs a model.bin on a file of input samples with the
 * npukit runtime and writes the outputs. With --dump it also prints every tensor of every sample as
 * `npukit-dump SAMPLE TENSOR CRC32 NBYTES HEX` lines on stdout (docs/diagnostics.md, `npukit compare`).
 *
 * INPUT.bin holds samples back to back, each npukit_input_bytes long, as little-endian integers of the
 * model input's type (int8 for 8-bit inputs); OUTPUT.bin receives one output sample per input sample at
 * the output's type (int8, or int32 for a wide output). The batch is the input file's size divided by
 * the sample size. The runtime runs on little-endian hosts only, so the samples are used as they are.
 * Host tool: it reads whole files with the C library and allocates; the runtime itself does neither.
 *
 * Exit status: 0 done; 1 usage; 2 a file cannot be read or written; 3 the model is rejected (the message
 * names the NPUKIT_E_* code); 4 the input file is not a whole number of samples; 5 a sample is rejected
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
                                        "NPUKIT_E_ARENA", "NPUKIT_E_INPUT"};
    return rc <= 0 && -rc < (int)(sizeof NAMES / sizeof NAMES[0]) ? NAMES[-rc] : "NPUKIT_E_?";
}

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
    unsigned char *bin, *in, *out, *arena;
    size_t bin_len, in_len, in_bytes, out_bytes, n, i;
    FILE *f;
    int rc, dump = argc == 5 && strcmp(argv[1], "--dump") == 0;
    unsigned long sample;

    if (dump) {
        argv++;
        argc--;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: npukit-run [--dump] MODEL.bin INPUT.bin OUTPUT.bin\n");
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
    in = read_file(argv[2], &in_len);
    if (in == NULL) {
        fprintf(stderr, "npukit-run: cannot read %s\n", argv[2]);
        return 2;
    }
    in_bytes = npukit_input_bytes(&model);
    out_bytes = npukit_output_bytes(&model);
    if (in_len % in_bytes != 0) {
        fprintf(stderr, "npukit-run: %s has %lu bytes, not a whole number of %lu-byte input samples\n", argv[2],
                (unsigned long)in_len, (unsigned long)in_bytes);
        return 4;
    }
    n = in_len / in_bytes;
    arena = (unsigned char *)malloc(npukit_arena_bytes(&model) + 1);
    out = (unsigned char *)malloc(n * out_bytes + 1);
    if (arena == NULL || out == NULL) {
        fprintf(stderr, "npukit-run: out of memory\n");
        return 2;
    }
    for (i = 0; i < n; i++) {
        sample = (unsigned long)i;
        rc = npukit_invoke_traced(&model, arena, npukit_arena_bytes(&model), in + i * in_bytes, out + i * out_bytes,
                                  dump ? dump_line : NULL, &sample);
        if (rc != NPUKIT_OK) {
            fprintf(stderr, "npukit-run: sample %lu of %s: %s (%s)\n", (unsigned long)i, argv[2], npukit_strerror(rc),
                    status_name(rc));
            return 5;
        }
    }
    f = fopen(argv[3], "wb");
    if (f == NULL || fwrite(out, 1, n * out_bytes, f) != n * out_bytes || fclose(f) != 0) {
        fprintf(stderr, "npukit-run: cannot write %s\n", argv[3]);
        return 2;
    }
    free(arena);
    free(out);
    free(in);
    free(bin);
    return 0;
}
