/* geopref/c_api.h — the C ABI of the compiled kernels (library geopref_cuda).
 *
 * For training stacks that do not compile with nvcc: plain C types, a stream,
 * a status return. The calls mirror geopref/cuda/geopref.cuh one for one:
 *
 *   geopref_sequence_logps  forward only: per-sequence log-probs (the reference
 *                           model's pass; its output is ref_logps below);
 *   geopref_train_step      forward, pair loss, metrics and the gradient with
 *                           respect to the logits, in one call;
 *   geopref_logits_grad     the backward pass alone, from the lse and
 *                           grad_seq_logps of a train_step run without a
 *                           gradient (an autograd forward/backward split);
 *   geopref_token_logps     the per-token primitive: log-probs of the selected
 *                           tokens (and lse, entropy) from logits [N, V];
 *   geopref_token_logps_grad its backward for any per-token upstream gradient
 *                           g_t: g_t (1[v = y_t] - softmax_t), in place or not;
 *   geopref_linear_token_logps(_grad) the same two from hidden states and the
 *                           output projection (logits one chunk at a time;
 *                           grad_hidden, grad_weight, grad_bias);
 *   geopref_device_status   the status the kernels recorded about device data
 *                           (a label out of range, bad offsets, ...);
 *                           synchronises the stream.
 *
 * Two-phase workspace, as in CUB: call with workspace == NULL to get the size
 * in *workspace_bytes (or use the *_workspace_size helpers), allocate that
 * many bytes of device memory (cudaMalloc's alignment is enough), call again.
 * Every call only enqueues work on `stream` and returns; the library never
 * allocates, throws, exits or prints. Pointers in the argument structs are
 * device pointers; the argument and option structs themselves are host memory.
 *
 * ABI 1.0 and how it grows (docs/integration.md, "ABI 1.0"):
 *  - An argument struct (what an entry takes by pointer: geopref_options and
 *    every geopref_*_args) starts with `size_t struct_size`, which its
 *    geopref_*_init function sets to sizeof the struct as compiled, along with
 *    every default. Set the fields after init; never zero a struct by hand.
 *  - The library reads only the struct_size bytes the caller's struct has:
 *    fields past them keep their defaults. struct_size must be the size of a
 *    released layout (GEOPREF_*_SIZE_1_0, or sizeof of a later one), or larger
 *    than any the library knows with only zero bytes past what it knows;
 *    anything else is GEOPREF_INVALID_STRUCT_SIZE.
 *  - New fields are appended at the end of argument structs only. An argument
 *    struct is never embedded in another (a vocab-parallel step points to its
 *    train arguments). The blocks embedded in argument structs (geopref_tokens,
 *    geopref_token_rows, geopref_linear_inputs, geopref_linear_token_rows,
 *    geopref_vocab_slice, geopref_logit_transform) are frozen: they never
 *    change; a field they lack is appended to the argument structs instead.
 *  - ABI 1.1 appended `logit_transform` to the argument structs that describe
 *    logits; a caller compiled against 1.0 gets the identity transform.
 *  - ABI 1.2 appended TRL 1.x's per-token statistics to the per-token
 *    primitive: `log_sum_sq_probs`, `mean_logits` and `is_top1` to
 *    geopref_(linear_)token_logps_args, the entropy's upstream gradient
 *    (`grad_entropy`, with the forward's `entropy`) to
 *    geopref_(linear_)token_grad_args; a caller compiled against 1.0 or 1.1
 *    gets none of them (NULL).
 *
 * Built for logits of float32, float16 and bfloat16 (GEOPREF_FLOAT32, ...)
 * and labels/offsets of int32 and int64. The meaning of every field, the
 * mathematics and the metrics are documented in geopref/cuda/geopref.cuh,
 * docs/math.md and docs/integration.md.
 */
#ifndef GEOPREF_C_API_H
#define GEOPREF_C_API_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define GEOPREF_C_EXPORT
#else
#define GEOPREF_C_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI's version: 1.0 is the first layout with struct sizes; each minor
 * version appended fields at the end of argument structs. */
#define GEOPREF_ABI_VERSION_MAJOR 1
#define GEOPREF_ABI_VERSION_MINOR 2

/* The same type as cudaStream_t, without including the CUDA headers.
 * NULL is the default stream. */
typedef struct CUstream_st* geopref_stream_t;

