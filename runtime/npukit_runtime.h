/* npukit runtime: reads a model.bin (docs/model-format.md) and runs it with the kernel library that
 * generated code calls (npukit/codegen/runtime: nk_conv, nk_linear, ...). Portable C99, no heap, no
 * floating point, no global state.
 *
 *     static npukit_model_t m;                     (large: see the table sizes below)
 *     int rc = npukit_load(bin, bin_len, &m);      (bin: 4-byte aligned; it stays in use, weights are read
 *                                                   from it in place, so it may live in flash)
 *     if (rc == NPUKIT_OK && arena_len >= npukit_arena_bytes(&m))
 *         rc = npukit_invoke(&m, arena, arena_len, in, out);
 *     if (rc != NPUKIT_OK) puts(npukit_strerror(rc));
 *
 * A model with several inputs or outputs runs with npukit_invoke_io, one buffer per input and per output in
 * the model's order (npukit_num_inputs, npukit_input_info say how many and of what size):
 *
 *     const void *ins[2] = {in0, in1};
 *     void *outs[2] = {out0, out1};
 *     rc = npukit_invoke_io(&m, arena, arena_len, ins, outs);
 *
 * npukit_load checks the whole file before it returns NPUKIT_OK: every check of the Python reader
 * (npukit/modelbin.py, "What the reader checks" in the format document) except those of the target
 * profile: it reads the device section instead, and leaves the deflated profile to the CRC. It
 * never reads outside [bin, bin + len) and never writes outside *m, whatever the bytes. It then refuses
 * (NPUKIT_E_UNSUPPORTED) a valid model that these kernels cannot run: op inputs wider than 8 bits, 64-bit biases, add of more than two operands, and the other
 * cases listed in the format document ("Reading model.bin in C").
 */
#ifndef NPUKIT_RUNTIME_H
#define NPUKIT_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "npukit_kernels.h"

/* Table sizes of npukit_model_t. A model with more tensors or ops is refused with NPUKIT_E_LIMIT;
 * define these before including this header (the same values in every file) to change them. */
#ifndef NPUKIT_MAX_TENSORS
#define NPUKIT_MAX_TENSORS 128
#endif
#ifndef NPUKIT_MAX_OPS
#define NPUKIT_MAX_OPS 64
#endif
/* The most inputs, and the most outputs, of a model (NPUKIT_E_LIMIT beyond). */
#ifndef NPUKIT_MAX_IO
#define NPUKIT_MAX_IO 8
#endif
/* The largest dimension, kernel size, stride, padding or dilation the runtime accepts (NPUKIT_E_UNSUPPORTED
 * beyond): it keeps every int32 the kernels compute (positions, strides, padded extents) far from overflow. */
#ifndef NPUKIT_MAX_EXTENT
#define NPUKIT_MAX_EXTENT (1L << 24)
#endif
/* The ops this build runs: bit k for the op of kind k (NPUKIT_OP_*, below), all of them by default. A build
 * for one model can name only its ops, e.g. -DNPUKIT_OPS="(1u<<NPUKIT_OP_CONV)|(1u<<NPUKIT_OP_LINEAR)"
 * (codegen.host.runtime_ops_define(graph) writes it): the code of the others is left out, and npukit_load
 * refuses a model that uses one with NPUKIT_E_UNSUPPORTED. */
#ifndef NPUKIT_OPS
#define NPUKIT_OPS 0xFFFFu
#endif

enum {
    NPUKIT_OK = 0,
    NPUKIT_E_ARG = -1,          /* a NULL pointer, a model not loaded, or `bin` not 4-byte aligned */
    NPUKIT_E_MAGIC = -2,        /* not a model.bin: the file does not start with "NPUK" (an empty file too) */
    NPUKIT_E_SIZE = -3,         /* shorter than the header, or not the size the header says (truncated) */
    NPUKIT_E_VERSION = -4,      /* a format version this runtime does not read */
    NPUKIT_E_CRC = -5,          /* the CRC does not match: the file is damaged */
    NPUKIT_E_HEADER = -6,       /* header flags set, or a section count that does not fit */
    NPUKIT_E_SECTION = -7,      /* section table: unknown, repeated, missing, misplaced or overlapping sections */
    NPUKIT_E_RECORD = -8,       /* a count or record runs past its section's end, or bytes are left over */
    NPUKIT_E_INDEX = -9,        /* a string, tensor or memory index outside its table */
    NPUKIT_E_VALUE = -10,       /* a field out of range: rank, dimension, bits, role, size, arena, attribute, param */
    NPUKIT_E_TARGET = -11,      /* the device section: an unknown rounding mode, or its reserved byte set */
    NPUKIT_E_GRAPH = -12,       /* the graph: an op's attributes, params, shapes, order or tensor widths */
    NPUKIT_E_UNSUPPORTED = -13, /* a valid model these kernels cannot run (see above) */
    NPUKIT_E_LIMIT = -14,       /* more tensors or ops than this build's tables hold (NPUKIT_MAX_*) */
    NPUKIT_E_ARENA = -15,       /* npukit_invoke: the arena is smaller than npukit_arena_bytes or not 4-byte aligned */
    NPUKIT_E_INPUT = -16,       /* npukit_invoke: an input value outside the input tensor's bit range */
    NPUKIT_E_IO = -17           /* npukit_invoke on a model with several inputs or outputs: use npukit_invoke_io */
};

