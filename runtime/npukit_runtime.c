/* npukit runtime: model.bin (docs/model-format.md) -> the kernel library (npukit/codegen/runtime).
 *
 * npukit_load reads the file in the order of the Python reader (npukit/modelbin.py, _Parser.parse):
 * header, section table, strings, device, plan, tensors, io, ops, then the graph checks of
 * modelbin._check_graph (each op's schema, OpDef.check_node; Graph.validate's w_exp / b_exp ranges in the
 * same pass) and Graph.validate (order of definition, arity, shape inference, OpDef.tensor_problems). A file
 * it accepts is one the Python reader accepts, with the exceptions named in the format document. Only then
 * does it look at what the kernels can run and compute each kernel call's parameters (what OpDef.to_c
 * computes offline for generated code).
 *
 * Every read goes through a cursor over one section and is checked against the section's end first;
 * lengths and offsets are compared as differences (end - pos) or in 64-bit arithmetic, so no sum can
 * wrap. Counts are refused before the loop when their smallest records cannot fit. Nothing is allocated:
 * the model is caller memory, the load state is on the stack (about 1.5 KiB on the Cortex-M4, with the op
 * record bound by view: its attributes and params found once by key id, see KEYS and OPS). The target
 * section (the deflated profile) is covered by the CRC and the section table checks but never inflated: what the
 * runtime needs of the profile is in the device section, which the Python reader holds equal to it.
 */
#include <string.h>

#include "npukit_runtime.h"

#define LOADED 0x4B55504EUL    /* "NPUK": set last by a successful npukit_load */
#define VERSION 3
#define HEADER 20
#define SECTION 12
#define N_KINDS 8              /* strings, target, tensors, ops, plan, io, weights, device: kinds 1..8 */
#define DEVICE_REC 4           /* rounding, pool_rounding, memories, reserved */
#define MAX_SECTIONS 64
#define TENSOR_REC 16
#define OP_REC 10
#define PARAM_REC 9
#define IO_REC 6
#define MAX_RANK 8
#define NO_OFFSET 0xFFFFFFFFUL
#define NO_MEMORY 0xFF
#define U32_MAX 0xFFFFFFFFULL
#define EXP_LIMIT 96           /* Graph.validate: 3 * max(-arith.MIN_EXP, arith.MAX_EXP) */
/* An op kind as the switches and tests below name it: itself when this build runs the op (NPUKIT_OPS), else
 * a value no kind (a uint8_t) takes, so that the compiler drops the code of the ops a build leaves out. */
#define ON(kind) ((NPUKIT_OPS) >> (kind) & 1u ? (unsigned)(kind) : (unsigned)(kind) + 256u)
#define IS(def, op) same_kind((def)->kind, ON(op))
#define MARKS 64               /* string table checkpoints: a lookup walks at most count / MARKS strings */

#if NPUKIT_MAX_EXTENT > (1L << 28)
#error "NPUKIT_MAX_EXTENT above 2^28: the kernels' int32 positions (extent + 2 * padding + stride) could overflow"
#endif

enum { S_STRINGS = 1, S_TARGET, S_TENSORS, S_OPS, S_PLAN, S_IO, S_WEIGHTS, S_DEVICE };
enum { A_BOOL, A_INT, A_LIST, A_STR };  /* attribute kinds (OpDef.attrs) */

/* Fuzz builds (-DNPUKIT_CHECK_INVARIANTS) stop at a read the loader's own checks should have excluded, such
 * as a dimension past a tensor's rank, even where it stays inside the file and a sanitizer sees nothing. */
#ifdef NPUKIT_CHECK_INVARIANTS
#include <stdlib.h>
#define INVARIANT(cond)   \
    do {                  \
        if (!(cond)) {    \
            abort();      \
        }                 \
    } while (0)
#else
#define INVARIANT(cond) ((void)0)
#endif

/* Keeps a small helper out of line where GCC's -Os would copy it into each of its callers for no gain. */
#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

#define TRY(expr)                   \
    do {                            \
        const int rc_ = (expr);     \
        if (rc_ != NPUKIT_OK) {     \
            return rc_;             \
        }                           \
    } while (0)

typedef struct {
    const uint8_t *d;
    size_t pos, end;
} cur_t;

typedef struct {
    const uint8_t *d;
    npukit_model_t *m;
    size_t len;
    size_t off[N_KINDS + 1], size[N_KINDS + 1]; /* by section kind */
    uint32_t n_strings, stride;
    uint32_t n_memory;                           /* device section: the profile's memories */
    size_t mark[MARKS];                          /* where string k * stride starts */
    uint8_t role[NPUKIT_MAX_TENSORS];            /* roles the io lists give */
    uint8_t defined[NPUKIT_MAX_TENSORS];
} ctx_t;

/* Little-endian fields at any alignment: on a little-endian core that loads at any alignment (Cortex-M3 and up,
 * x86) a memcpy of the field, which the compiler makes one load; elsewhere the bytes assembled (a Cortex-M0, where
 * GCC would call memcpy; a big-endian host, refused as the load ends anyway: see prepare). Firmware that traps
 * unaligned loads (CCR.UNALIGN_TRP) builds with -mno-unaligned-access, which takes the byte reads. */
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ \
    && (defined(__ARM_FEATURE_UNALIGNED) || defined(__x86_64__) || defined(__i386__))