/* Status codes: the values of geopref::status (geopref/status.hpp). */
typedef int geopref_status;
enum {
  GEOPREF_SUCCESS = 0,
  GEOPREF_INVALID_SHAPE,
  GEOPREF_INVALID_STRIDE,
  GEOPREF_NULL_POINTER,
  GEOPREF_LABEL_OUT_OF_RANGE,
  GEOPREF_INVALID_OFFSETS,
  GEOPREF_PAIR_COUNT_MISMATCH,
  GEOPREF_PAIR_INDEX_OUT_OF_RANGE,
  GEOPREF_SOFT_LABEL_OUT_OF_RANGE,
  GEOPREF_INVALID_WEIGHT,
  GEOPREF_INVALID_REFERENCE,
  GEOPREF_INVALID_LOSS,
  GEOPREF_INVALID_BETA,
  GEOPREF_INVALID_EPSILON,
  GEOPREF_INVALID_ALPHA_GAMMA,
  GEOPREF_INVALID_TAU,
  GEOPREF_REFERENCE_NOT_ALLOWED,
  GEOPREF_INVALID_REDUCTION,
  GEOPREF_INVALID_UPSTREAM_GRAD,
  GEOPREF_INVALID_LOSS_OPTION,
  GEOPREF_INVALID_VOCAB_RECORDS,
  GEOPREF_WORKSPACE_TOO_SMALL,
  GEOPREF_MISALIGNED_POINTER,
  GEOPREF_OVERLAPPING_BUFFERS,
  GEOPREF_UNSUPPORTED_DTYPE,
  GEOPREF_CUDA_ERROR,
  GEOPREF_HOST_LAYOUT_MISMATCH,
  GEOPREF_INVALID_LOGIT_TRANSFORM,
  GEOPREF_INVALID_STRUCT_SIZE,
  GEOPREF_INTERNAL_ERROR
};

/* Element type of the logits (and of the gradient unless grad_float32). */
enum { GEOPREF_FLOAT32 = 0, GEOPREF_FLOAT16 = 1, GEOPREF_BFLOAT16 = 2 };
/* Element type of labels and offsets. */
enum { GEOPREF_INT32 = 0, GEOPREF_INT64 = 1 };

/* Losses, in the order of geopref::loss_type. */
enum {
  GEOPREF_LOSS_DPO = 0,
  GEOPREF_LOSS_CDPO,
  GEOPREF_LOSS_IPO,
  GEOPREF_LOSS_CIPO,
  GEOPREF_LOSS_ROPO,
  GEOPREF_LOSS_HINGE,
  GEOPREF_LOSS_ROBUST,
  GEOPREF_LOSS_EXO_PAIR,
  GEOPREF_LOSS_DISCOPOP,
  GEOPREF_LOSS_SIMPO,
  GEOPREF_LOSS_GDPO,
  GEOPREF_LOSS_GIPO,
  GEOPREF_LOSS_GROPO,
  GEOPREF_LOSS_NCA_PAIR,
  GEOPREF_LOSS_BCO_PAIR,
  GEOPREF_LOSS_SPPO_HARD,
  GEOPREF_LOSS_APO_ZERO,
  GEOPREF_LOSS_APO_DOWN,
  GEOPREF_LOSS_ORPO,
  GEOPREF_LOSS_AOT,
  GEOPREF_LOSS_AOT_UNPAIRED,
  GEOPREF_LOSS_SFT
};

/* Margin transforms (TRL's f_divergence_type), in the order of
 * geopref::margin_transform. */
enum { GEOPREF_TRANSFORM_REVERSE_KL = 0, GEOPREF_TRANSFORM_JS, GEOPREF_TRANSFORM_ALPHA };

/* At most this many terms in a weighted combination. */
#define GEOPREF_MAX_LOSS_TERMS 8

/* Reductions, in the order of geopref::reduction. */
enum {
  GEOPREF_REDUCTION_MEAN = 0, /* (1/P) sum_i w_i f_i */
  GEOPREF_REDUCTION_SUM,      /* sum_i w_i f_i */
  GEOPREF_REDUCTION_NONE,     /* the P values w_i f_i */
  GEOPREF_REDUCTION_NORMALIZER /* (1/normalizer) sum_i w_i f_i */
};

/* What to compute. geopref_options_init() sets struct_size and the library's
 * defaults. */
typedef struct geopref_options {
  size_t struct_size;   /* geopref_options_init: sizeof(geopref_options) */
  int loss;             /* GEOPREF_LOSS_* (default dpo) */
  double beta;          /* all losses: beta > 0 (default 0.1) */
  double alpha;         /* ropo/gropo: alpha >= 0 (default 1) */
  double gamma;         /* ropo/gropo: gamma >= 0; simpo: target margin (default 0) */
  double epsilon;       /* robust: [0, 0.5); exo_pair: (0, 1) (default 0) */
  double tau;           /* discopop: tau > 0 (default 0.05) */
  int reduction;        /* GEOPREF_REDUCTION_* (default mean) */
  double normalizer;    /* GEOPREF_REDUCTION_NORMALIZER only: finite, > 0 */
  int average_logps;    /* non-zero: margins from L_s / n_s (forced for simpo) */
  int64_t ignore_index; /* label of unscored rows (default -100) */
  double bco_delta;     /* bco_pair: the reward offset (default 0, TRL 1.x's bco_pair) */
  int transform;        /* GEOPREF_TRANSFORM_* of every margin term (default reverse_kl) */
  double f_alpha;       /* GEOPREF_TRANSFORM_ALPHA: coefficient > 0 (default 1) */
  int geometric;        /* non-zero: soft-label geometric form of every margin term */
  int n_terms;          /* > 0: the weighted combination below replaces `loss` */
  int terms[GEOPREF_MAX_LOSS_TERMS];           /* GEOPREF_LOSS_* */
  double term_weights[GEOPREF_MAX_LOSS_TERMS]; /* finite */
  double nll_tokens;    /* data parallel, > 0: sum n_{a_i} over the live pairs of every rank (0: local) */
  double nll_weight;    /* data parallel: sum w_i over the live pairs of every rank */
} geopref_options;

