/*
 * muse_predict: runs signatures of a muse-tf SavedModel through the TensorFlow C API, with no
 * Python. TF_LoadSessionFromSavedModel (tag "serve") is the loader TF Serving uses: it restores the
 * variables and runs the init op that fills the vocabulary tables from the model's assets. Signature
 * inputs and outputs are resolved from the MetaGraphDef's SignatureDefs, as TF Serving does.
 *
 * Usage: muse_predict EXPORT_DIR REQUEST_FILE
 *
 * REQUEST_FILE is whitespace-separated text holding any number of requests:
 *     request <signature_name> <num_inputs>
 *     <input_name> <rank> <dim_0> ... <dim_rank-1> <values...>      (num_inputs times, int64)
 * For each request, stdout gets "request <signature_name>" and then, per signature output, a line
 *     <output_name> <count> <values...>                                (float32, %.9g)
 *
 * Bad input ends the program with a message, never with undefined behaviour: element counts are
 * computed with overflow checks, an input may not declare more values than the rest of the file
 * can hold (each takes at least two characters), and every allocation is checked.
 *
 * Build (see serving/README.md):
 *     TF=$(python -c "import os, tensorflow as tf; print(os.path.dirname(tf.__file__))")
 *     gcc -std=c11 -O2 -Wall -I$TF/include muse_predict.c -o muse_predict \
 *         -L$TF -l:libtensorflow_cc.so.2 -l:libtensorflow_framework.so.2 -Wl,-rpath,$TF
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"

#define MAX_TENSORS 64
#define MAX_NAME 256
#define MAX_RANK 8

/* ---- a minimal protobuf wire-format reader, enough for SignatureDefs ------------------------- */

typedef struct {
  const uint8_t *p, *end;
} Reader;

typedef struct {
  uint32_t field, wire;
  uint64_t varint; /* wire type 0 */
  Reader bytes;    /* wire type 2 */
} Field;

