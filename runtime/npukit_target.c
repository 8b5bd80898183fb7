/* npukit runtime: the target section (a zlib stream of the profile's JSON) without zlib and without a heap.
 *
 * The inflater streams: each byte it produces goes into a ring window (for back-references) and straight
 * into a JSON scanner, so the text itself is never stored. It follows RFC 1950/1951 and refuses what
 * zlib's inflate (which the Python reader uses) refuses: bad header check, method, window size or preset
 * dictionary; over-subscribed or incomplete Huffman codes (except a single one-bit code); code lengths
 * that repeat nothing or run past the table; no end-of-block code; length symbols 286/287 and distance
 * symbols 30/31; a distance further back than the output so far; a stored block whose length check
 * fails; a wrong Adler-32; input ending early; any byte after the stream. Huffman codes are decoded a bit
 * at a time (the canonical-code walk of RFC 1951 3.2.2): a profile is a few KiB, read once, so speed does
 * not matter here, and the code stays small.
 *
 * The scanner is a validating JSON pushdown automaton with the grammar of Python's json.loads (which
 * also takes NaN, Infinity and -Infinity) on strictly decoded UTF-8, nesting at most JSON_DEPTH deep. It
 * extracts the few top-level members the runtime needs; a repeated key counts once, its last value, as
 * in Python.
 */
#include <string.h>

#include "npukit_runtime.h"
#include "npukit_target.h"

#if (NPUKIT_INFLATE_WINDOW & (NPUKIT_INFLATE_WINDOW - 1)) != 0 || NPUKIT_INFLATE_WINDOW < 256
#error "NPUKIT_INFLATE_WINDOW must be a power of two of at least 256"
#endif

#define MAX_TEXT (1UL << 20) /* as the Python reader: a profile is a few KiB; refuse to inflate beyond */
#define JSON_DEPTH 32        /* a profile nests 4 deep */
#define MAX_BITS 15          /* longest Huffman code */

/* ------------------------------------------------------------------------------------------------ */
/* JSON scanner */

enum { J_VALUE, J_ARR_FIRST, J_OBJ_FIRST, J_OBJ_KEY, J_COLON, J_AFTER, J_STR, J_ESC, J_HEX, J_NUM, J_LIT, J_DONE };
enum { N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP }; /* number states */
enum { V_STR, V_NUM, V_LIT, V_OBJ, V_ARR };                          /* value kinds */
enum { K_OTHER, K_NAME, K_TARGET_ID, K_SCHEME, K_ROUNDING, K_POOL_ROUNDING, K_MEMORY, K_COUNT };
enum { ABSENT, SET, BAD };

typedef struct {
    int state, err;
    unsigned depth;
    uint32_t arrays;        /* bit d set: the container at depth d + 1 is an array */
    /* the string being read: decoded into buf when it is short ASCII (the only strings compared) */
    int is_key;
    char buf[16];
    unsigned buf_len, hex_left;
    int buf_over;
    uint32_t hex;
    unsigned u8_need;       /* UTF-8 continuation bytes still expected, the next one in [u8_lo, u8_hi] */
    uint8_t u8_lo, u8_hi;
    /* the number being read */
    int num, num_int, num_neg, num_over;
    uint32_t num_val;
    const char *lit;        /* the rest of the literal being matched */
    /* top-level members */
    int key, val_key, val_kind;
    uint32_t mem_count;
    int status[K_COUNT];
    npukit_target_info *info;
} json_t;

static const char *const KEYS[K_COUNT] = {"", "name", "target_id", "scheme", "rounding", "pool_rounding", "memory"};

int npukit_rounding_mode(const uint8_t *s, size_t n)
{
    static const char *const MODES[4] = {"half_up", "half_even", "floor", "trunc"}; /* nk_rounding order */
    int i;
    for (i = 0; i < 4; i++) {
        if (strlen(MODES[i]) == n && memcmp(MODES[i], s, n) == 0) {
            return i;
        }
    }
    return -1;
}

