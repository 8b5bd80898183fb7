/* libFuzzer target (clang only: `make fuzz_load`, then ./fuzz_load SEED_DIR): npukit_load on each input
 * and, when it loads, npukit_invoke on a zero input in an arena of exactly the declared size.
 *
 * The header's file size and CRC are rewritten to match each input first: libFuzzer's mutations would
 * otherwise almost all stop at the CRC check (the Python-driven corpus of the tests covers that check). */
#include <stdlib.h>
#include <string.h>

#include "npukit_runtime.h"

static uint32_t crc32(const uint8_t *p, size_t n, uint32_t crc)
{
    int k;
    while (n-- > 0) {
        crc ^= *p++;
        for (k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xEDB88320UL & (0u - (crc & 1u)));
        }
    }
    return crc;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static npukit_model_t model;
    static const uint8_t zeros[4] = {0, 0, 0, 0};
    uint8_t *bin = (uint8_t *)malloc(size ? size : 1);
    if (bin == NULL) {
        return 0;
    }
    memcpy(bin, data, size);
    if (size >= 20 && size <= 0xFFFFFFFFUL) {
        uint32_t crc;
        put32(bin + 12, (uint32_t)size);
        crc = crc32(bin, 16, 0xFFFFFFFFUL);
        crc = crc32(zeros, 4, crc);
        put32(bin + 16, crc32(bin + 20, size - 20, crc) ^ 0xFFFFFFFFUL);
    }
    if (npukit_load(bin, size, &model) == NPUKIT_OK && npukit_arena_bytes(&model) <= (1UL << 20)) {
        uint8_t *arena = (uint8_t *)malloc(npukit_arena_bytes(&model));
        uint8_t *in = (uint8_t *)calloc(npukit_input_bytes(&model), 1);
        uint8_t *out = (uint8_t *)malloc(npukit_output_bytes(&model));
        if (arena && in && out) {
            (void)npukit_invoke(&model, arena, npukit_arena_bytes(&model), in, out);
        }
        free(arena);
        free(in);
        free(out);
    }
    free(bin);
    return 0;
}