/* The element type of the input or output buffer: a signed integer of this many bytes, little-endian
 * in the files of the npukit-run tool and in host byte order in memory. */
typedef enum { NPUKIT_INT8 = 1, NPUKIT_INT16 = 2, NPUKIT_INT32 = 4, NPUKIT_INT64 = 8 } npukit_dtype;

/* One tensor, per sample. The per-op fields below are computed by npukit_load from the file, as the code
 * generator computes them offline; callers only read them (tests, tools). */
typedef struct {
    uint32_t offset;     /* in the arena (every tensor the graph uses is placed) */
    uint32_t nbytes;     /* elems * elem_bytes */
    uint32_t elems;
    uint32_t record;     /* file offset of its tensor record */
    uint32_t name_at;    /* file offset of its name's bytes (name_len of them, not NUL-terminated) */
    uint16_t name_len;
    int16_t exp;         /* real = q * 2^-exp */
    uint8_t bits;        /* 2..64; stored in 1, 2, 4 or 8 bytes */
    uint8_t elem_bytes;
} npukit_tensor_t;

enum {
    NPUKIT_OP_CONV = 1, NPUKIT_OP_LINEAR, NPUKIT_OP_MAXPOOL, NPUKIT_OP_AVGPOOL, NPUKIT_OP_GLOBAL_AVGPOOL,
    NPUKIT_OP_ADD, NPUKIT_OP_CONCAT, NPUKIT_OP_RELU, NPUKIT_OP_RESHAPE, NPUKIT_OP_LUT,
    NPUKIT_OP_MUL, NPUKIT_OP_UPSAMPLE, NPUKIT_OP_SLICE, NPUKIT_OP_CONV_TRANSPOSE, NPUKIT_OP_PAD
};

typedef struct {
    uint8_t kind;            /* NPUKIT_OP_* */
    uint8_t n_in;
    uint16_t out;            /* output tensor */
    uint16_t in[2];          /* the first (add: both) input tensors */
    uint32_t inputs;         /* file offset of the op record's input list (u16 each): a concat's operands */
    const void *weight;      /* conv, conv_transpose, linear: packed at w_bits, in the file; lut: the int8 table, in the file */
    const int32_t *bias;     /* conv, linear: out channels int32, in the file */
    union {
        nk_conv_params conv;
        nk_linear_params linear;
        nk_pool_params pool;
        nk_add_params add;
        nk_concat_params concat;  /* outer, out_inner, rounding; the invoke loop sets each part's own fields */
        nk_global_avgpool_params gap;
        struct { int32_t n; } relu;
        nk_lut_params lut;
        nk_mul_params mul;
        nk_upsample_params upsample;
        nk_slice_params slice;
        nk_pad_params pad;
    } p;
} npukit_op_t;

typedef struct {
    const uint8_t *bin;      /* the file, which must outlive the model */
    size_t len;
    uint32_t loaded;         /* set by a successful npukit_load */
    uint16_t target_id;
    uint16_t n_tensors, n_ops;
    uint16_t input, output;  /* tensor indices: the first input and the first output */
    uint16_t n_inputs, n_outputs;
    uint16_t inputs[NPUKIT_MAX_IO], outputs[NPUKIT_MAX_IO];  /* tensor indices, in the file's io order */
    uint32_t arena_bytes, lower_bound_bytes;
    nk_rounding rounding, pool_rounding;  /* of the target profile: add and concat, pooling */
    npukit_tensor_t tensors[NPUKIT_MAX_TENSORS];
    npukit_op_t ops[NPUKIT_MAX_OPS];
} npukit_model_t;

