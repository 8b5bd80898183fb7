/* npukit runtime, internal: the target section of model.bin, a zlib stream of the target profile as JSON
 * (docs/model-format.md, "target"). npukit_runtime.c is the only user. */
#ifndef NPUKIT_TARGET_H
#define NPUKIT_TARGET_H

#include <stddef.h>
#include <stdint.h>

#include "npukit_kernels.h"

/* The fields of the profile the runtime uses; absent keys take the profile's defaults (npukit/targets). */
typedef struct {
    uint32_t target_id;        /* default 0 */
    uint32_t n_memory;         /* length of the "memory" list (tensor records index it); default 0 */
    nk_rounding rounding;      /* add, concat; default half_up */
    nk_rounding pool_rounding; /* average pooling; default half_up */
} npukit_target_info;

/* Inflates the section (RFC 1950 framing, Adler-32 checked, nothing after the stream, at most 1 MiB of
 * text), checks that the text is UTF-8 JSON whose top level is an object, and reads its "name" (a string,
 * required), "target_id" (an integer 0..65535), "scheme" (pow2 or max78000), "rounding" and
 * "pool_rounding" (rounding modes) and "memory" (a list). Returns 0, NPUKIT_E_TARGET, or NPUKIT_E_LIMIT
 * (a back-reference beyond NPUKIT_INFLATE_WINDOW). Reads z[0, n) only. */
int npukit_read_target(const uint8_t *z, size_t n, npukit_target_info *info);

/* Inflates a zlib stream (RFC 1950/1951) of at most 1 MiB that fills z[0, n) exactly, giving each byte to
 * sink(ctx, byte), which returns nonzero to stop (the result is then NPUKIT_E_TARGET). Returns 0,
 * NPUKIT_E_TARGET (not such a stream), or NPUKIT_E_LIMIT (a back-reference beyond NPUKIT_INFLATE_WINDOW). */
int npukit_inflate(const uint8_t *z, size_t n, int (*sink)(void *ctx, uint8_t byte), void *ctx);

/* Mode names as model.bin stores them ("half_up", ...), or -1. */
int npukit_rounding_mode(const uint8_t *s, size_t n);

#endif