static int buf_is(const json_t *j, const char *s)
{
    return !j->buf_over && strlen(s) == j->buf_len && memcmp(j->buf, s, j->buf_len) == 0;
}

static void buf_put(json_t *j, uint32_t c)
{
    if (c >= 0x80 || j->buf_len == sizeof j->buf) {
        j->buf_over = 1; /* not a string the runtime compares */
    } else {
        j->buf[j->buf_len++] = (char)c;
    }
}

/* A value of the top-level object is complete: record it if its key is one the runtime reads. */
static void commit(json_t *j)
{
    int ok = 0;
    npukit_target_info *t = j->info;
    switch (j->val_key) {
    case K_NAME:
        ok = j->val_kind == V_STR;
        break;
    case K_TARGET_ID: /* pydantic: int, 0..0xFFFF; json.dumps writes it as an integer literal */
        ok = j->val_kind == V_NUM && j->num_int && !j->num_over && (!j->num_neg || j->num_val == 0)
             && j->num_val <= 0xFFFFu;
        if (ok) {
            t->target_id = j->num_val;
        }
        break;
    case K_SCHEME: /* the per-layer schemes whose requantisation is nk_requant_params (npukit/schemes.py) */
        ok = j->val_kind == V_STR && (buf_is(j, "pow2") || buf_is(j, "max78000"));
        break;
    case K_ROUNDING:
    case K_POOL_ROUNDING: {
        const int mode = j->buf_over ? -1 : npukit_rounding_mode((const uint8_t *)j->buf, j->buf_len);
        ok = j->val_kind == V_STR && mode >= 0;
        if (ok) {
            *(j->val_key == K_ROUNDING ? &t->rounding : &t->pool_rounding) = (nk_rounding)mode;
        }
        break;
    }
    case K_MEMORY:
        ok = j->val_kind == V_ARR;
        if (ok) {
            t->n_memory = j->mem_count;
        }
        break;
    default:
        return;
    }
    j->status[j->val_key] = ok ? SET : BAD;
}

static void value_start(json_t *j, int kind)
{
    if (j->depth == 1) {
        j->val_key = j->key;
        j->val_kind = kind;
        j->mem_count = 0;
    } else if (j->depth == 2 && j->val_key == K_MEMORY && j->val_kind == V_ARR) {
        j->mem_count++; /* an element of the memory list */
    }
}

static void value_end(json_t *j)
{
    if (j->depth == 1) {
        commit(j);
    }
    j->state = j->depth ? J_AFTER : J_DONE;
}

static void push(json_t *j, int array)
{
    if (j->depth == JSON_DEPTH) {
        j->err = 1;
        return;
    }
    j->arrays = array ? j->arrays | ((uint32_t)1 << j->depth) : j->arrays & ~((uint32_t)1 << j->depth);
    j->depth++;
    j->state = array ? J_ARR_FIRST : J_OBJ_FIRST;
}

static void pop(json_t *j)
{
    j->depth--;
    value_end(j);
}

static int top_is_array(const json_t *j)
{
    return (int)((j->arrays >> (j->depth - 1)) & 1u);
}

static void string_start(json_t *j, int is_key)
{
    j->state = J_STR;
    j->is_key = is_key;
    j->buf_len = 0;
    j->buf_over = 0;
    j->u8_need = 0;
}

static void string_end(json_t *j)
{
    if (!j->is_key) {
        value_end(j);
        return;
    }
    if (j->depth == 1) {
        int k;
        j->key = K_OTHER;
        for (k = 1; k < K_COUNT; k++) {
            if (buf_is(j, KEYS[k])) {
                j->key = k;
            }
        }
    }
    j->state = J_COLON;
}