/* The logit transform (geopref::logit_transform, geopref/options.hpp), applied
 * to every logit before the softmax:
 *   z' = softcap * tanh(scale * z / softcap) / temperature   (softcap > 0)
 *   z' = scale * z / temperature                             (softcap == 0)
 * Log-probs, entropies and gradients are those of z'; the gradients are with
 * respect to the untransformed logits (or hidden states and weight). It is the
 * last field (ABI 1.1) of every argument struct that describes logits; the
 * *_args_init functions set the identity (1, 0, 1), which runs the plain
 * kernels, and a caller whose struct_size ends before it gets the identity.
 * scale = temperature = 0 is rejected (GEOPREF_INVALID_LOGIT_TRANSFORM). The
 * fields are those of GEOPREF_LOGIT_TRANSFORM_FIELDS, in its order
 * (kernels/c_api_common.cuh checks it). A frozen block. */
typedef struct geopref_logit_transform {
  double scale;       /* s: multiplies the logits first; finite and > 0 (default 1) */
  double softcap;     /* c: c tanh(s z / c) when > 0; 0: no cap; finite (default 0) */
  double temperature; /* T: divides last; finite and > 0 (default 1) */
} geopref_logit_transform;

/* The token rows a forward pass reads (device pointers). A frozen block. */
typedef struct geopref_tokens {
  const void* logits;   /* [N, ld] row-major, logits_dtype; columns [V, ld) never read */
  int logits_dtype;     /* GEOPREF_FLOAT32 / FLOAT16 / BFLOAT16 */
  int64_t n_rows;       /* N */
  int64_t vocab;        /* V */
  int64_t ld;           /* row stride in elements, >= V */
  const void* labels;   /* [N] label_type; row t scores labels[t] (already shifted) */
  int label_type;       /* GEOPREF_INT32 / INT64 */
  const void* offsets;  /* [S + 1] offset_type; sequence s owns rows [offsets[s], offsets[s+1]) */
  int offset_type;      /* GEOPREF_INT32 / INT64 */
  int64_t n_seqs;       /* S */
  const float* token_weights; /* [N] per-token weights or NULL (see geopref/cuda/args.cuh) */
} geopref_tokens;

/* TRL's metrics (layout-identical to geopref::metrics). */
typedef struct geopref_metrics {
  double rewards_chosen;     /* rewards/chosen     mean beta (L_a - R_a) */
  double rewards_rejected;   /* rewards/rejected   mean beta (L_b - R_b) */
  double rewards_accuracies; /* rewards/accuracies */
  double rewards_margins;    /* rewards/margins */
  double logps_chosen;       /* logps/chosen */
  double logps_rejected;     /* logps/rejected */
  double calibration_error;  /* mean |sigma(beta h) - p| */
} geopref_metrics;

/* The metrics as sums over this rank's pairs, and its pair count (layout-
 * identical to geopref::metric_sums): all-reduce (sum), then divide by pairs. */
typedef struct geopref_metric_sums {
  double rewards_chosen, rewards_rejected, rewards_accuracies, rewards_margins;
  double logps_chosen, logps_rejected, calibration_error;
  double pairs;
} geopref_metric_sums;

/* Arguments of geopref_sequence_logps. geopref_logps_args_init() sets
 * struct_size, zeroes the rest and sets float32 / int64 and the identity
 * logit transform. */
typedef struct geopref_logps_args {
  size_t struct_size;  /* geopref_logps_args_init: sizeof(geopref_logps_args) */
  geopref_tokens tokens;
  float* seq_logps;    /* [S] required: L_s, or L_s / n_s when length-normalised */
  int64_t* seq_counts; /* [S] optional: n_s */
  float* token_logps;  /* [N] optional */
  float* lse;          /* [N] optional */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
} geopref_logps_args;

/* Arguments of geopref_train_step. geopref_train_args_init() sets struct_size,
 * zeroes the rest and sets float32 / int64, grad_loss = 1 and the identity
 * logit transform. */
typedef struct geopref_train_args {
  size_t struct_size;         /* geopref_train_args_init: sizeof(geopref_train_args) */
  geopref_tokens tokens;
  int64_t n_pairs;            /* P */
  const int64_t* pairs;       /* [P, 2] or NULL: pair i = (i, P + i), needs S == 2P */
  const float* soft_labels;   /* [P] in [0, 1] or NULL: binary */
  const float* ref_logps;     /* [S] or NULL: reference-free (must be NULL for simpo) */
  const float* weights;       /* [P] >= 0 or NULL: all 1 */
  double grad_loss;           /* host scalar upstream gradient */
  const float* grad_output;   /* [1] or [P] (reduction none) device upstream gradient, or NULL */
  float* loss;                /* [1], or [P] for reduction none; optional */
  geopref_metrics* stats;     /* [1] device struct; optional */
  float* seq_logps;           /* [S] optional */
  int64_t* seq_counts;        /* [S] optional */
  float* token_logps;         /* [N] optional */
  float* lse;                 /* [N] optional */
  float* grad_seq_logps;      /* [S] optional: dLoss/dL_s */
  void* grad_logits;          /* [N, grad_ld] or NULL: no backward; may equal tokens.logits */
  int64_t grad_ld;            /* >= V; 0: ld */
  int grad_float32;           /* non-zero: gradient as float32, else in the logits dtype */
  geopref_metric_sums* stat_sums; /* [1] device struct; optional (data parallel) */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
} geopref_train_args;

