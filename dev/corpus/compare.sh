#!/usr/bin/env bash
# The geopref-check corpus (issue 21: outputs stay bitwise identical while the
# argument model changes): seeded inputs from make_inputs.py, 31 runs (every
# loss, a weighted combination, token weights, a margin transform, shards,
# hidden states, the per-token primitive), through two geopref-check binaries;
# every .npy output must be byte for byte the same and every metrics.json the
# same apart from keys only the newer binary writes.
#
#   dev/corpus/compare.sh OLD_BINARY NEW_BINARY [WORKDIR]
set -euo pipefail
old=$1 new=$2 work=${3:-$(mktemp -d)}
[[ -x "$old" && -x "$new" ]] || { echo "compare.sh: $old or $new is not an executable" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work" && cd "$work"
python3 "$here/make_inputs.py"
corpus() {  # corpus BIN ROOT
  local bin=$1 root=$2 i=0
  rm -rf "$root"; mkdir -p "$root"
  run() { i=$((i + 1)); mkdir -p "$root/$i"; echo "$*" >"$root/$i/cmd"
          "$bin" "$@" --out "$root/$i" >"$root/$i/stdout" 2>&1 || echo "rc=$?" >>"$root/$i/stdout"; }
  local base="--labels y.npy --offsets off.npy --soft-labels p.npy"
  for loss in dpo cdpo ipo cipo ropo hinge robust exo_pair discopop simpo gdpo gipo gropo nca_pair \
              bco_pair sppo_hard apo_zero apo_down orpo aot aot_unpaired sft; do
    local extra="--ref-logps ref.npy" eps=""
    case $loss in simpo|orpo|sft) extra="" ;; esac
    case $loss in robust) eps="--epsilon 0.1" ;; exo_pair) eps="--epsilon 0.001" ;; esac
    run --logits z32.npy $base $extra --loss $loss $eps
  done
  run --logits z16.npy $base --ref-logps ref.npy --loss gdpo --weights w.npy --token-weights tw.npy --average-logps
  run --logits z32.npy $base --ref-logps ref.npy --loss dpo,sft --loss-weights 1,0.5 --reduction none
  run --logits z32.npy $base --ref-logps ref.npy --loss dpo --f-divergence js --geometric
  run --logits z32.npy $base --ref-logps ref.npy --loss dpo --vocab-shards 3
  run --hidden h.npy --weight wt.npy --bias b.npy $base --ref-logps ref.npy --loss gdpo
  run --hidden h.npy --weight wt.npy $base --ref-logps ref.npy --loss ipo --vocab-shards 2
  run --per-token --logits z32.npy --labels y.npy --token-grad g.npy
  run --per-token --logits z16.npy --labels y.npy --token-grad g.npy
  run --per-token --hidden h.npy --weight wt.npy --bias b.npy --labels y.npy --token-grad g.npy
}
corpus "$old" old
corpus "$new" new
python3 - <<'PY'
import filecmp, glob, json, os, sys
bad, files, runs = 0, 0, 0
for d in sorted(glob.glob("old/*/")):
    k = os.path.basename(d.rstrip("/")); runs += 1
    for f in sorted(glob.glob(d + "*.npy")):
        files += 1
        if not filecmp.cmp(f, "new/%s/%s" % (k, os.path.basename(f)), shallow=False):
            bad += 1; print("differs:", k, os.path.basename(f), open(d + "cmd").read().strip())
    if os.path.exists(d + "metrics.json"):
        a = json.load(open(d + "metrics.json")); b = json.load(open("new/%s/metrics.json" % k))
        if any(b.get(key) != v for key, v in a.items()):
            bad += 1; print("metrics differ:", k, open(d + "cmd").read().strip())
print("%d runs, %d .npy files: %s" % (runs, files, "all identical" if bad == 0 else "%d differ" % bad))
sys.exit(1 if bad or files == 0 else 0)
PY