static int is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* A byte inside a string: escapes, control characters, strict UTF-8 (as Python's decoder). */
static void feed_string(json_t *j, uint8_t c)
{
    if (j->u8_need) {
        if (c < j->u8_lo || c > j->u8_hi) {
            j->err = 1;
        }
        j->u8_lo = 0x80;
        j->u8_hi = 0xBF;
        j->u8_need--;
        return;
    }
    if (c == '"') {
        string_end(j);
    } else if (c == '\\') {
        j->state = J_ESC;
    } else if (c < 0x20) {
        j->err = 1; /* json.loads is strict: no raw control characters */
    } else if (c < 0x80) {
        buf_put(j, c);
    } else {
        /* lead byte: 2..4-byte sequences, no overlongs, no surrogates, nothing above U+10FFFF */
        j->buf_over = 1;
        j->u8_lo = 0x80;
        j->u8_hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            j->u8_need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            j->u8_need = 2;
            j->u8_lo = c == 0xE0 ? 0xA0 : 0x80;
            j->u8_hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            j->u8_need = 3;
            j->u8_lo = c == 0xF0 ? 0x90 : 0x80;
            j->u8_hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            j->err = 1;
        }
    }
}

static int hex_digit(uint8_t c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
        return (c | 0x20) - 'a' + 10;
    }
    return -1;
}

/* A byte of a number; returns 1 when the byte ends the number and must be read again after it. */
static int feed_number(json_t *j, uint8_t c)
{
    const int digit = c >= '0' && c <= '9';
    switch (j->num) {
    case N_SIGN:
        if (c == 'I') { /* -Infinity */
            j->state = J_LIT;
            j->lit = "nfinity";
            return 0;
        }
        j->num = c == '0' ? N_ZERO : (digit ? N_INT : -1);
        break;
    case N_ZERO:
    case N_INT:
        if (digit && j->num == N_INT) {
            break;
        }
        if (c == '.') {
            j->num = N_DOT;
        } else if (c == 'e' || c == 'E') {
            j->num = N_E;
        } else {
            return 1;
        }
        j->num_int = 0;
        return 0;
    case N_DOT:
        j->num = digit ? N_FRAC : -1;
        break;
    case N_FRAC:
        if (digit) {
            return 0;
        }
        if (c == 'e' || c == 'E') {
            j->num = N_E;
            return 0;
        }
        return 1;
    case N_E:
        j->num = (c == '+' || c == '-') ? N_ESIGN : (digit ? N_EXP : -1);
        break;
    case N_ESIGN:
        j->num = digit ? N_EXP : -1;
        break;
    default: /* N_EXP */
        return digit ? 0 : 1;
    }
    if (j->num < 0) {
        j->err = 1;
    } else if (j->num_int && digit) {
        j->num_val = j->num_val * 10u + (uint32_t)(c - '0');
        if (j->num_val > 0xFFFFFu) {
            j->num_over = 1;
            j->num_val = 0xFFFFFu; /* capped: only small values are compared */
        }
    }
    return 0;
}

static void number_start(json_t *j, uint8_t c)
{
    value_start(j, V_NUM);
    j->state = J_NUM;
    j->num = N_SIGN;
    j->num_int = 1;
    j->num_neg = c == '-';
    j->num_over = 0;
    j->num_val = 0;
    if (c != '-') {
        (void)feed_number(j, c);
    }
}