/* Arguments of geopref_logits_grad (geopref::cuda::grad_args): the gradient
 * train_step would write, from its lse and grad_seq_logps outputs. Scaling
 * grad_seq_logps scales the gradient. geopref_grad_args_init() as
 * geopref_logps_args_init (give the logit transform train_step was given). */
typedef struct geopref_grad_args {
  size_t struct_size;           /* geopref_grad_args_init: sizeof(geopref_grad_args) */
  geopref_tokens tokens;        /* the tokens train_step was given */
  const float* lse;             /* [N] train_step's lse output */
  const float* grad_seq_logps;  /* [S] train_step's grad_seq_logps output (g_s) */
  void* grad_logits;            /* [N, grad_ld] required when N > 0; may equal tokens.logits */
  int64_t grad_ld;              /* >= V; 0: ld */
  int grad_float32;             /* non-zero: gradient as float32, else in the logits dtype */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
} geopref_grad_args;

/* Fused linear (geopref/cuda/fused_linear.cuh; compiled in kernels/c_api_linear.cu, which
 * links cuBLAS): the loss and its gradients from hidden states H [N, Hd] and the output
 * projection W [V, Hd] (bias b [V]), the logits existing one chunk of rows at a time in the
 * workspace. The token rows are geopref_tokens' fields without the logits. A frozen block. */
typedef struct geopref_linear_inputs {
  const void* hidden;   /* [N, ld_hidden] row-major, dtype */
  int64_t ld_hidden;    /* >= Hd; 0: Hd */
  const void* weight;   /* [V, ld_weight] row-major, dtype */
  int64_t ld_weight;    /* >= Hd; 0: Hd */
  const void* bias;     /* [V] dtype, or NULL */
  int dtype;            /* GEOPREF_FLOAT32 / FLOAT16 / BFLOAT16: H, W, b, the chunk, grad_hidden */
  int64_t n_rows;       /* N */
  int64_t hidden_size;  /* Hd */
  int64_t vocab;        /* V */
  const void* labels;   /* [N] label_type */
  int label_type;
  const void* offsets;  /* [S + 1] offset_type */
  int offset_type;
  int64_t n_seqs;       /* S */
  const float* token_weights; /* [N] or NULL */
  size_t chunk_bytes;   /* budget for one chunk of logits (>= one row, V rounded up to 16 bytes) */
  void* cublas_handle;  /* a cublasHandle_t, or NULL: the call creates and destroys one */
} geopref_linear_inputs;
typedef struct geopref_linear_logps_args {
  size_t struct_size;  /* geopref_linear_logps_args_init: sizeof(geopref_linear_logps_args) */
  geopref_linear_inputs in;
  float* seq_logps;    /* [S] required */
  int64_t* seq_counts; /* [S] optional */
  float* token_logps;  /* [N] optional */
  float* lse;          /* [N] optional */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
} geopref_linear_logps_args;
typedef struct geopref_linear_train_args {
  size_t struct_size;         /* geopref_linear_train_args_init: sizeof(geopref_linear_train_args) */
  geopref_linear_inputs in;
  int64_t n_pairs;            /* as geopref_train_args from here to grad_seq_logps */
  const int64_t* pairs;
  const float* soft_labels;
  const float* ref_logps;
  const float* weights;
  double grad_loss;
  const float* grad_output;
  float* loss;
  geopref_metrics* stats;
  geopref_metric_sums* stat_sums;
  float* seq_logps;
  int64_t* seq_counts;
  float* token_logps;
  float* lse;
  float* grad_seq_logps;
  void* grad_hidden;          /* [N, ld_grad_hidden] dtype, or NULL; always overwritten */
  int64_t ld_grad_hidden;     /* >= Hd; 0: Hd */
  void* grad_weight;          /* [V, ld_grad_weight] dtype (float32 with grad_weight_float32), or NULL */
  int64_t ld_grad_weight;     /* >= Hd; 0: Hd */
  int grad_weight_float32;
  float* grad_bias;           /* [V] float, or NULL; needs a bias */
  int accumulate;             /* non-zero: grad_weight and grad_bias are added to */
  /* Host copies for the one-pass path (fused_linear.cuh; NULL: two passes). */
  const int64_t* host_offsets; /* [S + 1] host memory, the values of in.offsets */
  const int64_t* host_pairs;   /* [P, 2] host memory, the values of pairs; NULL when pairs is */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
} geopref_linear_train_args;
/* struct_size; the rest zero; types float32 / int64; grad_loss = 1; chunk_bytes = 1 GiB;
 * the identity logit transform. */