static int read_varint(Reader *r, uint64_t *value) {
  *value = 0;
  for (int shift = 0; shift < 64 && r->p < r->end; shift += 7) {
    uint8_t byte = *r->p++;
    *value |= (uint64_t)(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return 1;
  }
  return 0;
}

/* Reads the next field of a message; returns 0 at its end, exits on malformed input. */
static int next_field(Reader *r, Field *f) {
  uint64_t key, length;
  if (r->p >= r->end) return 0;
  if (!read_varint(r, &key)) goto malformed;
  f->field = (uint32_t)(key >> 3);
  f->wire = (uint32_t)(key & 7);
  switch (f->wire) {
    case 0:
      if (!read_varint(r, &f->varint)) goto malformed;
      return 1;
    case 1:
    case 5:
      length = f->wire == 1 ? 8 : 4;
      if ((uint64_t)(r->end - r->p) < length) goto malformed;
      r->p += length;
      return 1;
    case 2:
      if (!read_varint(r, &length) || (uint64_t)(r->end - r->p) < length) goto malformed;
      f->bytes.p = r->p;
      f->bytes.end = r->p + length;
      r->p += length;
      return 1;
  }
malformed:
  fprintf(stderr, "malformed MetaGraphDef\n");
  exit(1);
}

static void copy_string(const Reader *bytes, char *out) {
  size_t length = (size_t)(bytes->end - bytes->p);
  if (length >= MAX_NAME) length = MAX_NAME - 1;
  memcpy(out, bytes->p, length);
  out[length] = '\0';
}

static int equals(const Reader *bytes, const char *text) {
  size_t length = (size_t)(bytes->end - bytes->p);
  return length == strlen(text) && memcmp(bytes->p, text, length) == 0;
}

/* ---- signatures ----------------------------------------------------------------------------- */

typedef struct {
  char alias[MAX_NAME];  /* the signature's key, e.g. "item_id" */
  char tensor[MAX_NAME]; /* the graph tensor, e.g. "rank_item_id:0" */
  int dtype;             /* TF_DataType */
} TensorInfo;

typedef struct {
  int num_inputs, num_outputs;
  TensorInfo inputs[MAX_TENSORS], outputs[MAX_TENSORS];
} Signature;

/* map<string, TensorInfo> entry -> TensorInfo{name = 1, dtype = 2}. */
static void parse_tensor_info(Reader entry, TensorInfo *info) {
  Field f, g;
  memset(info, 0, sizeof(*info));
  while (next_field(&entry, &f)) {
    if (f.field == 1 && f.wire == 2) copy_string(&f.bytes, info->alias);
    if (f.field == 2 && f.wire == 2) {
      Reader value = f.bytes;
      while (next_field(&value, &g)) {
        if (g.field == 1 && g.wire == 2) copy_string(&g.bytes, info->tensor);
        if (g.field == 2 && g.wire == 0) info->dtype = (int)g.varint;
      }
    }
  }
}

/* MetaGraphDef.signature_def (field 5, map<string, SignatureDef{inputs = 1, outputs = 2}>). */
static int find_signature(const TF_Buffer *meta_graph, const char *name, Signature *signature) {
  Reader meta = {meta_graph->data, (const uint8_t *)meta_graph->data + meta_graph->length};
  Field f, g, h;
  memset(signature, 0, sizeof(*signature));
  while (next_field(&meta, &f)) {
    if (f.field != 5 || f.wire != 2) continue;
    Reader entry = f.bytes, definition = {0};
    int matches = 0;
    while (next_field(&entry, &g)) {
      if (g.field == 1 && g.wire == 2) matches = equals(&g.bytes, name);
      if (g.field == 2 && g.wire == 2) definition = g.bytes;
    }
    if (!matches) continue;
    while (next_field(&definition, &h)) {
      if ((h.field != 1 && h.field != 2) || h.wire != 2) continue;
      int *count = h.field == 1 ? &signature->num_inputs : &signature->num_outputs;
      TensorInfo *infos = h.field == 1 ? signature->inputs : signature->outputs;
      if (*count == MAX_TENSORS) {
        fprintf(stderr, "signature %s has too many tensors\n", name);
        exit(1);
      }
      parse_tensor_info(h.bytes, &infos[(*count)++]);
    }
    return 1;
  }
  return 0;
}

static TF_Output graph_output(TF_Graph *graph, const char *tensor) {
  char op_name[MAX_NAME];
  const char *colon = strrchr(tensor, ':');
  size_t length = colon ? (size_t)(colon - tensor) : strlen(tensor);
  memcpy(op_name, tensor, length);
  op_name[length] = '\0';
  TF_Output output = {TF_GraphOperationByName(graph, op_name), colon ? atoi(colon + 1) : 0};
  if (output.oper == NULL) {
    fprintf(stderr, "operation %s not found in the graph\n", op_name);
    exit(1);
  }
  return output;
}

static void check(TF_Status *status, const char *what) {
  if (TF_GetCode(status) != TF_OK) {
    fprintf(stderr, "%s failed: %s\n", what, TF_Message(status));
    exit(1);
  }
}

/* ---- requests ------------------------------------------------------------------------------- */

static void fail(const char *message, const char *name) {
  fprintf(stderr, "%s %s\n", message, name);
  exit(1);
}

/* The most values the rest of a regular file can hold ("1 " per value); -1 when unknown. */
static int64_t values_left(FILE *in) {
  long here = ftell(in);
  if (here < 0 || fseek(in, 0, SEEK_END) != 0) return -1;
  long end = ftell(in);
  if (end < 0 || fseek(in, here, SEEK_SET) != 0) fail("cannot seek in", "the request file");
  return (int64_t)(end - here) / 2 + 1;
}

static TF_Tensor *read_int64_tensor(FILE *in, const char *name) {
  int rank;
  int64_t dims[MAX_RANK], count = 1;
  const int64_t max_count = (int64_t)(SIZE_MAX / sizeof(int64_t)) < INT64_MAX
                                ? (int64_t)(SIZE_MAX / sizeof(int64_t))
                                : INT64_MAX;
  if (fscanf(in, "%d", &rank) != 1 || rank < 0 || rank > MAX_RANK) fail("bad rank for input", name);
  for (int i = 0; i < rank; ++i) {
    if (fscanf(in, "%" SCNd64, &dims[i]) != 1 || dims[i] < 0) fail("bad shape for input", name);
    if (dims[i] != 0 && count > max_count / dims[i]) fail("element count overflows for", name);
    count *= dims[i];
  }
  int64_t left = values_left(in);
  if (left >= 0 && count > left) fail("declares more values than the file holds for", name);
  TF_Tensor *tensor = TF_AllocateTensor(TF_INT64, dims, rank, (size_t)count * sizeof(int64_t));
  if (tensor == NULL) fail("cannot allocate input", name);
  int64_t *values = (int64_t *)TF_TensorData(tensor);
  if (values == NULL && count > 0) fail("cannot allocate input", name);
  for (int64_t i = 0; i < count; ++i) {
    if (fscanf(in, "%" SCNd64, &values[i]) != 1) fail("bad values for input", name);
  }
  return tensor;
}

static void run_request(TF_Session *session, TF_Graph *graph, const TF_Buffer *meta_graph,
                        FILE *in, const char *signature_name, int num_inputs) {
  Signature signature;
  if (!find_signature(meta_graph, signature_name, &signature)) {
    fprintf(stderr, "signature %s not found\n", signature_name);
    exit(1);
  }
  if (num_inputs != signature.num_inputs) {
    fprintf(stderr, "signature %s has %d inputs, the request gives %d\n", signature_name,
            signature.num_inputs, num_inputs);
    exit(1);
  }
  TF_Output feeds[MAX_TENSORS], fetches[MAX_TENSORS];
  TF_Tensor *feed_values[MAX_TENSORS], *fetch_values[MAX_TENSORS];
  for (int i = 0; i < num_inputs; ++i) {
    char alias[MAX_NAME];
    const TensorInfo *info = NULL;
    if (fscanf(in, "%255s", alias) != 1) {
      fprintf(stderr, "truncated request\n");
      exit(1);
    }
    for (int j = 0; j < signature.num_inputs; ++j) {
      if (strcmp(signature.inputs[j].alias, alias) == 0) info = &signature.inputs[j];
    }
    if (info == NULL || info->dtype != TF_INT64) {
      fprintf(stderr, "%s is not an int64 input of %s\n", alias, signature_name);
      exit(1);
    }
    feeds[i] = graph_output(graph, info->tensor);
    feed_values[i] = read_int64_tensor(in, alias);
  }
  for (int i = 0; i < signature.num_outputs; ++i) {
    fetches[i] = graph_output(graph, signature.outputs[i].tensor);
  }

  TF_Status *status = TF_NewStatus();
  if (status == NULL) fail("cannot allocate", "a TF_Status");
  TF_SessionRun(session, NULL, feeds, feed_values, num_inputs, fetches, fetch_values,
                signature.num_outputs, NULL, 0, NULL, status);
  check(status, "TF_SessionRun");
  TF_DeleteStatus(status);

  printf("request %s\n", signature_name);
  for (int i = 0; i < signature.num_outputs; ++i) {
    if (TF_TensorType(fetch_values[i]) != TF_FLOAT) {
      fprintf(stderr, "output %s is not float32\n", signature.outputs[i].alias);
      exit(1);
    }
    const float *values = (const float *)TF_TensorData(fetch_values[i]);
    int64_t count = TF_TensorElementCount(fetch_values[i]);
    if (count < 0 || (count > 0 && values == NULL)) fail("no data in output", signature.outputs[i].alias);
    printf("%s %" PRId64, signature.outputs[i].alias, count);
    for (int64_t j = 0; j < count; ++j) printf(" %.9g", values[j]);
    printf("\n");
    TF_DeleteTensor(fetch_values[i]);
  }
  for (int i = 0; i < num_inputs; ++i) TF_DeleteTensor(feed_values[i]);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s EXPORT_DIR REQUEST_FILE\n", argv[0]);
    return 2;
  }
  FILE *in = fopen(argv[2], "r");
  if (in == NULL) {
    perror(argv[2]);
    return 1;
  }

  TF_Status *status = TF_NewStatus();
  TF_Graph *graph = TF_NewGraph();
  TF_SessionOptions *options = TF_NewSessionOptions();
  TF_Buffer *meta_graph = TF_NewBuffer();
  if (status == NULL || graph == NULL || options == NULL || meta_graph == NULL) {
    fail("cannot allocate", "the TensorFlow session objects");
  }
  const char *tags[] = {"serve"};
  TF_Session *session =
      TF_LoadSessionFromSavedModel(options, NULL, argv[1], tags, 1, graph, meta_graph, status);
  check(status, "TF_LoadSessionFromSavedModel");

  char signature_name[MAX_NAME];
  int num_inputs;
  while (fscanf(in, " request %255s %d", signature_name, &num_inputs) == 2) {
    run_request(session, graph, meta_graph, in, signature_name, num_inputs);
  }
  if (!feof(in)) {
    fprintf(stderr, "unreadable request header in %s\n", argv[2]);
    return 1;
  }

  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteBuffer(meta_graph);
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  fclose(in);
  return 0;
}