/* Checks the whole file and fills *m. Returns NPUKIT_OK or a negative NPUKIT_E_* code (then *m is not
 * usable). Reads bin[0, len) only; keeps pointers into it (weights, biases), so `bin` must stay valid and
 * unchanged while the model is used, and be 4-byte aligned (biases are read in place as int32). */
int npukit_load(const uint8_t *bin, size_t len, npukit_model_t *m);

/* A short English description of a status code ("" never: unknown codes say so). */
const char *npukit_strerror(int status);

/* The activation arena npukit_invoke needs, in bytes (the plan of the file). */
size_t npukit_arena_bytes(const npukit_model_t *m);
/* Bytes of one sample of the first input or output, its element type and exponent (real = q * 2^-exp). */
size_t npukit_input_bytes(const npukit_model_t *m);
size_t npukit_output_bytes(const npukit_model_t *m);
npukit_dtype npukit_input_dtype(const npukit_model_t *m);
npukit_dtype npukit_output_dtype(const npukit_model_t *m);
int npukit_input_exp(const npukit_model_t *m);
int npukit_output_exp(const npukit_model_t *m);

/* How many inputs and outputs the model has (0 for NULL or a model not loaded). */
unsigned npukit_num_inputs(const npukit_model_t *m);
unsigned npukit_num_outputs(const npukit_model_t *m);

/* One input or output: bytes of one sample, element type, exponent (real = q * 2^-exp) and the tensor's name
 * in the file (name_len bytes, not NUL-terminated). */
typedef struct {
    size_t bytes;
    npukit_dtype dtype;
    int exp;
    const char *name;
    size_t name_len;
} npukit_io_info;

/* Fills *info for input (output) `i` of the file's order. NPUKIT_E_ARG for a NULL pointer, a model not
 * loaded or `i` past the last. */
int npukit_input_info(const npukit_model_t *m, unsigned i, npukit_io_info *info);
int npukit_output_info(const npukit_model_t *m, unsigned i, npukit_io_info *info);

/* Runs one sample of a model with one input and one output: copies `in` (npukit_input_bytes) into the
 * arena, runs every op with the kernel library at the offsets of the plan, copies the output
 * (npukit_output_bytes) to `out`. The arena is caller memory of at least npukit_arena_bytes, 4-byte aligned;
 * it holds no state between calls, so one arena can serve several models in turn. Returns NPUKIT_OK,
 * NPUKIT_E_ARG (NULL pointer, model not loaded), NPUKIT_E_ARENA, NPUKIT_E_INPUT or NPUKIT_E_IO (the model
 * has several inputs or outputs: use npukit_invoke_io); then `out` is not written. */
int npukit_invoke(const npukit_model_t *m, void *arena, size_t arena_len, const void *in, void *out);

/* Runs one sample of any model: `ins` holds npukit_num_inputs pointers, one per input in the model's order
 * (npukit_input_info(m, i).bytes each), `outs` npukit_num_outputs pointers to the output buffers. Every
 * input is checked before anything runs. Returns as npukit_invoke, never NPUKIT_E_IO; a NULL array or a NULL
 * pointer in one is NPUKIT_E_ARG. */
int npukit_invoke_io(const npukit_model_t *m, void *arena, size_t arena_len, const void *const *ins,
                     void *const *outs);

/* NPUKIT_TRACE: 1 builds the per-layer trace hook below (npukit_invoke_traced, npukit_invoke_io_traced); 0, the
 * default, leaves it out, so that firmware links an invoke loop without it. The host builds turn it on
 * (`make`, CMake, npukit.codegen.host.build_runtime: `npukit compare` and npukit-run --dump need it). */
#ifndef NPUKIT_TRACE
#define NPUKIT_TRACE 0
#endif

#if NPUKIT_TRACE
/* Per-layer tracing (`npukit compare`): npukit_invoke(_io) that also calls `trace` with each input tensor once
 * it is in the arena and with every op's output right after the op wrote it. `name` is the tensor's name in
 * the file (`name_len` bytes, not NUL-terminated); `data`/`nbytes` its bytes in the arena. */
typedef void (*npukit_trace_fn)(void *user, const char *name, size_t name_len, const void *data, size_t nbytes);
int npukit_invoke_traced(const npukit_model_t *m, void *arena, size_t arena_len, const void *in, void *out,
                         npukit_trace_fn trace, void *user);
int npukit_invoke_io_traced(const npukit_model_t *m, void *arena, size_t arena_len, const void *const *ins,
                            void *const *outs, npukit_trace_fn trace, void *user);
#endif

#endif