static void json_feed(json_t *j, uint8_t c)
{
    for (;;) {
        switch (j->state) {
        case J_STR:
            feed_string(j, c);
            return;
        case J_ESC:
            j->state = J_STR;
            switch (c) {
            case '"': case '\\': case '/': buf_put(j, c); return;
            case 'b': buf_put(j, '\b'); return;
            case 'f': buf_put(j, '\f'); return;
            case 'n': buf_put(j, '\n'); return;
            case 'r': buf_put(j, '\r'); return;
            case 't': buf_put(j, '\t'); return;
            case 'u': j->state = J_HEX; j->hex_left = 4; j->hex = 0; return;
            default: j->err = 1; return;
            }
        case J_HEX:
            if (hex_digit(c) < 0) {
                j->err = 1;
                return;
            }
            j->hex = j->hex * 16u + (uint32_t)hex_digit(c);
            if (--j->hex_left == 0) {
                buf_put(j, j->hex);
                j->state = J_STR;
            }
            return;
        case J_NUM:
            if (feed_number(j, c)) {
                if (j->num != N_ZERO && j->num != N_INT && j->num != N_FRAC && j->num != N_EXP) {
                    j->err = 1;
                    return;
                }
                value_end(j);
                continue; /* the byte after the number: a separator, a closer or white space */
            }
            return;
        case J_LIT:
            if (c != (uint8_t)*j->lit) {
                j->err = 1;
                return;
            }
            if (*++j->lit == '\0') {
                value_end(j);
            }
            return;
        default:
            break;
        }
        if (is_ws(c)) {
            return;
        }
        switch (j->state) {
        case J_ARR_FIRST:
            if (c == ']') {
                pop(j);
                return;
            }
            j->state = J_VALUE;
            continue;
        case J_VALUE:
            if (j->depth == 0 && c != '{') {
                j->err = 1; /* the profile is a JSON object */
            } else if (c == '{' || c == '[') {
                value_start(j, c == '[' ? V_ARR : V_OBJ);
                push(j, c == '[');
            } else if (c == '"') {
                value_start(j, V_STR);
                string_start(j, 0);
            } else if (c == '-' || (c >= '0' && c <= '9')) {
                number_start(j, c);
            } else {
                static const char *const LITS[5] = {"true", "false", "null", "NaN", "Infinity"};
                int k;
                j->err = 1;
                for (k = 0; k < 5; k++) {
                    if ((uint8_t)LITS[k][0] == c) {
                        value_start(j, V_LIT);
                        j->state = J_LIT;
                        j->lit = LITS[k] + 1;
                        j->err = 0;
                    }
                }
            }
            return;
        case J_OBJ_FIRST:
            if (c == '}') {
                pop(j);
                return;
            }
            /* fall through */
        case J_OBJ_KEY:
            if (c == '"') {
                string_start(j, 1);
            } else {
                j->err = 1;
            }
            return;
        case J_COLON:
            if (c == ':') {
                j->state = J_VALUE;
            } else {
                j->err = 1;
            }
            return;
        case J_AFTER:
            if (c == ',') {
                j->state = top_is_array(j) ? J_VALUE : J_OBJ_KEY;
            } else if (c == (top_is_array(j) ? ']' : '}')) {
                pop(j);
            } else {
                j->err = 1;
            }
            return;
        default: /* J_DONE: white space only after the top-level object */
            j->err = 1;
            return;
        }
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Inflate */

typedef struct {
    const uint8_t *in;
    size_t n, pos;
    uint32_t bits;            /* bit buffer, low bits first; fewer than 8 after every read */
    unsigned nbits;
    uint32_t out;             /* bytes produced */
    uint32_t s1, s2;          /* Adler-32 */
    int err;                  /* NPUKIT_E_TARGET or NPUKIT_E_LIMIT */
    int (*sink)(void *, uint8_t);
    void *ctx;
    uint8_t win[NPUKIT_INFLATE_WINDOW];
} inflate_t;

typedef struct {
    uint16_t count[MAX_BITS + 1];  /* codes of each length */
    uint16_t symbol[288];          /* symbols in canonical order */
} huff_t;

static int fail(inflate_t *s, int code)
{
    if (!s->err) {
        s->err = code;
    }
    return -1;
}

/* `need` (<= 16) bits, low bits first; -1 (and s->err) when the input ends. */
static int32_t get_bits(inflate_t *s, unsigned need)
{
    uint32_t v;
    while (s->nbits < need) {
        if (s->pos == s->n) {
            return fail(s, NPUKIT_E_TARGET);
        }
        s->bits |= (uint32_t)s->in[s->pos++] << s->nbits;
        s->nbits += 8;
    }
    v = s->bits & (((uint32_t)1 << need) - 1u);
    s->bits >>= need;
    s->nbits -= need;
    return (int32_t)v;
}

static void emit(inflate_t *s, uint8_t c)
{
    if (s->out == MAX_TEXT) {
        fail(s, NPUKIT_E_TARGET);
        return;
    }
    s->win[s->out & (NPUKIT_INFLATE_WINDOW - 1)] = c;
    s->out++;
    s->s1 = (s->s1 + c) % 65521u;
    s->s2 = (s->s2 + s->s1) % 65521u;
    if (s->sink(s->ctx, c) != 0) {
        fail(s, NPUKIT_E_TARGET);
    }
}

/* Canonical Huffman code from code lengths: 0 complete, > 0 incomplete, < 0 over-subscribed. No codes at
 * all counts as complete (decoding then fails on the first symbol). */
static int huff_build(huff_t *h, const uint8_t *lens, unsigned n)
{
    uint16_t offs[MAX_BITS + 1];
    unsigned len, sym;
    int left = 1;
    memset(h->count, 0, sizeof h->count);
    for (sym = 0; sym < n; sym++) {
        h->count[lens[sym]]++;
    }
    if (h->count[0] == n) {
        return 0;
    }
    for (len = 1; len <= MAX_BITS; len++) {
        left = 2 * left - h->count[len];
        if (left < 0) {
            return left;
        }
    }
    offs[1] = 0;
    for (len = 1; len < MAX_BITS; len++) {
        offs[len + 1] = (uint16_t)(offs[len] + h->count[len]);
    }
    for (sym = 0; sym < n; sym++) {
        if (lens[sym]) {
            h->symbol[offs[lens[sym]]++] = (uint16_t)sym;
        }
    }
    return left;
}

/* One symbol, a bit at a time: codes of each length are consecutive integers (RFC 1951 3.2.2). */
static int huff_decode(inflate_t *s, const huff_t *h)
{
    int32_t code = 0, first = 0, index = 0;
    unsigned len;
    for (len = 1; len <= MAX_BITS; len++) {
        const int32_t bit = get_bits(s, 1);
        if (bit < 0) {
            return -1;
        }
        code |= bit;
        if (code - h->count[len] < first) {
            return h->symbol[index + (code - first)];
        }
        index += h->count[len];
        first = (first + h->count[len]) << 1;
        code <<= 1;
    }
    return fail(s, NPUKIT_E_TARGET); /* no such code */
}

static const uint16_t LEN_BASE[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                      35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t LEN_EXTRA[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t DIST_BASE[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
                                       1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t DIST_EXTRA[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10,
                                       11, 11, 12, 12, 13, 13};

/* The symbols of one compressed block, up to its end-of-block code. */
static int codes(inflate_t *s, const huff_t *lencode, const huff_t *distcode)
{
    for (;;) {
        int sym = huff_decode(s, lencode);
        int32_t len, dist, extra;
        if (sym < 0 || s->err) {
            return -1;
        }
        if (sym < 256) {
            emit(s, (uint8_t)sym);
            continue;
        }
        if (sym == 256) {
            return 0;
        }
        sym -= 257;
        if (sym >= 29) {
            return fail(s, NPUKIT_E_TARGET); /* length symbols 286, 287 */
        }
        extra = get_bits(s, LEN_EXTRA[sym]);
        len = LEN_BASE[sym] + extra;
        sym = huff_decode(s, distcode);
        if (extra < 0 || sym < 0) {
            return -1;
        }
        if (sym >= 30) {
            return fail(s, NPUKIT_E_TARGET); /* distance symbols 30, 31 (no table here decodes them) */
        }
        extra = get_bits(s, DIST_EXTRA[sym]);
        if (extra < 0) {
            return -1;
        }
        dist = DIST_BASE[sym] + extra;
        if ((uint32_t)dist > s->out) {
            return fail(s, NPUKIT_E_TARGET); /* before the start of the text */
        }
        if (dist > NPUKIT_INFLATE_WINDOW) {
            return fail(s, NPUKIT_E_LIMIT); /* valid, but beyond this build's window */
        }
        while (len-- > 0 && !s->err) {
            emit(s, s->win[(s->out - (uint32_t)dist) & (NPUKIT_INFLATE_WINDOW - 1)]);
        }
    }
}

static int block_stored(inflate_t *s)
{
    uint32_t len;
    s->bits = 0; /* to the byte boundary */
    s->nbits = 0;
    if (s->n - s->pos < 4) {
        return fail(s, NPUKIT_E_TARGET);
    }
    len = s->in[s->pos] | (uint32_t)s->in[s->pos + 1] << 8;
    if ((len ^ 0xFFFFu) != (s->in[s->pos + 2] | (uint32_t)s->in[s->pos + 3] << 8)) {
        return fail(s, NPUKIT_E_TARGET);
    }
    s->pos += 4;
    if (s->n - s->pos < len) {
        return fail(s, NPUKIT_E_TARGET);
    }
    while (len-- > 0 && !s->err) {
        emit(s, s->in[s->pos++]);
    }
    return s->err ? -1 : 0;
}

static int block_fixed(inflate_t *s)
{
    huff_t lencode, distcode;
    uint8_t lens[288];
    unsigned i;
    for (i = 0; i < 288; i++) {
        lens[i] = (uint8_t)(i < 144 ? 8 : (i < 256 ? 9 : (i < 280 ? 7 : 8)));
    }
    (void)huff_build(&lencode, lens, 288);
    memset(lens, 5, 30);
    (void)huff_build(&distcode, lens, 30); /* incomplete on purpose: codes 30, 31 do not decode */
    return codes(s, &lencode, &distcode);
}

static int block_dynamic(inflate_t *s)
{
    static const uint8_t ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    huff_t lencode, distcode;
    uint8_t lens[286 + 30];
    const int32_t hlit = get_bits(s, 5), hdist = get_bits(s, 5), hclen = get_bits(s, 4);
    unsigned nlen, ndist, index;
    int err;
    if (hlit < 0 || hdist < 0 || hclen < 0) {
        return -1;
    }
    nlen = (unsigned)hlit + 257;
    ndist = (unsigned)hdist + 1;
    if (nlen > 286 || ndist > 30) {
        return fail(s, NPUKIT_E_TARGET);
    }
    memset(lens, 0, 19);
    for (index = 0; index < (unsigned)hclen + 4; index++) {
        const int32_t v = get_bits(s, 3);
        if (v < 0) {
            return -1;
        }
        lens[ORDER[index]] = (uint8_t)v;
    }
    if (huff_build(&lencode, lens, 19) != 0) {
        return fail(s, NPUKIT_E_TARGET); /* the code length code must be complete */
    }
    index = 0;
    while (index < nlen + ndist) {
        int32_t sym = huff_decode(s, &lencode), rep;
        uint8_t len = 0;
        if (sym < 0) {
            return -1;
        }
        if (sym < 16) {
            lens[index++] = (uint8_t)sym;
            continue;
        }
        if (sym == 16) {
            if (index == 0) {
                return fail(s, NPUKIT_E_TARGET); /* nothing to repeat */
            }
            len = lens[index - 1];
            rep = get_bits(s, 2);
            rep = rep < 0 ? rep : 3 + rep;
        } else if (sym == 17) {
            rep = get_bits(s, 3);
            rep = rep < 0 ? rep : 3 + rep;
        } else {
            rep = get_bits(s, 7);
            rep = rep < 0 ? rep : 11 + rep;
        }
        if (rep < 0) {
            return -1;
        }
        if (index + (unsigned)rep > nlen + ndist) {
            return fail(s, NPUKIT_E_TARGET);
        }
        while (rep-- > 0) {
            lens[index++] = len;
        }
    }
    if (lens[256] == 0) {
        return fail(s, NPUKIT_E_TARGET); /* no end-of-block code */
    }
    /* incomplete codes are allowed only as a single one-bit code, as zlib does */
    err = huff_build(&lencode, lens, nlen);
    if (err < 0 || (err > 0 && nlen != (unsigned)lencode.count[0] + lencode.count[1])) {
        return fail(s, NPUKIT_E_TARGET);
    }
    err = huff_build(&distcode, lens + nlen, ndist);
    if (err < 0 || (err > 0 && ndist != (unsigned)distcode.count[0] + distcode.count[1])) {
        return fail(s, NPUKIT_E_TARGET);
    }
    return codes(s, &lencode, &distcode);
}

int npukit_inflate(const uint8_t *z, size_t n, int (*sink)(void *, uint8_t), void *ctx)
{
    inflate_t s; /* NPUKIT_INFLATE_WINDOW + about 100 bytes of stack; a block's Huffman tables about 2 KiB more */
    int last = 0;
    s.in = z;
    s.n = n;
    s.pos = 2;
    s.bits = 0;
    s.nbits = 0;
    s.out = 0;
    s.s1 = 1;
    s.s2 = 0;
    s.err = 0;
    s.sink = sink;
    s.ctx = ctx;
    /* RFC 1950 header: deflate, a window of at most 32 KiB, the check bits, no preset dictionary */
    if (n < 2 || (z[0] & 0x0F) != 8 || (z[0] >> 4) > 7 || ((unsigned)z[0] * 256u + z[1]) % 31u != 0 || (z[1] & 0x20)) {
        return NPUKIT_E_TARGET;
    }
    while (!last) {
        const int32_t head = get_bits(&s, 3);
        int rc;
        if (head < 0) {
            return s.err;
        }
        last = head & 1;
        switch (head >> 1) {
        case 0: rc = block_stored(&s); break;
        case 1: rc = block_fixed(&s); break;
        case 2: rc = block_dynamic(&s); break;
        default: rc = fail(&s, NPUKIT_E_TARGET); break;
        }
        if (rc < 0 || s.err) {
            return s.err ? s.err : NPUKIT_E_TARGET;
        }
    }
    /* Adler-32, big-endian, from the next byte boundary; then the section must end */
    if (s.n - s.pos != 4 || ((uint32_t)z[s.pos] << 24 | (uint32_t)z[s.pos + 1] << 16 | (uint32_t)z[s.pos + 2] << 8
                             | z[s.pos + 3]) != (s.s2 << 16 | s.s1)) {
        return NPUKIT_E_TARGET;
    }
    return NPUKIT_OK;
}

static int json_sink(void *ctx, uint8_t c)
{
    json_t *j = (json_t *)ctx;
    json_feed(j, c);
    return j->err;
}

int npukit_read_target(const uint8_t *z, size_t n, npukit_target_info *info)
{
    json_t j;
    int k;
    memset(&j, 0, sizeof j);
    j.info = info;
    info->target_id = 0;
    info->n_memory = 0;
    info->rounding = NK_HALF_UP;
    info->pool_rounding = NK_HALF_UP;
    k = npukit_inflate(z, n, json_sink, &j);
    if (k != NPUKIT_OK) {
        return k;
    }
    if (j.state != J_DONE || j.status[K_NAME] != SET) {
        return NPUKIT_E_TARGET; /* incomplete JSON, or no name (the one required field) */
    }
    for (k = 1; k < K_COUNT; k++) {
        if (j.status[k] == BAD) {
            return NPUKIT_E_TARGET;
        }
    }
    return NPUKIT_OK;
}