static uint32_t rd16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
#else
static uint32_t rd16(const uint8_t *p)
{
    return (uint32_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
#endif

/* Whether a little-endian two's complement integer of 1, 2, 4 or 8 bytes is in int32's range: its bytes past
 * the fourth are copies of the fourth's sign. */
static int fits32(const uint8_t *p, unsigned width)
{
    unsigned k;
    for (k = 4; k < width; k++) {
        if (p[k] != (p[3] >> 7 ? 0xFFu : 0u)) {
            return 0;
        }
    }
    return 1;
}

/* That integer clamped to int32, without implementation-defined conversions. */
static int32_t le_int(const uint8_t *p, unsigned width)
{
    const uint32_t sign = p[width - 1] >> 7 ? 0xFFu : 0u;
    uint32_t u = 0, k;
    if (!fits32(p, width)) {
        return sign ? INT32_MIN : INT32_MAX;
    }
    for (k = 0; k < 4; k++) {
        u |= (uint32_t)(k < width ? p[k] : sign) << (8 * k); /* sign-extended from width bytes */
    }
    return u > INT32_MAX ? -(int32_t)~u - 1 : (int32_t)u;
}

/* kind == want, as a function: the compiler folds it to 0 for the kinds ON leaves out without warning that
 * a uint8_t never equals them. */
static int same_kind(unsigned kind, unsigned want)
{
    return kind == want;
}

/* ------------------------------------------------------------------------------------------------ */
/* Cursor */

static cur_t cursor(const ctx_t *x, int kind)
{
    cur_t c;
    c.d = x->d;
    c.pos = x->off[kind];
    c.end = x->off[kind] + x->size[kind]; /* inside the file: checked with the section table */
    return c;
}

/* Sets `at` to the file offset of the next n bytes of the section and passes them; refuses them if they run
 * past its end. A macro: a function returning the offset through a pointer kept it in memory at each call. */
#define TAKE(c, n, at)                           \
    do {                                         \
        if ((size_t)(n) > (c)->end - (c)->pos) { \
            return NPUKIT_E_RECORD;              \
        }                                        \
        (at) = (c)->pos;                         \
        (c)->pos += (n);                         \
    } while (0)

static int u16(cur_t *c, uint32_t *v)
{
    size_t at;
    TAKE(c, 2, at);
    *v = rd16(c->d + at);
    return NPUKIT_OK;
}

/* A u16 record count, refused at once if that many of the smallest records cannot fit. */
static int count(cur_t *c, size_t min_record, uint32_t *n)
{
    TRY(u16(c, n));
    return (size_t)*n * min_record > c->end - c->pos ? NPUKIT_E_RECORD : NPUKIT_OK;
}

static int done(const cur_t *c)
{
    return c->pos == c->end ? NPUKIT_OK : NPUKIT_E_RECORD;
}

/* `rank` u32 dimensions: rank <= 8, each at least 1, their product at most max_elems (exact: the
 * product is compared by division before it is formed). */
static int dims(cur_t *c, uint32_t rank, uint32_t max_elems, uint32_t *elems, size_t *at)
{
    uint32_t k, e = 1;
    if (rank > MAX_RANK) {
        return NPUKIT_E_VALUE;
    }
    TAKE(c, 4 * (size_t)rank, *at);
    for (k = 0; k < rank; k++) {
        const uint32_t d = rd32(c->d + *at + 4 * k);
        if (d == 0 || d > max_elems / e) {
            return NPUKIT_E_VALUE;
        }
        e *= d;
    }
    if (e > max_elems) {
        return NPUKIT_E_VALUE; /* rank 0: one element */
    }
    *elems = e;
    return NPUKIT_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Strings */

/* Strict UTF-8, as Python's decoder: no overlongs, no surrogates, nothing above U+10FFFF. */
static int utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const uint32_t b = s[i++];
        uint32_t k = (uint32_t)(b >= 0xC0) + (b >= 0xE0) + (b >= 0xF0); /* continuation bytes */
        uint32_t cp = b & (0x3Fu >> k), min;
        if (b < 0x80) {
            continue;
        }
        if (k == 0 || b > 0xF4 || n - i < k) {
            return 0;
        }
        min = 1u << (5 * k + 1 + (k == 1)); /* the least code point that needs k continuation bytes */
        for (; k > 0; k--) {
            if ((s[i] & 0xC0) != 0x80) {
                return 0;
            }
            cp = cp << 6 | (s[i++] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || cp >> 11 == 0x1B) { /* overlong, beyond Unicode, a surrogate */
            return 0;
        }
    }
    return 1;
}

static int read_strings(ctx_t *x)
{
    cur_t c = cursor(x, S_STRINGS);
    uint32_t n, i;
    TRY(count(&c, 2, &n));
    x->n_strings = n;
    x->stride = n / MARKS + 1;
    for (i = 0; i < n; i++) {
        uint32_t len;
        size_t at;
        if (i % x->stride == 0) {
            x->mark[i / x->stride] = c.pos;
        }
        TRY(u16(&c, &len));
        TAKE(&c, len, at);
        if (!utf8_ok(x->d + at, len)) {
            return NPUKIT_E_VALUE;
        }
    }
    return done(&c);
}

/* String i (< n_strings, checked by the caller): its bytes and length. */
static const uint8_t *str(const ctx_t *x, uint32_t i, size_t *len)
{
    size_t pos;
    uint32_t k;
    INVARIANT(i < x->n_strings);
    pos = x->mark[i / x->stride];
    for (k = i % x->stride; k > 0; k--) {
        pos += 2 + rd16(x->d + pos);
    }
    *len = rd16(x->d + pos);
    return x->d + pos + 2;
}

static int str_is(const ctx_t *x, uint32_t i, const char *s)
{
    size_t n;
    const uint8_t *p = str(x, i, &n);
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

/* Equal contents (the writer stores each string once, but the reader does not require it). */
static int str_same(const ctx_t *x, uint32_t a, uint32_t b)
{
    size_t na, nb;
    const uint8_t *pa, *pb;
    if (a == b) {
        return 1;
    }
    pa = str(x, a, &na);
    pb = str(x, b, &nb);
    return na == nb && memcmp(pa, pb, na) == 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Header and section table */

/* CRC-32 (zlib's) of the file with its own four bytes (16..19) read as zero; a bit at a time, without a table
 * (the file is read once, at load). */
static uint32_t file_crc(const uint8_t *d, size_t n)
{
    uint32_t crc = 0xFFFFFFFFUL;
    size_t i;
    unsigned k;
    for (i = 0; i < n; i++) {
        crc ^= i - 16 < 4 ? 0u : d[i];
        for (k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xEDB88320UL & (0u - (crc & 1u)));
        }
    }
    return crc ^ 0xFFFFFFFFUL;
}

static int read_header(ctx_t *x, uint32_t *n_sections)
{
    const uint8_t *d = x->d;
    uint32_t n;
    if (x->len < 4 || rd32(d) != LOADED) { /* "NPUK" */
        return NPUKIT_E_MAGIC;
    }
    if (x->len < HEADER) {
        return NPUKIT_E_SIZE;
    }
    if (rd16(d + 4) != VERSION) {
        return NPUKIT_E_VERSION;
    }
    if (rd32(d + 12) != x->len) {
        return NPUKIT_E_SIZE;
    }
    if (file_crc(d, x->len) != rd32(d + 16)) {
        return NPUKIT_E_CRC;
    }
    if (rd16(d + 8) != 0) {
        return NPUKIT_E_HEADER; /* version 3 defines no flags */
    }
    n = rd16(d + 10);
    if (n < 1 || n > MAX_SECTIONS || HEADER + (size_t)n * SECTION > x->len) {
        return NPUKIT_E_HEADER;
    }
    x->m->target_id = (uint16_t)rd16(d + 6);
    *n_sections = n;
    return NPUKIT_OK;
}

static int read_sections(ctx_t *x, uint32_t n)
{
    const size_t table_end = HEADER + (size_t)n * SECTION;
    uint32_t i, seen = 0, k;
    for (i = 0; i < n; i++) {
        const uint8_t *e = x->d + HEADER + (size_t)i * SECTION;
        const uint32_t kind = rd16(e), off = rd32(e + 4), size = rd32(e + 8);
        if (kind < 1 || kind > N_KINDS || (seen >> kind & 1u) || rd16(e + 2) != 0 || off % 4 != 0 || off < table_end
            || off > x->len || size > x->len - off) {
            return NPUKIT_E_SECTION;
        }
        seen |= 1u << kind;
        x->off[kind] = off;
        x->size[kind] = size;
    }
    if (seen != 0x1FEu) {
        return NPUKIT_E_SECTION; /* a kind is missing */
    }
    /* no two sections share a byte (an empty one may sit at another's start or end, not strictly inside it) */
    for (i = 2; i <= N_KINDS; i++) {
        for (k = 1; k < i; k++) {
            if (x->off[i] < x->off[k] + x->size[k] && x->off[k] < x->off[i] + x->size[i]) {
                return NPUKIT_E_SECTION;
            }
        }
    }
    return NPUKIT_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Plan, tensors, io */

/* The device section: the rounding modes (nk_rounding order) and the length of the profile's memory list. */
static int read_device(ctx_t *x)
{
    cur_t c = cursor(x, S_DEVICE);
    size_t at;
    TAKE(&c, DEVICE_REC, at);
    TRY(done(&c));
    if (x->d[at] > NK_TRUNC || x->d[at + 1] > NK_TRUNC || x->d[at + 3] != 0) {
        return NPUKIT_E_TARGET;
    }
    x->m->rounding = (nk_rounding)x->d[at];
    x->m->pool_rounding = (nk_rounding)x->d[at + 1];
    x->n_memory = x->d[at + 2];
    return NPUKIT_OK;
}

static int read_plan(ctx_t *x)
{
    cur_t c = cursor(x, S_PLAN);
    size_t at;
    TAKE(&c, 8, at);
    TRY(done(&c));
    x->m->arena_bytes = rd32(x->d + at);
    x->m->lower_bound_bytes = rd32(x->d + at + 4);
    return x->m->lower_bound_bytes > x->m->arena_bytes ? NPUKIT_E_VALUE : NPUKIT_OK;
}

static uint8_t elem_bytes(uint32_t bits)
{
    uint8_t n = 1;
    while (8u * n < bits) {
        n = (uint8_t)(2 * n); /* 1, 2, 4 or 8 bytes for bits 1..64 (checked first): TensorSpec.dtype */
    }
    return n;
}

static int read_tensors(ctx_t *x)
{
    cur_t c = cursor(x, S_TENSORS);
    npukit_model_t *m = x->m;
    uint32_t n, i, j;
    TRY(count(&c, TENSOR_REC, &n));
    if (n > NPUKIT_MAX_TENSORS) {
        return NPUKIT_E_LIMIT;
    }
    for (i = 0; i < n; i++) {
        npukit_tensor_t *t = &m->tensors[i];
        size_t at, dims_at;
        uint32_t elems, name, bits, role, memory, offset, nbytes;
        TAKE(&c, TENSOR_REC, at);
        name = rd16(x->d + at);
        bits = x->d[at + 2];
        role = x->d[at + 3];
        memory = x->d[at + 7];
        offset = rd32(x->d + at + 8);
        nbytes = rd32(x->d + at + 12);
        if (name >= x->n_strings) {
            return NPUKIT_E_INDEX;
        }
        for (j = 0; j < i; j++) {
            if (str_same(x, name, rd16(x->d + m->tensors[j].record))) {
                return NPUKIT_E_VALUE; /* tensor names are unique */
            }
        }
        if (bits < 1 || bits > 64 || role > 3) {
            return NPUKIT_E_VALUE;
        }
        TRY(dims(&c, x->d[at + 6], U32_MAX, &elems, &dims_at));
        if ((uint64_t)elems * elem_bytes(bits) != nbytes) {
            return NPUKIT_E_VALUE;
        }
        if (memory != NO_MEMORY && memory >= x->n_memory) {
            return NPUKIT_E_INDEX;
        }
        if (offset != NO_OFFSET && (offset > m->arena_bytes || nbytes > m->arena_bytes - offset)) {
            return NPUKIT_E_VALUE;
        }
        t->record = (uint32_t)at;
        {
            size_t len;
            const uint8_t *p = str(x, name, &len);
            t->name_at = (uint32_t)(p - x->d);
            t->name_len = (uint16_t)len;
        }
        t->offset = offset;
        t->nbytes = nbytes;
        t->elems = (uint32_t)elems;
        t->exp = (int16_t)le_int(x->d + at + 4, 2);
        t->bits = (uint8_t)bits;
        t->elem_bytes = elem_bytes(bits);
    }
    m->n_tensors = (uint16_t)n;
    return done(&c);
}

/* A tensor's rank and dimensions (u32 each, little-endian, in the file). */
typedef struct {
    uint32_t rank;
    const uint8_t *dims;
} shape_t;

static shape_t shape(const ctx_t *x, uint32_t t)
{
    shape_t s;
    s.rank = x->d[x->m->tensors[t].record + 6];
    s.dims = x->d + x->m->tensors[t].record + TENSOR_REC;
    return s;
}

static uint32_t dim(const shape_t *s, uint32_t k)
{
    INVARIANT(k < s->rank);
    return rd32(s->dims + 4 * (size_t)k);
}

static int same_shape(const shape_t *a, const shape_t *b)
{
    return a->rank == b->rank && memcmp(a->dims, b->dims, 4 * (size_t)a->rank) == 0;
}

static int read_io(ctx_t *x)
{
    cur_t c = cursor(x, S_IO);
    npukit_model_t *m = x->m;
    size_t at;
    uint32_t n_in, n_out, k, t;
    TAKE(&c, 4, at);
    n_in = rd16(x->d + at);
    n_out = rd16(x->d + at + 2);
    if ((size_t)(n_in + n_out) * IO_REC > c.end - c.pos) {
        return NPUKIT_E_RECORD;
    }
    if (n_in > NPUKIT_MAX_IO || n_out > NPUKIT_MAX_IO) {
        return NPUKIT_E_LIMIT;
    }
    memset(x->role, 0, sizeof x->role);
    for (k = 0; k < n_in + n_out; k++) {
        const npukit_tensor_t *spec;
        size_t dims_at;
        shape_t io, ts;
        TAKE(&c, IO_REC, at);
        t = rd16(x->d + at);
        io.rank = x->d[at + 3];
        if (t >= m->n_tensors) {
            return NPUKIT_E_INDEX;
        }
        TAKE(&c, 4 * io.rank, dims_at);
        io.dims = x->d + dims_at;
        spec = &m->tensors[t];
        ts = shape(x, t);
        /* the descriptor repeats its tensor: bits, exponent (its two bytes, the tensor record's at the same place)
         * and shape (valid dimensions, as the tensor's are) */
        if (x->d[at + 2] != spec->bits || rd16(x->d + at + 4) != rd16(x->d + spec->record + 4)
            || !same_shape(&io, &ts)) {
            return NPUKIT_E_VALUE;
        }
        x->role[t] |= (uint8_t)(k < n_in ? 1 : 2);
        if (k < n_in) {
            m->inputs[k] = (uint16_t)t;
        } else {
            m->outputs[k - n_in] = (uint16_t)t;
        }
    }
    TRY(done(&c));
    for (t = 0; t < m->n_tensors; t++) {
        if (x->d[m->tensors[t].record + 3] != x->role[t]) {
            return NPUKIT_E_VALUE; /* role bits agree with the lists */
        }
    }
    m->n_inputs = (uint16_t)n_in;
    m->n_outputs = (uint16_t)n_out;
    m->input = n_in ? m->inputs[0] : 0; /* prepare refuses a model without inputs or outputs */
    m->output = n_out ? m->outputs[0] : 0;
    return NPUKIT_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Ops: records */

/* The attribute keys the runtime reads, in the order of the schema table (OPS: each op's keys are one run
 * of this list), with their names in KEYS (NUL-separated) and kinds and minimums in KEY_INFO. */
enum {
    K_OUTPUT_PADDING, K_W_BITS, K_W_EXP, K_B_EXP, K_WIDE, K_BIAS_SHIFT, K_OUT_SHIFT, K_ACT_MIN, K_ACT_MAX, K_ABS,
    K_CLAMP, K_ACC_BITS, K_ROUNDING, K_RELU, K_GROUPS, K_DILATION, K_NDIM, K_STRIDE, K_PADDING, K_KERNEL,
    K_AXIS, K_START, K_STOP, K_KEEPDIM, K_SHAPE, K_FN, K_SCALE, K_PADS, K_VALUE, N_KEYS
};
static const char KEYS[] = "output_padding\0w_bits\0w_exp\0b_exp\0wide\0bias_shift\0out_shift\0act_min\0act_max\0"
                           "abs\0clamp\0acc_bits\0rounding\0relu\0groups\0dilation\0ndim\0stride\0padding\0kernel\0"
                           "axis\0start\0stop\0keepdim\0shape\0fn\0scale\0pads\0value";
enum { P_WEIGHT, P_BIAS, P_TABLE, N_PARAMS };
static const char PARAMS[] = "weight\0bias\0table";
static const char ROUNDINGS[] = "half_up\0half_even\0floor\0trunc"; /* the rounding modes, in nk_rounding order */

enum { S_IN, S_IN1, S_OUT }; /* view_t.sh: the first input's shape, the second's (the first's again if one), the output's */

typedef struct {
    uint32_t val;               /* file offset of the first value (bool: the byte; str: the index) */
    uint8_t found, kind;        /* kind: A_* */
    uint8_t count, width;       /* int: 1 value; list: count values; width bytes each */
} attr_t;

typedef struct {
    int found;
    uint32_t bits, rank;
    uint32_t count;             /* at most 8 * weights bytes / bits < 2^32 (the reader checks it) */
    size_t data, dims;          /* file offsets */
} param_t;

/* An op record, with its attributes and parameters found by key once (bind). */
typedef struct {
    shape_t sh[3];              /* by S_*: set by bind_shapes once the op's arity is checked */
    const npukit_tensor_t *t[3]; /* those tensors */
    uint32_t op;                /* op name (string index) */
    uint32_t n_in, n_out, n_attr, n_param;
    size_t io;                  /* the tensor list */
    size_t attrs, params;       /* the first attribute and parameter records */
    param_t p[N_PARAMS];        /* by P_* */
    attr_t a[N_KEYS];           /* by K_*: found 0 where the op has no such attribute */
    int32_t first[N_KEYS];      /* the first value of each int, bool or non-empty list attribute (as attr_int); a
                                   string's index */
} view_t;

#define V(key) (v->first[key])  /* the first value of an attribute the schema checks made sure of */

/* An attribute record at `pos`, given that it was validated: its kind, values and their offset into *a (found
 * set); returns the record's size. A bool is one 1-byte value, a string one 2-byte index. */
static size_t attr_decode(const uint8_t *d, size_t pos, attr_t *a)
{
    const uint32_t t = d[pos + 2];
    a->found = 1;
    a->width = (uint8_t)(1u << (t & 3u));
    a->count = 1;
    a->val = (uint32_t)pos + 3;
    if (t == 0x01) {
        a->kind = A_BOOL;
        a->width = 1;
    } else if (t == 0x30) {
        a->kind = A_STR;
        a->width = 2;
    } else if ((t & 0xF0) == 0x10) {
        a->kind = A_INT;
    } else {
        a->kind = A_LIST;
        a->count = d[pos + 3];
        a->val = (uint32_t)pos + 4;
    }
    return a->val - pos + (size_t)a->count * a->width;
}

static size_t attr_size(const uint8_t *d, size_t pos)
{
    attr_t a;
    return attr_decode(d, pos, &a);
}

static size_t param_size(const uint8_t *p)
{
    return PARAM_REC + 4 * (size_t)p[4];
}

static uint32_t v_tensor(const ctx_t *x, const view_t *v, uint32_t k)
{
    INVARIANT(k < v->n_in + v->n_out);
    return rd16(x->d + v->io + 2 * (size_t)k);
}

/* Value k of an int, bool or list attribute, clamped to int32 (a bool reads as 0 or 1). check_schema refuses an
 * op whose own attributes have values beyond (NPUKIT_E_UNSUPPORTED: the kernels take int32 parameters), so
 * they read exactly; the other reads (exp_ranges, read_param's w_bits) only compare with small bounds, which
 * the clamped value passes or fails as the value does. */
NOINLINE static int32_t attr_int(const ctx_t *x, const attr_t *a, uint32_t k)
{
    INVARIANT(a->found && a->kind != A_STR && k < a->count);
    return le_int(x->d + a->val + (size_t)k * a->width, a->width);
}

/* The id of string `name` in a NUL-separated list of n names, or n. */
static uint32_t lookup(const ctx_t *x, uint32_t name, const char *list, uint32_t n)
{
    uint32_t id;
    for (id = 0; id < n && !str_is(x, name, list); id++) {
        list += strlen(list) + 1;
    }
    return id;
}

/* Finds the op's attributes by key (the reader refuses a repeated key) and sets v->params past them. */
static void bind_attrs(const ctx_t *x, view_t *v)
{
    size_t pos = v->attrs;
    uint32_t k;
    memset(v->a, 0, sizeof v->a);
    memset(v->first, 0, sizeof v->first);
    for (k = 0; k < v->n_attr; k++) {
        const uint32_t id = lookup(x, rd16(x->d + pos), KEYS, N_KEYS);
        attr_t other, *a = id < N_KEYS ? &v->a[id] : &other;
        pos += attr_decode(x->d, pos, a);
        if (id < N_KEYS && a->count > 0) {
            v->first[id] = a->kind == A_STR ? (int32_t)rd16(x->d + a->val) : attr_int(x, a, 0); /* str: its index */
        }
    }
    v->params = pos;
}

/* An op record whose fields the reader checked, at `io` (its tensor list), with attributes and params bound. */
static void view(const ctx_t *x, size_t io, view_t *v)
{
    size_t pos;
    uint32_t k, j;
    v->op = rd16(x->d + io - 8);
    v->n_in = x->d[io - 4];
    v->n_out = x->d[io - 3];
    v->n_attr = x->d[io - 2];
    v->n_param = x->d[io - 1];
    v->io = io;
    v->attrs = io + 2 * (size_t)(v->n_in + v->n_out);
    bind_attrs(x, v);
    memset(v->p, 0, sizeof v->p);
    for (k = 0, pos = v->params; k < v->n_param; k++, pos += param_size(x->d + pos)) {
        const uint32_t id = lookup(x, rd16(x->d + pos), PARAMS, N_PARAMS);
        param_t *p = &v->p[id];
        if (id == N_PARAMS) {
            continue;
        }
        p->found = 1;
        p->bits = x->d[pos + 2];
        p->rank = x->d[pos + 4];
        p->data = x->off[S_WEIGHTS] + rd32(x->d + pos + 5);
        p->dims = pos + PARAM_REC;
        p->count = 1;
        for (j = 0; j < p->rank; j++) {
            p->count *= rd32(x->d + p->dims + 4 * (size_t)j);
        }
    }
}

static void bind_shapes(const ctx_t *x, view_t *v)
{
    uint32_t k;
    for (k = 0; k < 3; k++) {
        const uint32_t t = v_tensor(x, v, k == S_IN1 ? (v->n_in > 1) : k == S_OUT ? v->n_in : 0);
        v->sh[k] = shape(x, t);
        v->t[k] = &x->m->tensors[t];
    }
}

/* The output's first dimension (channels) is the input's: the pools, pad, upsample, global_avgpool. */
static int same_channels(const view_t *v)
{
    return dim(&v->sh[S_OUT], 0) == dim(&v->sh[S_IN], 0);
}

static uint32_t p_dim(const ctx_t *x, const param_t *p, uint32_t k)
{
    INVARIANT(k < p->rank);
    return rd32(x->d + p->dims + 4 * (size_t)k);
}

static int read_attr(const ctx_t *x, cur_t *c)
{
    uint32_t t, n = 1;
    size_t at;
    TAKE(c, 3, at); /* key, type */
    t = x->d[at + 2];
    if (rd16(x->d + at) >= x->n_strings) {
        return NPUKIT_E_INDEX;
    }
    if (t == 0x01) {
        TAKE(c, 1, at);
        return x->d[at] > 1 ? NPUKIT_E_VALUE : NPUKIT_OK;
    }
    if (t == 0x30) {
        TAKE(c, 2, at);
        return rd16(x->d + at) < x->n_strings ? NPUKIT_OK : NPUKIT_E_INDEX;
    }
    if (((t & 0xF0) != 0x10 && (t & 0xF0) != 0x20) || (t & 0x0F) > 3) {
        return NPUKIT_E_VALUE;
    }
    if ((t & 0xF0) == 0x20) {
        TAKE(c, 1, at);
        n = x->d[at];
    }
    TAKE(c, (size_t)n << (t & 3u), at); /* the values */
    (void)at;
    return NPUKIT_OK;
}

/* v is a power of two in [lo, hi] (lo >= 1). */
static int pow2_in(uint32_t v, uint32_t lo, uint32_t hi)
{
    return v >= lo && v <= hi && (v & (v - 1)) == 0;
}

static int read_param(const ctx_t *x, cur_t *c, const view_t *v)
{
    const size_t w_size = x->size[S_WEIGHTS];
    uint32_t name, bits, dtype_bits, offset, elems;
    size_t at, dims_at;
    uint64_t nbytes;
    const attr_t *wb = &v->a[K_W_BITS];
    TAKE(c, PARAM_REC, at);
    name = rd16(x->d + at);
    bits = x->d[at + 2];
    dtype_bits = x->d[at + 3];
    offset = rd32(x->d + at + 5);
    if (name >= x->n_strings) {
        return NPUKIT_E_INDEX;
    }
    if (!pow2_in(bits, 2, 64) || !pow2_in(dtype_bits, 8, 64) || bits > dtype_bits) { /* stored 2, 4, ..., 64 bits */
        return NPUKIT_E_VALUE;
    }
    /* a weight is stored at its op's w_bits (any other type of w_bits differs from every width) */
    if (lookup(x, name, PARAMS, N_PARAMS) == P_WEIGHT && wb->found && (wb->kind != A_INT || V(K_W_BITS) != (int32_t)bits)) {
        return NPUKIT_E_VALUE;
    }
    if (w_size >= (1UL << 30)) {
        return NPUKIT_E_UNSUPPORTED; /* so that a parameter's element count, 8 * w_size / bits, fits in 32 bits */
    }
    /* 8 * w_size / bits exactly, in 32 bits (bits a power of two) */
    TRY(dims(c, x->d[at + 4], bits <= 8 ? (uint32_t)w_size * (8 / bits) : (uint32_t)w_size / (bits / 8), &elems,
             &dims_at));
    nbytes = ((uint64_t)elems * bits + 7) / 8; /* elems * bits <= 8 * w_size < 2^33 */
    if (offset % 4 != 0 || offset + nbytes > w_size) {
        return NPUKIT_E_VALUE;
    }
    if (bits < 8 && elems % (8 / bits) != 0) { /* the unused high fields of the last byte are zero */
        const uint32_t last = x->d[x->off[S_WEIGHTS] + offset + nbytes - 1];
        if (last >> ((elems % (8 / bits)) * bits) != 0) {
            return NPUKIT_E_VALUE;
        }
    }
    return NPUKIT_OK;
}

static int read_op(ctx_t *x, cur_t *c, uint32_t i)
{
    view_t v;
    uint32_t counts[4], k, j;
    size_t at, pos, prev;
    TAKE(c, OP_REC - 2, at); /* op and name, the four counts (read_ops made sure of them) */
    if (rd16(x->d + at) >= x->n_strings || rd16(x->d + at + 2) >= x->n_strings) {
        return NPUKIT_E_INDEX;
    }
    for (k = 0; k < 4; k++) {
        counts[k] = x->d[at + 4 + k];
    }
    x->m->ops[i].inputs = (uint32_t)c->pos;
    for (k = 0; k < counts[0] + counts[1]; k++) {
        TAKE(c, 2, pos);
        if (rd16(x->d + pos) >= x->m->n_tensors) {
            return NPUKIT_E_INDEX;
        }
    }
    v.op = rd16(x->d + at);
    v.n_in = counts[0];
    v.n_out = counts[1];
    v.n_attr = 0;
    v.n_param = 0;
    v.io = x->m->ops[i].inputs;
    v.attrs = c->pos;
    for (k = 0; k < counts[2]; k++) {
        at = c->pos;
        TRY(read_attr(x, c));
        for (j = 0, pos = v.attrs; j < k; j++, pos += attr_size(x->d, pos)) {
            if (str_same(x, rd16(x->d + pos), rd16(x->d + at))) {
                return NPUKIT_E_VALUE; /* a repeated attribute key */
            }
        }
    }
    v.n_attr = counts[2];
    bind_attrs(x, &v); /* sets v.params: c->pos */
    for (k = 0; k < counts[3]; k++) {
        at = c->pos;
        TRY(read_param(x, c, &v));
        for (j = 0, prev = v.params; j < k; j++, prev += param_size(x->d + prev)) {
            if (str_same(x, rd16(x->d + prev), rd16(x->d + at))) {
                return NPUKIT_E_VALUE; /* a repeated parameter name */
            }
        }
    }
    return NPUKIT_OK;
}

static int read_ops(ctx_t *x)
{
    cur_t c = cursor(x, S_OPS);
    uint32_t n, i;
    TRY(count(&c, OP_REC, &n));
    if (n > NPUKIT_MAX_OPS) {
        return NPUKIT_E_LIMIT;
    }
    for (i = 0; i < n; i++) {
        const size_t start = c.pos;
        uint32_t size;
        cur_t rec;
        TRY(u16(&c, &size));
        if (size < OP_REC || size > c.end - start) {
            return NPUKIT_E_RECORD;
        }
        rec.d = x->d;
        rec.pos = c.pos;
        rec.end = start + size;
        TRY(read_op(x, &rec, i));
        TRY(done(&rec)); /* the fields use exactly `size` bytes */
        c.pos = start + size;
    }
    x->m->n_ops = (uint16_t)n;
    return done(&c);
}

/* ------------------------------------------------------------------------------------------------ */
/* Ops: the schema of each op (npukit/ops: OpDef.attrs, attr_min, params, arity, passes_through) */

/* Each key's kind (bits 0-1) and the smallest value of an int or of each list element (bits 2-3: none,
 * 0 or 1 as 0, 1, 2), in K_* order. */
#define KIND_MIN(kind, min) ((kind) | ((min) + 1) << 2)
#define NO_MIN (-1)
static const uint8_t KEY_INFO[N_KEYS] = {
    KIND_MIN(A_LIST, 0),                                                         /* output_padding */
    KIND_MIN(A_INT, NO_MIN), KIND_MIN(A_INT, NO_MIN), KIND_MIN(A_INT, NO_MIN),   /* w_bits w_exp b_exp */
    KIND_MIN(A_BOOL, NO_MIN), KIND_MIN(A_INT, NO_MIN), KIND_MIN(A_INT, NO_MIN),  /* wide bias_shift out_shift */
    KIND_MIN(A_INT, NO_MIN), KIND_MIN(A_INT, NO_MIN), KIND_MIN(A_BOOL, NO_MIN),  /* act_min act_max abs */
    KIND_MIN(A_BOOL, NO_MIN), KIND_MIN(A_INT, NO_MIN), KIND_MIN(A_STR, NO_MIN),  /* clamp acc_bits rounding */
    KIND_MIN(A_BOOL, NO_MIN), KIND_MIN(A_INT, 1), KIND_MIN(A_LIST, 1),           /* relu groups dilation */
    KIND_MIN(A_INT, 1), KIND_MIN(A_LIST, 1), KIND_MIN(A_LIST, 0),                /* ndim stride padding */
    KIND_MIN(A_LIST, 1), KIND_MIN(A_INT, 0), KIND_MIN(A_INT, 0),                 /* kernel axis start */
    KIND_MIN(A_INT, 1), KIND_MIN(A_BOOL, NO_MIN), KIND_MIN(A_LIST, 1),           /* stop keepdim shape */
    KIND_MIN(A_STR, NO_MIN), KIND_MIN(A_LIST, 1), KIND_MIN(A_LIST, 0),           /* fn scale pads */
    KIND_MIN(A_INT, NO_MIN)};                                                    /* value */

/* The op names, NUL-separated, in NPUKIT_OP_* order (kinds 1, 2, ...). */
static const char OP_NAMES[] = "conv\0linear\0maxpool\0avgpool\0global_avgpool\0add\0concat\0relu\0reshape\0lut\0"
                               "mul\0upsample\0slice\0conv_transpose\0pad";
#define N_OPS 15
#define ALL_OPS 0xFFFEu        /* NPUKIT_OPS bits of the op kinds 1 .. N_OPS */
#define ANY 255

/* npukit/ops: OpDef.attrs (the keys first .. first + n - 1 of K_*), arity, params, passes_through. */
typedef struct {
    uint8_t kind, first, n;
    uint8_t min_in, max_in;     /* max_in ANY: any number of inputs (an op record holds at most 255) */
    uint8_t mac, passes_through;
} opdef_t;

static const opdef_t OPS[N_OPS] = {
    {NPUKIT_OP_CONV, K_W_BITS, K_KERNEL - K_W_BITS, 1, 1, 1, 0},                 /* the MAC keys, groups .. padding */
    {NPUKIT_OP_LINEAR, K_W_BITS, K_GROUPS - K_W_BITS, 1, 1, 1, 0},               /* the MAC keys (w_bits .. relu) */
    {NPUKIT_OP_MAXPOOL, K_NDIM, 4, 1, 1, 0, 1},                                  /* ndim stride padding kernel */
    {NPUKIT_OP_AVGPOOL, K_NDIM, 4, 1, 1, 0, 1},
    {NPUKIT_OP_GLOBAL_AVGPOOL, K_KEEPDIM, 1, 1, 1, 0, 1},
    {NPUKIT_OP_ADD, K_RELU, 1, 2, ANY, 0, 0},
    {NPUKIT_OP_CONCAT, K_AXIS, 1, 1, ANY, 0, 0},
    {NPUKIT_OP_RELU, 0, 0, 1, 1, 0, 1},
    {NPUKIT_OP_RESHAPE, K_SHAPE, 1, 1, 1, 0, 1},
    {NPUKIT_OP_LUT, K_FN, 1, 1, 1, 0, 0},
    {NPUKIT_OP_MUL, K_RELU, 1, 2, 2, 0, 0},
    {NPUKIT_OP_UPSAMPLE, K_SCALE, 1, 1, 1, 0, 1},
    {NPUKIT_OP_SLICE, K_AXIS, 3, 1, 1, 0, 1},                                    /* axis start stop */
    {NPUKIT_OP_CONV_TRANSPOSE, K_OUTPUT_PADDING, K_KERNEL, 1, 1, 1, 0},          /* output_padding, conv's keys */
    {NPUKIT_OP_PAD, K_PADS, 2, 1, 1, 0, 1},                                      /* pads value */
};

static const opdef_t *op_def(const ctx_t *x, uint32_t name)
{
    const uint32_t k = lookup(x, name, OP_NAMES, N_OPS);
    return k < N_OPS ? &OPS[k] : NULL;
}

/* The attributes and params an op's kernel reads, with their kinds and minimums (OpDef.check_node). */
static int check_schema(const ctx_t *x, const view_t *v, const opdef_t *def)
{
    uint32_t s, k;
    for (s = def->first; s < (uint32_t)def->first + def->n; s++) {
        const attr_t *a = &v->a[s];
        const int32_t min = (KEY_INFO[s] >> 2) == 0 ? INT32_MIN : (KEY_INFO[s] >> 2) - 1;
        if (!a->found || a->kind != (KEY_INFO[s] & 3u)) {
            return NPUKIT_E_GRAPH;
        }
        for (k = 0; a->kind != A_STR && k < a->count; k++) {
            const uint8_t *p = x->d + a->val + (size_t)k * a->width;
            if (le_int(p, a->width) < min) {
                return NPUKIT_E_GRAPH; /* (one below INT32_MIN reads as it) */
            }
            if (!fits32(p, a->width)) {
                return NPUKIT_E_UNSUPPORTED; /* no kernel parameter holds it: attr_int reads the rest exactly */
            }
        }
    }
    if (IS(def, NPUKIT_OP_LUT)) {
        return v->p[P_TABLE].found && v->p[P_TABLE].rank == 1 ? NPUKIT_OK : NPUKIT_E_GRAPH;
    }
    if (def->mac) {
        const param_t *w, *b;
        int32_t nsp, v32;
        b = &v->p[P_BIAS];
        w = &v->p[P_WEIGHT];
        if (!b->found || !w->found) {
            return NPUKIT_E_GRAPH;
        }
        /* _check_mac: w_bits, rounding, acc_bits, weight rank, bias shape (out,) */
        v32 = V(K_W_BITS);
        if (!pow2_in((uint32_t)v32, 2, 16)) {
            return NPUKIT_E_GRAPH;
        }
        if (lookup(x, (uint32_t)V(K_ROUNDING), ROUNDINGS, 4) == 4) {
            return NPUKIT_E_GRAPH;
        }
        v32 = V(K_ACC_BITS);
        if ((uint32_t)v32 - 2 > 60) { /* 2 .. 62 */
            return NPUKIT_E_GRAPH;
        }
        /* the weight is (out, in / groups, *kernel) of rank ndim + 2 (ndim 1 or 2), for conv_transpose (in, out,
         * *kernel) with groups 1, for linear (out, in); the bias (out,) */
        nsp = IS(def, NPUKIT_OP_LINEAR) ? 0 : V(K_NDIM);
        if ((int32_t)w->rank - 2 != nsp || b->rank != 1
            || p_dim(x, b, 0) != p_dim(x, w, IS(def, NPUKIT_OP_CONV_TRANSPOSE) ? 1u : 0u)
            || (nsp != 0 && nsp != 1 && nsp != 2) || (IS(def, NPUKIT_OP_CONV_TRANSPOSE) && V(K_GROUPS) != 1)) {
            return NPUKIT_E_GRAPH;
        }
    }
    return NPUKIT_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Ops: shapes and tensor widths (infer_shapes, tensor_problems) */

/* The largest value of a signed min(bits, 32)-bit integer, 1 <= bits: the bound for an int32 value, whose
 * range every wider type holds. */
NOINLINE static int32_t max32(uint32_t bits)
{
    return (int32_t)((1u << ((bits > 32 ? 32 : bits) - 1)) - 1u);
}

/* Output size along one axis of a conv or pooling window, floor((n + 2 * p - d * (k - 1) - 1) / s) + 1, where it
 * is positive, else 0 (no dimension is 0); k, s, d >= 1 and n, p <= NPUKIT_MAX_EXTENT <= 2^28, so n + 2 * p and
 * each value below fit in 32 bits. */
static uint32_t window_out(uint32_t n, uint32_t k, uint32_t s, uint32_t p, uint32_t d)
{
    const uint32_t last = n + 2 * p - 1; /* the padded input's last position */
    if (k - 1 > last / d) {
        return 0; /* the window's span d * (k - 1) + 1 is longer than the padded input */
    }
    return (last - d * (k - 1)) / s + 1;
}

/* conv, maxpool, avgpool: geometry lists of `nsp` entries, each value within NPUKIT_MAX_EXTENT (beyond, the
 * 32-bit arithmetic below could overflow, and the kernels cannot run it anyway: NPUKIT_E_UNSUPPORTED). */
static int geometry(const ctx_t *x, const view_t *v, const uint8_t keys[3], uint32_t nsp, const attr_t *a[3])
{
    uint32_t i, k;
    for (i = 0; i < 3; i++) {
        a[i] = &v->a[keys[i]];
        if (a[i]->count != nsp) {
            return NPUKIT_E_GRAPH; /* zip(..., strict=True) */
        }
    }
    for (i = 0; i < 3; i++) {
        for (k = 0; k < nsp; k++) {
            if (attr_int(x, a[i], k) > NPUKIT_MAX_EXTENT) {
                return NPUKIT_E_UNSUPPORTED;
            }
        }
    }
    return NPUKIT_OK;
}

/* Conv.infer_shapes (form 0): out = floor((n + 2 * p - d * (k - 1) - 1) / s) + 1 per axis; ConvTranspose's
 * (form 1): out = (n - 1) * s - 2 * p + d * (k - 1) + output_padding + 1, its weight (in, out, *kernel);
 * MaxPool's and AvgPool's (form 2): conv's with the kernel from its attribute and d = 1. The values it
 * checks along the spatial axes are the kernel's geometry: it sets them in op's parameters (one copy: the fields
 * run alike in nk_conv_params and nk_pool_params; a 1-d window is h = 1 without padding), refusing any beyond NPUKIT_MAX_EXTENT as NPUKIT_E_UNSUPPORTED. */
static int shape_window(const ctx_t *x, const view_t *v, unsigned form, npukit_op_t *op)
{
    static const uint8_t GEOMETRY[2][3] = {{K_STRIDE, K_PADDING, K_DILATION}, {K_KERNEL, K_STRIDE, K_PADDING}};
    const unsigned pool = form == 2, transpose = form == 1 && ((NPUKIT_OPS) >> NPUKIT_OP_CONV_TRANSPOSE & 1u);
    const uint32_t rank = v->sh[S_IN].rank;
    const attr_t *a[3];
    const attr_t *o_pads;
    const param_t *w;
    uint32_t nsp, k;
    int32_t groups, g[12];
    w = &v->p[P_WEIGHT];
    o_pads = &v->a[K_OUTPUT_PADDING];
    if (pool) {
        nsp = rank - 1;
        if (rank < 1) {
            return NPUKIT_E_GRAPH;
        }
    } else {
        nsp = (uint32_t)V(K_NDIM); /* 1 or 2 (check_schema) */
        if (rank != nsp + 1 || v->sh[S_OUT].rank != nsp + 1 || (transpose && o_pads->count != nsp)) {
            return NPUKIT_E_GRAPH;
        }
    }
    TRY(geometry(x, v, GEOMETRY[pool], nsp, a));
    if (pool) {
        if (v->sh[S_OUT].rank != rank || !same_channels(v)) {
            return NPUKIT_E_GRAPH;
        }
    } else if (transpose) {
        if (dim(&v->sh[S_IN], 0) != p_dim(x, w, 0) || dim(&v->sh[S_OUT], 0) != p_dim(x, w, 1)) {
            return NPUKIT_E_GRAPH;
        }
    } else {
        groups = V(K_GROUPS);
        if ((uint64_t)p_dim(x, w, 1) * (uint32_t)groups != dim(&v->sh[S_IN], 0)) { /* groups >= 1 (the schema) */
            return NPUKIT_E_GRAPH; /* the input's channels are in / groups per group */
        }
        if (groups > NPUKIT_MAX_EXTENT) {
            return NPUKIT_E_UNSUPPORTED;
        }
        if (dim(&v->sh[S_OUT], 0) != p_dim(x, w, 0)) {
            return NPUKIT_E_GRAPH;
        }
    }
    if (nsp - 1 > 1) {
        return NPUKIT_E_UNSUPPORTED; /* a pool over one or two spatial axes */
    }
    for (k = 0; k < 12; k++) {
        g[k] = k < 8 || k >= 10; /* h and w: 1, but the padding 0 */
    }
    for (k = 0; k < nsp; k++) {
        const uint32_t n = dim(&v->sh[S_IN], k + 1), kk = pool ? (uint32_t)attr_int(x, a[0], k) : p_dim(x, w, k + 2);
        const int32_t s = attr_int(x, a[pool], k), p = attr_int(x, a[pool + 1], k); /* 0 .. MAX_EXTENT (geometry) */
        const int32_t d = pool ? 1 : attr_int(x, a[2], k);
        const uint32_t j = k + 2 - nsp; /* the kernels' axis: h 0, w 1 */
        uint32_t o;
        if (n > NPUKIT_MAX_EXTENT || kk > NPUKIT_MAX_EXTENT) {
            return NPUKIT_E_UNSUPPORTED;
        }
        if (pool && 2 * (uint32_t)p > kk) {
            return NPUKIT_E_GRAPH; /* a pool's padding at most half its window */
        }
        if (transpose) {
            const int32_t o_pad = attr_int(x, o_pads, k);
            if (o_pad > NPUKIT_MAX_EXTENT) {
                return NPUKIT_E_UNSUPPORTED;
            }
            if (o_pad >= (s > d ? s : d)) {
                return NPUKIT_E_GRAPH;
            }
            /* (n - 1) * s + d * (k - 1) + output_padding + 1 - 2 * p, each product of 32-bit factors < 2^57 */
            const uint64_t t = (uint64_t)(n - 1) * (uint32_t)s + (uint64_t)(kk - 1) * (uint32_t)d + (uint32_t)o_pad + 1;
            const uint32_t p2 = 2 * (uint32_t)p;
            o = t > p2 && t - p2 <= U32_MAX ? (uint32_t)(t - p2) : 0; /* 0: no dimension has that size */
        } else {
            o = window_out(n, kk, (uint32_t)s, (uint32_t)p, (uint32_t)d);
        }
        if (o != dim(&v->sh[S_OUT], k + 1)) {
            return NPUKIT_E_GRAPH;
        }
        if (o > NPUKIT_MAX_EXTENT) {
            return NPUKIT_E_UNSUPPORTED;
        }
        g[j] = (int32_t)n;
        g[2 + j] = (int32_t)o;
        g[4 + j] = (int32_t)kk;
        g[6 + j] = s;
        g[8 + j] = p;
        g[10 + j] = d;
    }
    /* the geometry's fields run in this order in both structs, from in_h (dilation: conv's alone) */
    memcpy(pool ? &op->p.pool.in_h : &op->p.conv.in_h, g, (12u - 2 * pool) * sizeof g[0]);
    return NPUKIT_OK;
}

/* Each op's output shape (OpDef.infer_shapes), from its input shapes and attributes: the window ops in
 * shape_window, the others here; most infer the output's shape into `want` for one comparison at the end. */
#define SAME_RANK_OPS (1u << NPUKIT_OP_GLOBAL_AVGPOOL | 1u << NPUKIT_OP_ADD | 1u << NPUKIT_OP_RELU | 1u << NPUKIT_OP_LUT \
                       | 1u << NPUKIT_OP_CONCAT | 1u << NPUKIT_OP_SLICE | 1u << NPUKIT_OP_MUL)
static int shape_of(const ctx_t *x, const view_t *v, const opdef_t *def, npukit_op_t *op)
{
    const shape_t *in = &v->sh[S_IN];
    uint32_t want[MAX_RANK]; /* the output's dimensions as inferred, `rank` of them */
    uint32_t rank = in->rank, k, i, sum = 0;
    const attr_t *a;
    const param_t *w;
    /* the input's shape (rank <= MAX_RANK: dims), which the element-wise ops, concat, slice and global_avgpool
     * change on one axis at most; a build without them (NPUKIT_OPS) needs no copy */
    for (k = 0; ((NPUKIT_OPS) & SAME_RANK_OPS) != 0 && k < rank; k++) {
        want[k] = dim(in, k);
    }
    switch ((unsigned)def->kind) {
    case ON(NPUKIT_OP_CONV):
        return shape_window(x, v, 0, op);
    case ON(NPUKIT_OP_CONV_TRANSPOSE):
        return shape_window(x, v, 1, op);
    case ON(NPUKIT_OP_MAXPOOL):
    case ON(NPUKIT_OP_AVGPOOL):
        return shape_window(x, v, 2, op);
    case ON(NPUKIT_OP_LINEAR): /* (in,) -> (out,), by the weight (out, in) */
        w = &v->p[P_WEIGHT];
        if (rank != 1 || dim(in, 0) != p_dim(x, w, 1)) {
            return NPUKIT_E_GRAPH;
        }
        want[0] = p_dim(x, w, 0);
        break;
    case ON(NPUKIT_OP_GLOBAL_AVGPOOL): /* (c, ...) -> (c, 1, ...) or, without keepdim, (c,) */
        if (rank < 1) {
            return NPUKIT_E_GRAPH;
        }
        for (k = 1; k < rank; k++) {
            want[k] = 1;
        }
        rank = V(K_KEEPDIM) ? rank : 1;
        break;
    case ON(NPUKIT_OP_ADD):
    case ON(NPUKIT_OP_RELU): /* relu and lut: one input (OPS), so only the output's shape is checked */
    case ON(NPUKIT_OP_LUT):
        for (k = 0; k < v->n_in; k++) {
            const shape_t t = shape(x, v_tensor(x, v, k));
            if (!same_shape(&t, in)) {
                return NPUKIT_E_GRAPH;
            }
        }
        break; /* the output: the input's shape */
    case ON(NPUKIT_OP_CONCAT): /* the operands agree off the axis; along it the output is their sum */
    case ON(NPUKIT_OP_SLICE): { /* [start, stop) of one axis, the others as they are */
        const uint32_t axis = (uint32_t)V(K_AXIS), start = (uint32_t)V(K_START), stop = (uint32_t)V(K_STOP); /* >= 0 */
        if (axis >= rank) {
            return NPUKIT_E_GRAPH;
        }
        if (IS(def, NPUKIT_OP_SLICE)) {
            if (start >= stop || stop > dim(in, axis)) {
                return NPUKIT_E_GRAPH;
            }
            sum = stop - start;
        }
        for (i = 0; IS(def, NPUKIT_OP_CONCAT) && i < v->n_in; i++) {
            const shape_t t = shape(x, v_tensor(x, v, i));
            if (t.rank != rank) {
                return NPUKIT_E_GRAPH;
            }
            for (k = 0; k < rank; k++) {
                if (k != axis && dim(&t, k) != dim(in, k)) {
                    return NPUKIT_E_GRAPH;
                }
            }
            sum += dim(&t, axis);
            if (sum < dim(&t, axis)) {
                return NPUKIT_E_GRAPH; /* the sum wraps: beyond every dimension */
            }
        }
        want[axis] = sum;
        break;
    }
    case ON(NPUKIT_OP_PAD):      /* Pad.infer_shapes: each spatial axis grows by its start and end pads */
    case ON(NPUKIT_OP_UPSAMPLE): { /* Upsample.infer_shapes: one factor per spatial axis, 1 or 2 of them */
        const uint32_t pad = (uint32_t)IS(def, NPUKIT_OP_PAD);
        a = &v->a[pad ? K_PADS : K_SCALE];
        if ((rank != 2 && rank != 3) || a->count != (pad + 1) * (rank - 1) || v->sh[S_OUT].rank != rank ||
            !same_channels(v)) {
            return NPUKIT_E_GRAPH;
        }
        for (k = 1; k < rank; k++) {
            /* out = in + start + end, or in * factor, as differences and quotients that cannot wrap */
            const uint32_t n = dim(in, k), o = dim(&v->sh[S_OUT], k);
            const uint32_t f = (uint32_t)attr_int(x, a, k - 1); /* pads >= 0, factors >= 1 (the schema) */
            if (pad ? o < n || o - n < f || o - n - f != (uint32_t)attr_int(x, a, k - 1 + rank - 1)
                    : o % f != 0 || o / f != n) {
                return NPUKIT_E_GRAPH;
            }
        }
        return NPUKIT_OK;
    }
    case ON(NPUKIT_OP_MUL): { /* Mul.infer_shapes: b is a's shape with size 1 in trailing dimensions */
        uint32_t split = rank;
        if (v->sh[S_IN1].rank != rank) {
            return NPUKIT_E_GRAPH;
        }
        for (k = 0; k < rank; k++) {
            if (split == rank && dim(&v->sh[S_IN1], k) != dim(in, k)) {
                split = k;
            }
            if (k >= split && dim(&v->sh[S_IN1], k) != 1) {
                return NPUKIT_E_GRAPH;
            }
        }
        break; /* the output: a's shape */
    }
    default: /* reshape: the target shape is the output's, with the input's element count */
        a = &v->a[K_SHAPE];
        if (a->count > MAX_RANK || v->t[S_IN]->elems != v->t[S_OUT]->elems) {
            return NPUKIT_E_GRAPH; /* (no output has more dimensions) */
        }
        rank = a->count;
        for (k = 0; k < rank; k++) {
            want[k] = (uint32_t)attr_int(x, a, k); /* each >= 1 (the schema) */
        }
        break;
    }
    if (v->sh[S_OUT].rank != rank) {
        return NPUKIT_E_GRAPH;
    }
    for (k = 0; k < rank; k++) {
        if (dim(&v->sh[S_OUT], k) != want[k]) {
            return NPUKIT_E_GRAPH;
        }
    }
    return NPUKIT_OK;
}

/* What each kernel assumes of its tensors' widths and exponents (OpDef.tensor_problems). */
static int tensor_problems(const ctx_t *x, const view_t *v, const opdef_t *def)
{
    const npukit_tensor_t *T = x->m->tensors;
    const npukit_tensor_t *in = v->t[S_IN], *out = v->t[S_OUT];
    uint32_t k;
    if (def->passes_through && (in->bits != out->bits || in->exp != out->exp)) {
        return NPUKIT_E_GRAPH;
    }
    if ((1u << NPUKIT_OP_ADD | 1u << NPUKIT_OP_CONCAT | 1u << NPUKIT_OP_MUL) >> def->kind & 1u && out->bits > 16) {
        return NPUKIT_E_GRAPH; /* element-wise ops write activations, never accumulators */
    }
    if (IS(def, NPUKIT_OP_PAD)) { /* Pad.tensor_problems: the value padded in is one of the input's */
        const int32_t value = V(K_VALUE);
        if (value > max32(in->bits) || value < -max32(in->bits) - 1) {
            return NPUKIT_E_GRAPH;
        }
    }
    if (IS(def, NPUKIT_OP_LUT)) { /* Lut.tensor_problems: one entry per input integer, in the output's range */
        const param_t *t;
        uint32_t i;
        t = &v->p[P_TABLE];
        if (in->bits > 8 || p_dim(x, t, 0) != (1u << in->bits)) {
            return NPUKIT_E_GRAPH;
        }
        for (i = 0; t->bits == 8 && i < t->count; i++) {
            /* -hi - 1 <= e <= hi, as one unsigned comparison */
            const uint32_t hi = (uint32_t)max32(out->bits);
            if ((uint32_t)(int8_t)x->d[t->data + i] + hi + 1u > 2u * hi + 1u) {
                return NPUKIT_E_GRAPH;
            }
        }
    }
    if (IS(def, NPUKIT_OP_CONCAT)) {
        for (k = 0; k < v->n_in; k++) {
            const npukit_tensor_t *t = &T[v_tensor(x, v, k)];
            if (t->bits != out->bits || t->exp < out->exp) {
                return NPUKIT_E_GRAPH; /* same width; operands only shift right */
            }
        }
    }
    if (def->mac) {
        /* The stored requantisation must be the one the scheme computes from the tensors (Scheme.mac_attrs;
         * pow2 and max78000 compute it alike); a fused clamp may narrow the output range. */
        int32_t e_acc, lo, hi, act_min, act_max;
        int wide, relu, absolute, clamp, narrowed;
        if (in->bits > 16) {
            return NPUKIT_E_GRAPH;
        }
        if (out->bits > 32) {
            return NPUKIT_E_UNSUPPORTED; /* (mac_params too) so that the range below is exact in int32 */
        }
        e_acc = in->exp + (int32_t)V(K_W_EXP); /* |w_exp|, |b_exp| <= EXP_LIMIT (exp_ranges) */
        wide = (int)V(K_WIDE);
        relu = (int)V(K_RELU);
        absolute = (int)V(K_ABS);
        clamp = (int)V(K_CLAMP);
        if (wide && out->exp != e_acc) {
            return NPUKIT_E_GRAPH;
        }
        hi = max32(out->bits);
        lo = wide || !relu ? -hi - 1 : 0;
        act_min = V(K_ACT_MIN);
        act_max = V(K_ACT_MAX);
        narrowed = clamp && lo <= act_min && act_min <= act_max && act_max <= hi;
        if (!narrowed && (act_min != lo || act_max != hi || clamp)) {
            return NPUKIT_E_GRAPH;
        }
        if (absolute && wide) {
            return NPUKIT_E_GRAPH;
        }
        if (V(K_BIAS_SHIFT) != e_acc - (int32_t)V(K_B_EXP)) {
            return NPUKIT_E_GRAPH;
        }
        if (V(K_OUT_SHIFT) != (wide ? 0 : e_acc - out->exp)) {
            return NPUKIT_E_GRAPH;
        }
    }
    /* the kernels read int8 activations and, but conv and linear, write them (a reshape copies bytes); the
     * operands of a concat have its output's width (above), an add more than two refused as its kernel's
     * parameters are set */
    for (k = 0; def->kind != NPUKIT_OP_RESHAPE && k < 3; k++) { /* S_IN, S_IN1, S_OUT: a loop is smaller */
        if (v->t[k]->bits > 8 && (k != S_OUT || !def->mac)) {
            return NPUKIT_E_UNSUPPORTED;
        }
    }
    return NPUKIT_OK;
}

/* A tensor a kernel reads or writes: placed by the plan, at an offset aligned for its element type
 * (the planner aligns to 4), and with an element count that fits the kernels' int32 counts. */
static int usable(const npukit_tensor_t *t)
{
    const uint32_t align = t->elem_bytes < 4 ? t->elem_bytes : 4;
    return t->offset != NO_OFFSET && (t->offset & (align - 1u)) == 0 && t->elems <= (uint32_t)INT32_MAX;
}

/* Graph.validate's range checks of an op: its w_exp and b_exp attributes, where it has them. */
static int exp_ranges(const view_t *v)
{
    uint32_t key;
    for (key = K_W_EXP; key <= K_B_EXP; key++) {
        const attr_t *a = &v->a[key];
        if (!a->found) {
            continue;
        }
        if ((a->kind != A_INT && a->kind != A_BOOL) || v->first[key] < -EXP_LIMIT || v->first[key] > EXP_LIMIT) {
            return NPUKIT_E_GRAPH; /* isinstance(v, int): a bool passes, as in Python */
        }
    }
    return NPUKIT_OK;
}

static int check_graph(ctx_t *x)
{
    npukit_model_t *m = x->m;
    uint32_t i, k;
    /* modelbin._check_graph: every known op's schema first, in op order */
    for (i = 0; i < m->n_ops; i++) {
        view_t vv;
        const view_t *v = &vv;
        const opdef_t *def;
        view(x, m->ops[i].inputs, &vv);
        def = op_def(x, v->op);
        /* an op this build leaves out (NPUKIT_OPS; the test folds away in a build that leaves none out) */
        if ((~(NPUKIT_OPS) & ALL_OPS) != 0 && def && !((NPUKIT_OPS) >> def->kind & 1u)) {
            return NPUKIT_E_UNSUPPORTED;
        }
        if (def) {
            TRY(check_schema(x, v, def));
        }
        TRY(exp_ranges(v)); /* Graph.validate's, made in this pass (the order only picks between refusals) */
    }
    /* then the rest of Graph.validate: every tensor's bits and exponent, */
    for (i = 0; i < m->n_tensors; i++) {
        const npukit_tensor_t *t = &m->tensors[i];
        if (t->bits < 2 || t->exp < -EXP_LIMIT || t->exp > EXP_LIMIT) {
            return NPUKIT_E_GRAPH;
        }
        x->defined[i] = x->role[i] & 1u; /* the inputs */
    }
    for (i = 0; i < m->n_ops; i++) {
        view_t vv;
        const view_t *v = &vv;
        const opdef_t *def;
        view(x, m->ops[i].inputs, &vv);
        def = op_def(x, v->op);
        if (!def) {
            return NPUKIT_E_GRAPH; /* an unknown op */
        }
        for (k = 0; k < v->n_in; k++) {
            if (!x->defined[v_tensor(x, v, k)]) {
                return NPUKIT_E_GRAPH; /* read before it is written */
            }
        }
        for (k = 0; k < v->n_out; k++) {
            const uint32_t t = v_tensor(x, v, v->n_in + k);
            if (x->defined[t]) {
                return NPUKIT_E_GRAPH; /* written twice */
            }
            x->defined[t] = 1;
        }
        if (v->n_out != 1 || v->n_in < def->min_in || v->n_in > def->max_in) {
            return NPUKIT_E_GRAPH;
        }
        bind_shapes(x, &vv);
        TRY(shape_of(x, v, def, &m->ops[i]));
        TRY(tensor_problems(x, v, def));
    }
    for (i = 0; i < m->n_tensors; i++) {
        if ((x->role[i] & 2u) && !x->defined[i]) {
            return NPUKIT_E_GRAPH; /* an output nothing produces */
        }
        if (x->defined[i] && !usable(&m->tensors[i])) {
            return NPUKIT_E_UNSUPPORTED; /* an input or an op's output: every tensor an op reads or writes */
        }
    }
    return NPUKIT_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Kernel calls: what the kernels can run, and their parameters (OpDef.to_c) */

static int extent_ok(uint64_t v)
{
    return v <= (uint64_t)NPUKIT_MAX_EXTENT;
}

/* The fields that lead nk_conv_params and nk_linear_params alike: weight bits, requantisation, output width
 * (set through conv's: a common initial sequence of the union). */
static int mac_params(const ctx_t *x, const view_t *v, npukit_op_t *op, const npukit_tensor_t *out)
{
    int32_t *w_bits = &op->p.conv.w_bits;
    nk_requant_params *rq = &op->p.conv.rq;
    int32_t *out_bytes = &op->p.conv.out_bytes;
    const param_t *w, *b;
    w = &v->p[P_WEIGHT];
    b = &v->p[P_BIAS];
    if (!(out->bits <= 8 || out->bits > 16) || b->bits != 32 || w->count > (uint32_t)INT32_MAX) {
        return NPUKIT_E_UNSUPPORTED; /* int8 or int32 outputs (tensor_problems: <= 32 bits), int32 biases */
    }
    op->weight = x->d + w->data;
    op->bias = (const int32_t *)(const void *)(x->d + b->data); /* 4-aligned: bin, the section, the param */
    *w_bits = (int32_t)w->bits;
    *out_bytes = out->bits <= 8 ? 1 : 4;
    rq->bias_shift = (int32_t)V(K_BIAS_SHIFT); /* tensor_problems bounds both shifts by 3 * EXP_LIMIT */
    rq->out_shift = (int32_t)V(K_OUT_SHIFT);
    rq->acc_max = ((int64_t)1 << (V(K_ACC_BITS) - 1)) - 1; /* acc_bits 2 .. 62 (check_schema) */
    rq->acc_min = -rq->acc_max - 1;
    rq->act_min = (int32_t)V(K_ACT_MIN); /* inside the output type: tensor_problems */
    rq->act_max = (int32_t)V(K_ACT_MAX);
    rq->abs = (int32_t)V(K_ABS);
    rq->rounding = (nk_rounding)lookup(x, (uint32_t)V(K_ROUNDING), ROUNDINGS, 4);
    return NPUKIT_OK;
}

/* Spatial extents as the kernels see them: a 1-d tensor (C, L) is (C, 1, L). */
static int spatial(const shape_t *s, int32_t *c, int32_t *h, int32_t *w)
{
    uint32_t k;
    if (s->rank != 2 && s->rank != 3) {
        return NPUKIT_E_UNSUPPORTED;
    }
    for (k = 0; k < s->rank; k++) {
        if (!extent_ok(dim(s, k))) {
            return NPUKIT_E_UNSUPPORTED;
        }
    }
    *c = (int32_t)dim(s, 0);
    *h = s->rank == 3 ? (int32_t)dim(s, 1) : 1;
    *w = (int32_t)dim(s, s->rank - 1);
    return NPUKIT_OK;
}


/* A linear's sizes; the channels of a conv, conv_transpose or pool (shape_window set the spatial geometry)
 * and a conv's groups; then a linear's or conv's requantisation (mac_params, called once here). */
static int prepare_mac_pool(const ctx_t *x, const view_t *v, const opdef_t *def, npukit_op_t *op)
{
    nk_conv_params *p = &op->p.conv;
    const uint32_t in_c = dim(&v->sh[S_IN], 0), out_c = dim(&v->sh[S_OUT], 0);
    const int linear = IS(def, NPUKIT_OP_LINEAR);
    if (linear) {
        op->p.linear.out_features = (int32_t)v->t[S_OUT]->elems;
        op->p.linear.in_features = (int32_t)v->t[S_IN]->elems;
    } else {
        if (!extent_ok(in_c) || !extent_ok(out_c)) {
            return NPUKIT_E_UNSUPPORTED;
        }
        if (!def->mac) {
            op->p.pool.c = (int32_t)in_c;
            op->p.pool.rounding = x->m->pool_rounding;
            return NPUKIT_OK;
        }
        p->in_c = (int32_t)in_c;
        p->out_c = (int32_t)out_c;
        p->groups = (int32_t)V(K_GROUPS);
        if (p->out_c % p->groups != 0) {
            return NPUKIT_E_UNSUPPORTED; /* the engine cannot run out channels that groups do not divide either */
        }
    }
    return mac_params(x, v, op, v->t[S_OUT]);
}

static int prepare_op(const ctx_t *x, uint32_t i)
{
    npukit_op_t *op = &x->m->ops[i];
    const npukit_tensor_t *tin, *tin1, *tout;
    const opdef_t *def;
    view_t vv;
    const view_t *v = &vv;
    uint32_t k;
    const attr_t *a;
    view(x, op->inputs, &vv);
    bind_shapes(x, &vv);
    def = op_def(x, v->op);
    op->kind = def->kind;
    op->n_in = (uint8_t)v->n_in;
    op->in[0] = (uint16_t)v_tensor(x, v, 0);
    op->in[1] = (uint16_t)v_tensor(x, v, v->n_in > 1 ? 1 : 0);
    op->out = (uint16_t)v_tensor(x, v, v->n_in);
    op->weight = NULL;
    op->bias = NULL;
    tin = v->t[S_IN];
    tin1 = v->t[S_IN1];
    tout = v->t[S_OUT];
    switch ((unsigned)def->kind) {
    case ON(NPUKIT_OP_CONV):
    case ON(NPUKIT_OP_CONV_TRANSPOSE): /* the same parameters, read by nk_conv_transpose as its geometry */
    case ON(NPUKIT_OP_MAXPOOL):
    case ON(NPUKIT_OP_AVGPOOL):
    case ON(NPUKIT_OP_LINEAR):
        return prepare_mac_pool(x, v, def, op);
    case ON(NPUKIT_OP_GLOBAL_AVGPOOL):
        op->p.gap.c = (int32_t)dim(&v->sh[S_IN], 0);
        op->p.gap.hw = (int32_t)(tin->elems / (uint32_t)op->p.gap.c);
        op->p.gap.rounding = x->m->pool_rounding;
        return NPUKIT_OK;
    case ON(NPUKIT_OP_ADD):
    case ON(NPUKIT_OP_MUL): {
        const npukit_tensor_t *out = tout;
        if (IS(def, NPUKIT_OP_ADD)) {
            if (v->n_in != 2) {
                return NPUKIT_E_UNSUPPORTED; /* nk_add adds two operands; more would saturate only once */
            }
            op->p.add.n = (int32_t)out->elems;
            op->p.add.a_shift = tin->exp - out->exp;
            op->p.add.b_shift = tin1->exp - out->exp;
        } else {
            /* outer: the product of the leading dimensions b shares with a, b's element count (shape_of: its
             * other dimensions are 1) */
            op->p.mul.outer = (int32_t)tin1->elems;
            op->p.mul.inner = (int32_t)(tin->elems / tin1->elems);
            op->p.mul.shift = tin->exp + tin1->exp - out->exp;
        }
        /* mul's act_min, act_max and rounding too: the two structs have one layout (a common initial sequence) */
        op->p.add.act_max = max32(out->bits);
        op->p.add.act_min = V(K_RELU) ? 0 : -op->p.add.act_max - 1;
        op->p.add.rounding = x->m->rounding;
        return NPUKIT_OK;
    }
    case ON(NPUKIT_OP_CONCAT):
    case ON(NPUKIT_OP_SLICE): {
        const uint32_t axis = (uint32_t)V(K_AXIS);
        uint32_t outer = 1;
        for (k = 0; k < axis; k++) {
            outer *= dim(&v->sh[S_IN], k); /* the dims before the axis, the output's too: at most elems < 2^32 */
        }
        op->p.slice.outer = (int32_t)outer; /* concat's too: the two structs begin alike */
        if (IS(def, NPUKIT_OP_SLICE)) {
            const uint32_t in_inner = tin->elems / outer;
            op->p.slice.in_inner = (int32_t)in_inner;
            op->p.slice.offset = (int32_t)((uint32_t)V(K_START) * (in_inner / dim(&v->sh[S_IN], axis)));
            op->p.slice.part_inner = (int32_t)(tout->elems / outer);
        } else {
            op->p.concat.out_inner = (int32_t)(tout->elems / outer);
            op->p.concat.rounding = x->m->rounding;
        }
        return NPUKIT_OK;
    }
    case ON(NPUKIT_OP_PAD):
    case ON(NPUKIT_OP_UPSAMPLE): {
        const uint32_t rank = v->sh[S_IN].rank;
        /* c, h, w lead both structs (a common initial sequence of the union): set once, through pad's */
        TRY(spatial(&v->sh[S_IN], &op->p.pad.c, &op->p.pad.h, &op->p.pad.w));
        if (IS(def, NPUKIT_OP_PAD)) {
            a = &v->a[K_PADS]; /* (top, left, bottom, right), or (left, right) for a 1-d input */
            op->p.pad.top = rank == 3 ? attr_int(x, a, 0) : 0;
            op->p.pad.bottom = rank == 3 ? attr_int(x, a, 2) : 0;
            op->p.pad.left = attr_int(x, a, rank - 2);
            op->p.pad.right = attr_int(x, a, 2 * rank - 3);
            op->p.pad.value = (int32_t)V(K_VALUE);
        } else {
            a = &v->a[K_SCALE];
            op->p.upsample.sh = rank == 3 ? (int32_t)attr_int(x, a, 0) : 1;
            op->p.upsample.sw = (int32_t)attr_int(x, a, rank - 2);
        }
        return NPUKIT_OK;
    }
    case ON(NPUKIT_OP_RELU):
    case ON(NPUKIT_OP_LUT): {
        const param_t *t;
        t = &v->p[P_TABLE];
        if (IS(def, NPUKIT_OP_LUT)) {
            if (t->bits != 8) {
                return NPUKIT_E_UNSUPPORTED; /* nk_lut reads an int8 table (a 16-bit output's is int16) */
            }
            op->weight = x->d + t->data;
            op->p.lut.offset = (int32_t)1 << (tin->bits - 1);
        }
        op->p.lut.n = (int32_t)tout->elems; /* relu's n too: the two structs begin alike */
        return NPUKIT_OK;
    }
    default: /* reshape: a view, or a copy of nbytes */
        return NPUKIT_OK;
    }
}

static int prepare(ctx_t *x)
{
    npukit_model_t *m = x->m;
    const uint16_t one = 1;
    uint32_t i;
    if (*(const uint8_t *)&one != 1) {
        return NPUKIT_E_UNSUPPORTED; /* biases are read in place as little-endian int32 */
    }
    if (m->n_inputs == 0 || m->n_outputs == 0) {
        return NPUKIT_E_UNSUPPORTED;
    }
    for (i = 0; i < m->n_ops; i++) {
        TRY(prepare_op(x, i));
    }
    return NPUKIT_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* API */

int npukit_load(const uint8_t *bin, size_t len, npukit_model_t *m)
{
    ctx_t x;
    uint32_t n_sections;
    if (m == NULL) {
        return NPUKIT_E_ARG;
    }
    m->loaded = 0;
    if ((bin == NULL && len > 0) || ((uintptr_t)(const void *)bin & 3u) != 0) {
        return NPUKIT_E_ARG;
    }
    memset(&x, 0, sizeof x);
    x.d = bin;
    x.len = len;
    x.m = m;
    m->bin = bin;
    m->len = len;
    m->n_tensors = 0;
    m->n_ops = 0;
    TRY(read_header(&x, &n_sections));
    TRY(read_sections(&x, n_sections));
    TRY(read_strings(&x));
    TRY(read_device(&x));
    TRY(read_plan(&x));
    TRY(read_tensors(&x));
    TRY(read_io(&x));
    TRY(read_ops(&x));
    TRY(check_graph(&x));
    TRY(prepare(&x));
    m->loaded = LOADED;
    return NPUKIT_OK;
}

/* One array of the messages, by -status, NUL-separated: in a section of its own (-fdata-sections), so that a
 * firmware that never calls npukit_strerror links none of it (string literals share one section). */
static const char MESSAGES[] =
        "ok" "\0"
        "invalid argument (NULL pointer, model not loaded, or model bytes not 4-byte aligned)" "\0"
        "not an npukit model.bin (it does not start with NPUK)" "\0"
        "the file is not the size its header says (truncated, or trailing bytes)" "\0"
        "a model.bin format version this runtime does not read (it reads version 3)" "\0"
        "CRC mismatch: the file is damaged" "\0"
        "invalid header (flags set, or a section count that does not fit)" "\0"
        "invalid section table (unknown, repeated, missing, misplaced or overlapping section)" "\0"
        "a count or record runs past the end of its section, or bytes are left over" "\0"
        "a string, tensor or memory index outside its table" "\0"
        "a field out of range (rank, dimension, bits, role, size, arena, attribute or parameter)" "\0"
        "invalid device section (an unknown rounding mode, or its reserved byte set)" "\0"
        "invalid graph (op attributes, parameters, shapes, order or tensor widths)" "\0"
        "a valid model this runtime cannot run (see docs/model-format.md)" "\0"
        "more tensors or ops than this build's tables hold (NPUKIT_MAX_TENSORS, NPUKIT_MAX_OPS)" "\0"
        "the arena is smaller than the model needs, or not 4-byte aligned" "\0"
        "an input value lies outside the input tensor's bit range" "\0"
        "the model has several inputs or outputs: run it with npukit_invoke_io" "\0"
        "unknown npukit status";

const char *npukit_strerror(int status)
{
    const char *s = MESSAGES;
    int k = status > 0 || status < NPUKIT_E_IO ? 1 - NPUKIT_E_IO : -status; /* past the last: the default */
    for (; k > 0; k--) {
        s += strlen(s) + 1;
    }
    return s;
}

size_t npukit_arena_bytes(const npukit_model_t *m)
{
    return m->arena_bytes;
}

size_t npukit_input_bytes(const npukit_model_t *m)
{
    return m->tensors[m->input].nbytes;
}

size_t npukit_output_bytes(const npukit_model_t *m)
{
    return m->tensors[m->output].nbytes;
}

npukit_dtype npukit_input_dtype(const npukit_model_t *m)
{
    return (npukit_dtype)m->tensors[m->input].elem_bytes;
}

npukit_dtype npukit_output_dtype(const npukit_model_t *m)
{
    return (npukit_dtype)m->tensors[m->output].elem_bytes;
}

int npukit_input_exp(const npukit_model_t *m)
{
    return m->tensors[m->input].exp;
}

int npukit_output_exp(const npukit_model_t *m)
{
    return m->tensors[m->output].exp;
}

unsigned npukit_num_inputs(const npukit_model_t *m)
{
    return m != NULL && m->loaded == LOADED ? m->n_inputs : 0;
}

unsigned npukit_num_outputs(const npukit_model_t *m)
{
    return m != NULL && m->loaded == LOADED ? m->n_outputs : 0;
}

static int io_info(const npukit_model_t *m, uint32_t t, npukit_io_info *info)
{
    const npukit_tensor_t *v = &m->tensors[t];
    info->bytes = v->nbytes;
    info->dtype = (npukit_dtype)v->elem_bytes;
    info->exp = v->exp;
    info->name = (const char *)(m->bin + v->name_at);
    info->name_len = v->name_len;
    return NPUKIT_OK;
}

int npukit_input_info(const npukit_model_t *m, unsigned i, npukit_io_info *info)
{
    if (m == NULL || m->loaded != LOADED || info == NULL || i >= m->n_inputs) {
        return NPUKIT_E_ARG;
    }
    return io_info(m, m->inputs[i], info);
}

int npukit_output_info(const npukit_model_t *m, unsigned i, npukit_io_info *info)
{
    if (m == NULL || m->loaded != LOADED || info == NULL || i >= m->n_outputs) {
        return NPUKIT_E_ARG;
    }
    return io_info(m, m->outputs[i], info);
}

/* The engine refuses inputs outside the input's bit range (engine.run_checked_input); so does this: a value
 * is in range when its bits from bits - 1 up are all its sign bit (little-endian: prepare). */
NOINLINE static int input_in_range(const npukit_tensor_t *t, const uint8_t *in)
{
    const uint32_t width = 8u * t->elem_bytes;
    uint32_t i, b;
    for (i = 0; i < t->elems; i++, in += t->elem_bytes) {
        const uint32_t sign = in[t->elem_bytes - 1] >> 7;
        for (b = t->bits - 1; b < width; b++) {
            if ((in[b / 8] >> (b % 8) & 1u) != sign) {
                return 0;
            }
        }
    }
    return 1;
}

/* The trace hook (NPUKIT_TRACE): the invoke loop below takes it as TRACE_ARGS and calls it through TRACE. */
#if NPUKIT_TRACE
#define TRACE_PARAMS , npukit_trace_fn trace, void *user
#define TRACE_ARGS(trace, user) , trace, user
#define TRACE(t) trace_tensor(m, a, (t), trace, user)

static void trace_tensor(const npukit_model_t *m, const uint8_t *a, uint32_t t, npukit_trace_fn trace, void *user)
{
    const npukit_tensor_t *v = &m->tensors[t];
    if (trace != NULL) {
        trace(user, (const char *)(m->bin + v->name_at), v->name_len, a + v->offset, v->nbytes);
    }
}
#else
#define TRACE_PARAMS
#define TRACE_ARGS(trace, user)
#define TRACE(t) ((void)0)
#endif

static int invoke_io(const npukit_model_t *m, void *arena, size_t arena_len, const void *const *ins, void *const *outs
                     TRACE_PARAMS);

static int invoke(const npukit_model_t *m, void *arena, size_t arena_len, const void *in, void *out TRACE_PARAMS)
{
    const void *ins[1];
    void *outs[1];
    ins[0] = in;
    outs[0] = out;
    if (m == NULL || m->loaded != LOADED || arena == NULL || in == NULL || out == NULL) {
        return NPUKIT_E_ARG;
    }
    if (arena_len < m->arena_bytes || ((uintptr_t)arena & 3u) != 0) {
        return NPUKIT_E_ARENA;
    }
    if (m->n_inputs != 1 || m->n_outputs != 1) {
        return NPUKIT_E_IO; /* one buffer cannot hold several tensors: the caller must say where each goes */
    }
    return invoke_io(m, arena, arena_len, ins, outs TRACE_ARGS(trace, user));
}

int npukit_invoke(const npukit_model_t *m, void *arena, size_t arena_len, const void *in, void *out)
{
    return invoke(m, arena, arena_len, in, out TRACE_ARGS(NULL, NULL));
}

int npukit_invoke_io(const npukit_model_t *m, void *arena, size_t arena_len, const void *const *ins,
                     void *const *outs)
{
    return invoke_io(m, arena, arena_len, ins, outs TRACE_ARGS(NULL, NULL));
}

#if NPUKIT_TRACE
int npukit_invoke_traced(const npukit_model_t *m, void *arena, size_t arena_len, const void *in, void *out,
                         npukit_trace_fn trace, void *user)
{
    return invoke(m, arena, arena_len, in, out, trace, user);
}

int npukit_invoke_io_traced(const npukit_model_t *m, void *arena, size_t arena_len, const void *const *ins,
                            void *const *outs, npukit_trace_fn trace, void *user)
{
    return invoke_io(m, arena, arena_len, ins, outs, trace, user);
}
#endif

static int invoke_io(const npukit_model_t *m, void *arena, size_t arena_len, const void *const *ins, void *const *outs
                     TRACE_PARAMS)
{
    uint8_t *a = (uint8_t *)arena;
    uint32_t i;
    if (m == NULL || m->loaded != LOADED || arena == NULL || ins == NULL || outs == NULL) {
        return NPUKIT_E_ARG;
    }
    for (i = 0; i < (uint32_t)m->n_inputs + m->n_outputs; i++) { /* the inputs', then the outputs' pointers */
        if ((i < m->n_inputs ? ins[i] : outs[i - m->n_inputs]) == NULL) {
            return NPUKIT_E_ARG;
        }
    }
    if (arena_len < m->arena_bytes || ((uintptr_t)arena & 3u) != 0) {
        return NPUKIT_E_ARENA;
    }
    for (i = 0; i < m->n_inputs; i++) { /* all checked before any is copied: a refused sample writes nothing */
        if (!input_in_range(&m->tensors[m->inputs[i]], (const uint8_t *)ins[i])) {
            return NPUKIT_E_INPUT;
        }
    }
    for (i = 0; i < m->n_inputs; i++) {
        memcpy(a + m->tensors[m->inputs[i]].offset, ins[i], m->tensors[m->inputs[i]].nbytes);
    }
    for (i = 0; i < m->n_inputs; i++) {
        TRACE(m->inputs[i]);
    }
    for (i = 0; i < m->n_ops; i++) {
        const npukit_op_t *op = &m->ops[i];
        const npukit_tensor_t *y = &m->tensors[op->out];
        const int8_t *x0 = (const int8_t *)(a + m->tensors[op->in[0]].offset);
        const int8_t *x1 = (const int8_t *)(a + m->tensors[op->in[1]].offset); /* in[0] again for one input */
        int8_t *y8 = (int8_t *)(a + y->offset);
        switch ((unsigned)op->kind) {
        case ON(NPUKIT_OP_CONV):
            nk_conv(&op->p.conv, x0, op->weight, op->bias, y8);
            break;
        case ON(NPUKIT_OP_CONV_TRANSPOSE):
            nk_conv_transpose(&op->p.conv, x0, op->weight, op->bias, y8);
            break;
        case ON(NPUKIT_OP_LINEAR):
            nk_linear(&op->p.linear, x0, op->weight, op->bias, y8);
            break;
        case ON(NPUKIT_OP_MAXPOOL):
            nk_maxpool(&op->p.pool, x0, y8);
            break;
        case ON(NPUKIT_OP_AVGPOOL):
            nk_avgpool(&op->p.pool, x0, y8);
            break;
        case ON(NPUKIT_OP_GLOBAL_AVGPOOL):
            nk_global_avgpool(&op->p.gap, x0, y8);
            break;
        case ON(NPUKIT_OP_ADD):
            nk_add(&op->p.add, x0, x1, y8);
            break;
        case ON(NPUKIT_OP_CONCAT): {
            /* each operand in turn into its slice of every outer block (OpDef.to_c of concat) */
            nk_concat_params c = op->p.concat;
            uint32_t k;
            c.offset = 0;
            for (k = 0; k < op->n_in; k++) {
                const npukit_tensor_t *t = &m->tensors[rd16(m->bin + op->inputs + 2 * (size_t)k)];
                c.part_inner = (int32_t)(t->elems / (uint32_t)c.outer);
                c.shift = t->exp - y->exp;
                nk_concat_part(&c, (const int8_t *)(a + t->offset), y8);
                c.offset += c.part_inner;
            }
            break;
        }
        case ON(NPUKIT_OP_RELU):
            nk_relu(op->p.relu.n, x0, y8);
            break;
        case ON(NPUKIT_OP_LUT):
            nk_lut(&op->p.lut, x0, (const int8_t *)op->weight, y8);
            break;
        case ON(NPUKIT_OP_SLICE):
            nk_slice(&op->p.slice, x0, y8);
            break;
        case ON(NPUKIT_OP_PAD):
            nk_pad(&op->p.pad, x0, y8);
            break;
        case ON(NPUKIT_OP_UPSAMPLE):
            nk_upsample(&op->p.upsample, x0, y8);
            break;
        case ON(NPUKIT_OP_MUL):
            nk_mul(&op->p.mul, x0, x1, y8);
            break;
        default: /* reshape: the planner usually aliases it; otherwise the bytes move */
            if (m->tensors[op->in[0]].offset != y->offset) {
                memmove(y8, x0, y->nbytes);
            }
            break;
        }
        TRACE(op->out);
    }
    for (i = 0; i < m->n_outputs; i++) {
        memcpy(outs[i], a + m->tensors[m->outputs[i]].offset, m->tensors[m->outputs[i]].nbytes);
    }
    return NPUKIT_OK;
}
