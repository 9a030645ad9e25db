/* A C consumer of the installed kernels library: links geopref::cuda (or
 * geopref::cuda_static) and exercises the host side of the C ABI, which needs
 * no GPU: version, loss names, status strings, the workspace-size query and
 * argument checking. Exit 0 when all agree with the header's contract. */
#include <stdio.h>
#include <string.h>

#include "geopref/c_api.h"
#include "geopref/config.hpp" /* only macros: the header's version numbers */

int main(void) {
  int loss = -1, failures = 0;
  const int expect = GEOPREF_VERSION_MAJOR * 10000 + GEOPREF_VERSION_MINOR * 100 + GEOPREF_VERSION_PATCH;
  if (geopref_version() != expect) { /* the library matches the installed headers */
    printf("version %d\n", geopref_version());
    ++failures;
  }
  if (!geopref_parse_loss("gropo", &loss) || loss != GEOPREF_LOSS_GROPO) ++failures;
  if (geopref_parse_loss("gdpoo", &loss)) ++failures;
  if (strncmp(geopref_status_string(GEOPREF_LABEL_OUT_OF_RANGE), "label out of range", 18) != 0)
    ++failures;

  geopref_options opt;
  geopref_options_init(&opt);
  geopref_train_args args;
  geopref_train_args_init(&args);
  args.tokens.n_rows = 1000;
  args.tokens.vocab = 32000;
  args.tokens.ld = 32000;
  args.tokens.n_seqs = 8;
  args.n_pairs = 4;
  size_t bytes = 0;
  if (geopref_train_step_workspace_size(&args, &opt, &bytes) != GEOPREF_SUCCESS || bytes == 0)
    ++failures;
  args.tokens.logits_dtype = 7; /* not a dtype */
  if (geopref_train_step_workspace_size(&args, &opt, &bytes) != GEOPREF_UNSUPPORTED_DTYPE)
    ++failures;
  printf("C ABI (host side): %s, workspace for N=1000, V=32000: %zu bytes\n",
         failures ? "FAIL" : "ok", bytes);
  return failures ? 1 : 0;
}