GEOPREF_C_EXPORT void geopref_linear_train_args_init(geopref_linear_train_args* args);
GEOPREF_C_EXPORT void geopref_linear_logps_args_init(geopref_linear_logps_args* args);
/* workspace == NULL: sets *workspace_bytes only (it depends on chunk_bytes). */
GEOPREF_C_EXPORT geopref_status geopref_fused_linear_step(void* workspace, size_t* workspace_bytes,
                                                          const geopref_linear_train_args* args,
                                                          const geopref_options* opt,
                                                          geopref_stream_t stream);
GEOPREF_C_EXPORT geopref_status geopref_fused_linear_logps(void* workspace, size_t* workspace_bytes,
                                                           const geopref_linear_logps_args* args,
                                                           const geopref_options* opt,
                                                           geopref_stream_t stream);
/* Host only: *one_pass = 1 when geopref_fused_linear_step with these arguments runs the
 * one-pass path (three GEMMs per segment), else 0. */
GEOPREF_C_EXPORT geopref_status geopref_fused_linear_one_pass(const geopref_linear_train_args* args,
                                                              const geopref_options* opt,
                                                              int* one_pass);
/* Vocab parallelism (geopref/cuda/vocab_parallel.cuh, docs/distributed.md):
 * the same layouts as geopref::cuda::vocab_record / vocab_slice. */
typedef struct geopref_vocab_record {
  float m, s, label; /* slice max (base 2, integer), slice sum, label logit when owned */
  int32_t tag;       /* 2 * rank + (1 if the slice owns the label) */
} geopref_vocab_record;

/* A frozen block. */
typedef struct geopref_vocab_slice {
  int64_t begin; /* first global column of this rank's slice */
  int64_t total; /* V of the whole vocabulary */
  int rank;      /* 0 <= rank < n_ranks */
  int n_ranks;
} geopref_vocab_slice;

/* geopref_vocab_stats_args_init: struct_size, as geopref_logps_args_init for
 * the tokens, one rank (n_ranks = 1), the identity logit transform. */
typedef struct geopref_vocab_stats_args {
  size_t struct_size;            /* geopref_vocab_stats_args_init: sizeof(geopref_vocab_stats_args) */
  geopref_tokens tokens;         /* the slice: logits [N, ld], vocab = its width; global labels */
  geopref_vocab_slice slice;
  geopref_vocab_record* records; /* [N] out */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
} geopref_vocab_stats_args;

/* The step points to its train arguments (an argument struct with its own
 * struct_size and logit transform) instead of embedding them, so that either
 * can grow. geopref_vocab_train_args_init: struct_size, train = NULL, one rank. */
typedef struct geopref_vocab_train_args {
  size_t struct_size;                   /* geopref_vocab_train_args_init: sizeof(geopref_vocab_train_args) */
  const geopref_train_args* train;      /* required: over the slice; grad_logits: the slice's gradient */
  geopref_vocab_slice slice;
  const geopref_vocab_record* records;  /* [n_ranks, N] all-gathered, slots in any order */
} geopref_vocab_train_args;

/* The rows of the per-token primitive (geopref::cuda::token_rows): no
 * sequences, every row whose label is not ignore_index is scored. To run a
 * chunk of rows [r, r + n) of a larger problem, offset every pointer by r rows
 * and pass n_rows = n (rows are independent). A frozen block. */
typedef struct geopref_token_rows {
  const void* logits;   /* [N, ld] row-major, logits_dtype; columns [V, ld) never read */
  int logits_dtype;     /* GEOPREF_FLOAT32 / FLOAT16 / BFLOAT16 */
  int64_t n_rows;       /* N */
  int64_t vocab;        /* V */
  int64_t ld;           /* row stride in elements, >= V */
  const void* labels;   /* [N] label_type, already shifted */
  int label_type;       /* GEOPREF_INT32 / INT64 */
  int64_t ignore_index; /* label of unscored rows (default -100) */
} geopref_token_rows;
/* Arguments of geopref_token_logps. geopref_token_logps_args_init() sets
 * struct_size, zeroes the rest and sets ignore_index = -100, float32 logits,
 * int64 labels, the identity logit transform. */
typedef struct geopref_token_logps_args {
  size_t struct_size; /* geopref_token_logps_args_init: sizeof(geopref_token_logps_args) */
  geopref_token_rows rows;
  float* token_logps; /* [N] required: z[t, y_t] - lse_t, 0 for unscored rows */
  float* lse;         /* [N] optional: lse_t, 0 for unscored rows (the backward's input) */
  float* entropy;     /* [N] optional: -sum_v p log p, 0 for unscored rows (a second read) */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
  /* ABI 1.2: TRL 1.x's per-token statistics, each optional (NULL: not computed;
   * any of them: one second read of the logits, shared with the entropy's) */
  float* log_sum_sq_probs; /* [N] log sum_v p_v^2, 0 for unscored rows */
  float* mean_logits;      /* [N] (1/V) sum_v z'_v of the transformed logits, 0 for unscored rows */
  uint8_t* is_top1;        /* [N] 1 when y_t is the first arg-max of the raw logits, else 0 */
} geopref_token_logps_args;
/* Arguments of geopref_token_logps_grad: grad[t, v] = g_t (1[v = y_t] -
 * exp(z[t, v] - lse_t)) for scored rows, zero rows otherwise. */
typedef struct geopref_token_grad_args {
  size_t struct_size;              /* geopref_token_grad_args_init: sizeof(geopref_token_grad_args) */
  geopref_token_rows rows;         /* the rows geopref_token_logps was given */
  const float* lse;                /* [N] geopref_token_logps' lse */
  const float* grad_token_logps;   /* [N] g_t = dLoss/dlogp_t */
  void* grad_logits;               /* [N, grad_ld]; may equal rows.logits (in place) */
  int64_t grad_ld;                 /* >= V; 0: ld */
  int grad_float32;                /* non-zero: gradient as float32, else in the logits dtype */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform; /* the one geopref_token_logps was given */
  /* ABI 1.2: the entropy's upstream gradient, optional */
  const float* grad_entropy; /* [N] e_t = dLoss/dH_t, or NULL; read for scored rows only */
  const float* entropy;      /* [N] geopref_token_logps' entropy; required with grad_entropy */
} geopref_token_grad_args;
/* The per-token primitive from hidden states (geopref/cuda/linear_token_logps.cuh;
 * compiled in kernels/c_api_linear.cu): token log-probs and their backward
 * from H [N, Hd] and W [V, Hd] (bias b [V]), the logits one chunk of rows at
 * a time in the workspace. geopref_linear_token_*_args_init() set struct_size,
 * zero the rest and set float32, int64 labels, ignore_index = -100,
 * chunk_bytes = 1 GiB, the identity logit transform. A frozen block. */
typedef struct geopref_linear_token_rows {
  const void* hidden;   /* [N, ld_hidden] row-major, dtype */
  int64_t ld_hidden;    /* >= Hd; 0: Hd */
  const void* weight;   /* [V, ld_weight] row-major, dtype */
  int64_t ld_weight;    /* >= Hd; 0: Hd */
  const void* bias;     /* [V] dtype, or NULL */
  int dtype;            /* GEOPREF_FLOAT32 / FLOAT16 / BFLOAT16: H, W, b, the chunk, grad_hidden */
  int64_t n_rows;       /* N */
  int64_t hidden_size;  /* Hd */
  int64_t vocab;        /* V */
  const void* labels;   /* [N] label_type, already shifted */
  int label_type;       /* GEOPREF_INT32 / INT64 */
  int64_t ignore_index; /* label of unscored rows */
  size_t chunk_bytes;   /* budget for one chunk of logits (>= one row, V rounded up to 16 bytes) */
  void* cublas_handle;  /* a cublasHandle_t, or NULL: the call creates and destroys one */
} geopref_linear_token_rows;
typedef struct geopref_linear_token_logps_args {
  size_t struct_size; /* geopref_linear_token_logps_args_init: sizeof(geopref_linear_token_logps_args) */
  geopref_linear_token_rows rows;
  float* token_logps; /* [N] required: logp_t, 0 for unscored rows */
  float* lse;         /* [N] optional: lse_t, 0 for unscored rows (the backward's input) */
  float* entropy;     /* [N] optional: -sum_v p log p, 0 for unscored rows */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
  /* ABI 1.2: as geopref_token_logps_args' */
  float* log_sum_sq_probs; /* [N] optional */
  float* mean_logits;      /* [N] optional */
  uint8_t* is_top1;        /* [N] optional */
} geopref_linear_token_logps_args;
typedef struct geopref_linear_token_grad_args {
  size_t struct_size;              /* geopref_linear_token_grad_args_init: sizeof(geopref_linear_token_grad_args) */
  geopref_linear_token_rows rows;  /* the rows geopref_linear_token_logps was given */
  const float* lse;                /* [N] its lse */
  const float* grad_token_logps;   /* [N] g_t = dLoss/dlogp_t */
  void* grad_hidden;          /* [N, ld_grad_hidden] dtype, or NULL; always overwritten */
  int64_t ld_grad_hidden;     /* >= Hd; 0: Hd */
  void* grad_weight;          /* [V, ld_grad_weight] dtype (float32 with grad_weight_float32), or NULL */
  int64_t ld_grad_weight;     /* >= Hd; 0: Hd */
  int grad_weight_float32;
  float* grad_bias;           /* [V] float, or NULL; needs a bias */
  int accumulate;             /* non-zero: grad_weight and grad_bias are added to */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform; /* the one geopref_linear_token_logps was given */
  /* ABI 1.2: as geopref_token_grad_args' */
  const float* grad_entropy; /* [N] e_t, or NULL */
  const float* entropy;      /* [N] geopref_linear_token_logps' entropy; required with grad_entropy */
} geopref_linear_token_grad_args;

/* Vocab-parallel fused linear (geopref/cuda/vocab_linear.cuh; in kernels/c_api_linear.cu, with
 * cuBLAS): `in` / `train->in` describe the rank's slice of the projection (weight W_r [V_r, Hd],
 * bias b_r, vocab = V_r) and the same hidden states on every rank. The records are exchanged as
 * for geopref_vocab_parallel_*. grad_weight / grad_bias are the rank's slices; grad_hidden is
 * this rank's partial G_r·W_r, which the caller sums over the ranks (an all-reduce). */
typedef struct geopref_vocab_linear_stats_args {
  size_t struct_size; /* geopref_vocab_linear_stats_args_init: sizeof(geopref_vocab_linear_stats_args) */
  geopref_linear_inputs in;
  geopref_vocab_slice slice;
  geopref_vocab_record* records; /* [N] out */
  /* ABI 1.1 */
  geopref_logit_transform logit_transform;
} geopref_vocab_linear_stats_args;
typedef struct geopref_vocab_linear_train_args {
  size_t struct_size; /* geopref_vocab_linear_train_args_init: sizeof(geopref_vocab_linear_train_args) */
  const geopref_linear_train_args* train; /* required (as geopref_vocab_train_args) */
  geopref_vocab_slice slice;
  const geopref_vocab_record* records; /* [n_ranks, N] all-gathered, slots in any order */
} geopref_vocab_linear_train_args;

/* The sizes of the ABI 1.0 layouts: the smallest struct_size each entry
 * accepts (what a caller compiled against 1.0 headers passes): offsetof the
 * first field appended after 1.0, or sizeof for a struct that has not grown
 * (its first appended field changes the macro to offsetof that field). */
#define GEOPREF_OPTIONS_SIZE_1_0 sizeof(geopref_options)
#define GEOPREF_TRAIN_ARGS_SIZE_1_0 offsetof(geopref_train_args, logit_transform)
#define GEOPREF_LOGPS_ARGS_SIZE_1_0 offsetof(geopref_logps_args, logit_transform)
#define GEOPREF_GRAD_ARGS_SIZE_1_0 offsetof(geopref_grad_args, logit_transform)
#define GEOPREF_LINEAR_TRAIN_ARGS_SIZE_1_0 offsetof(geopref_linear_train_args, logit_transform)
#define GEOPREF_LINEAR_LOGPS_ARGS_SIZE_1_0 offsetof(geopref_linear_logps_args, logit_transform)
#define GEOPREF_VOCAB_STATS_ARGS_SIZE_1_0 offsetof(geopref_vocab_stats_args, logit_transform)
#define GEOPREF_VOCAB_TRAIN_ARGS_SIZE_1_0 sizeof(geopref_vocab_train_args)
#define GEOPREF_TOKEN_LOGPS_ARGS_SIZE_1_0 offsetof(geopref_token_logps_args, logit_transform)
#define GEOPREF_TOKEN_GRAD_ARGS_SIZE_1_0 offsetof(geopref_token_grad_args, logit_transform)
#define GEOPREF_LINEAR_TOKEN_LOGPS_ARGS_SIZE_1_0 \
  offsetof(geopref_linear_token_logps_args, logit_transform)
#define GEOPREF_LINEAR_TOKEN_GRAD_ARGS_SIZE_1_0 \
  offsetof(geopref_linear_token_grad_args, logit_transform)
#define GEOPREF_VOCAB_LINEAR_STATS_ARGS_SIZE_1_0 \
  offsetof(geopref_vocab_linear_stats_args, logit_transform)
#define GEOPREF_VOCAB_LINEAR_TRAIN_ARGS_SIZE_1_0 sizeof(geopref_vocab_linear_train_args)

/* Set struct_size and every default; call before setting fields. */
GEOPREF_C_EXPORT void geopref_options_init(geopref_options* opt);
GEOPREF_C_EXPORT void geopref_train_args_init(geopref_train_args* args);
GEOPREF_C_EXPORT void geopref_logps_args_init(geopref_logps_args* args);
GEOPREF_C_EXPORT void geopref_grad_args_init(geopref_grad_args* args);
GEOPREF_C_EXPORT void geopref_vocab_stats_args_init(geopref_vocab_stats_args* args);
GEOPREF_C_EXPORT void geopref_vocab_train_args_init(geopref_vocab_train_args* args);
GEOPREF_C_EXPORT void geopref_token_logps_args_init(geopref_token_logps_args* args);
GEOPREF_C_EXPORT void geopref_token_grad_args_init(geopref_token_grad_args* args);
GEOPREF_C_EXPORT void geopref_linear_token_logps_args_init(geopref_linear_token_logps_args* args);
GEOPREF_C_EXPORT void geopref_linear_token_grad_args_init(geopref_linear_token_grad_args* args);
GEOPREF_C_EXPORT void geopref_vocab_linear_stats_args_init(geopref_vocab_linear_stats_args* args);
GEOPREF_C_EXPORT void geopref_vocab_linear_train_args_init(geopref_vocab_linear_train_args* args);

/* Every entry E(workspace, workspace_bytes, args[, opt], stream) has
 * E_workspace_size(args[, opt], workspace_bytes), the same call with a NULL
 * workspace: the workspace size for these arguments (the device buffers need
 * not be set yet; the arguments are checked as the call checks them). Host
 * only, no GPU needed. */
GEOPREF_C_EXPORT geopref_status geopref_train_step_workspace_size(const geopref_train_args* args,
                                                                  const geopref_options* opt,
                                                                  size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_sequence_logps_workspace_size(
    const geopref_logps_args* args, const geopref_options* opt, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_logits_grad_workspace_size(const geopref_grad_args* args,
                                                                   const geopref_options* opt,
                                                                   size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_vocab_parallel_stats_workspace_size(
    const geopref_vocab_stats_args* args, const geopref_options* opt, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_vocab_parallel_train_step_workspace_size(
    const geopref_vocab_train_args* args, const geopref_options* opt, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_token_logps_workspace_size(
    const geopref_token_logps_args* args, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_token_logps_grad_workspace_size(
    const geopref_token_grad_args* args, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_fused_linear_step_workspace_size(
    const geopref_linear_train_args* args, const geopref_options* opt, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_fused_linear_logps_workspace_size(
    const geopref_linear_logps_args* args, const geopref_options* opt, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_linear_token_logps_workspace_size(
    const geopref_linear_token_logps_args* args, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_linear_token_logps_grad_workspace_size(
    const geopref_linear_token_grad_args* args, size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_vocab_linear_stats_workspace_size(
    const geopref_vocab_linear_stats_args* args, const geopref_options* opt,
    size_t* workspace_bytes);
GEOPREF_C_EXPORT geopref_status geopref_vocab_linear_step_workspace_size(
    const geopref_vocab_linear_train_args* args, const geopref_options* opt,
    size_t* workspace_bytes);

/* workspace == NULL: sets *workspace_bytes only. Otherwise *workspace_bytes is
 * the size of `workspace` and the work is enqueued on `stream`. */
GEOPREF_C_EXPORT geopref_status geopref_train_step(void* workspace, size_t* workspace_bytes,
                                                   const geopref_train_args* args,
                                                   const geopref_options* opt,
                                                   geopref_stream_t stream);
GEOPREF_C_EXPORT geopref_status geopref_sequence_logps(void* workspace, size_t* workspace_bytes,
                                                       const geopref_logps_args* args,
                                                       const geopref_options* opt,
                                                       geopref_stream_t stream);
GEOPREF_C_EXPORT geopref_status geopref_logits_grad(void* workspace, size_t* workspace_bytes,
                                                    const geopref_grad_args* args,
                                                    const geopref_options* opt,
                                                    geopref_stream_t stream);

/* Vocab parallel: each rank's records, then (after the caller's all-gather)
 * each rank's step. workspace == NULL: sets *workspace_bytes only. */
GEOPREF_C_EXPORT geopref_status geopref_vocab_parallel_stats(void* workspace,
                                                             size_t* workspace_bytes,
                                                             const geopref_vocab_stats_args* args,
                                                             const geopref_options* opt,
                                                             geopref_stream_t stream);
GEOPREF_C_EXPORT geopref_status geopref_vocab_parallel_train_step(
    void* workspace, size_t* workspace_bytes, const geopref_vocab_train_args* args,
    const geopref_options* opt, geopref_stream_t stream);

GEOPREF_C_EXPORT geopref_status geopref_token_logps(void* workspace, size_t* workspace_bytes,
                                                    const geopref_token_logps_args* args,
                                                    geopref_stream_t stream);
GEOPREF_C_EXPORT geopref_status geopref_token_logps_grad(void* workspace, size_t* workspace_bytes,
                                                         const geopref_token_grad_args* args,
                                                         geopref_stream_t stream);
/* workspace == NULL: sets *workspace_bytes only (it depends on chunk_bytes). */
GEOPREF_C_EXPORT geopref_status geopref_linear_token_logps(
    void* workspace, size_t* workspace_bytes, const geopref_linear_token_logps_args* args,
    geopref_stream_t stream);
GEOPREF_C_EXPORT geopref_status geopref_linear_token_logps_grad(
    void* workspace, size_t* workspace_bytes, const geopref_linear_token_grad_args* args,
    geopref_stream_t stream);

GEOPREF_C_EXPORT geopref_status geopref_vocab_linear_stats(void* workspace, size_t* workspace_bytes,
                                                           const geopref_vocab_linear_stats_args* args,
                                                           const geopref_options* opt,
                                                           geopref_stream_t stream);
GEOPREF_C_EXPORT geopref_status geopref_vocab_linear_step(void* workspace, size_t* workspace_bytes,
                                                          const geopref_vocab_linear_train_args* args,
                                                          const geopref_options* opt,
                                                          geopref_stream_t stream);

/* Synchronises `stream`, then stores in *result the status recorded by the
 * last call that used `workspace`. Returns GEOPREF_CUDA_ERROR when the
 * synchronisation fails. */
GEOPREF_C_EXPORT geopref_status geopref_device_status(const void* workspace,
                                                      geopref_stream_t stream,
                                                      geopref_status* result);

/* One line describing a status; never NULL. */
GEOPREF_C_EXPORT const char* geopref_status_string(geopref_status status);

/* Parses a loss name ("dpo", "gdpo", "exo_pair", ...): 1 and *loss set, or 0. */
GEOPREF_C_EXPORT int geopref_parse_loss(const char* name, int* loss);

/* GEOPREF_VERSION_MAJOR * 10000 + MINOR * 100 + PATCH of the compiled library. */
GEOPREF_C_EXPORT int geopref_version(void);

#ifdef __cplusplus
}
#endif

#endif /* GEOPREF_C_API_H */
