# scripts/gpu-check.d/steps.bash — the step bookkeeping the gpu-check.d steps
# share (sourced, not run: gpu-check.sh runs only the executable *.sh here).
# Before sourcing, set STEP (the step's name, e.g. 30-integration) and logs
# (its log folder, which must exist).
#   say TEXT            a timestamped line
#   check NAME CMD...   runs CMD, output to $logs/NAME.log (its tail on the
#                       console); 0 = passed, 77 = skipped, else FAILED
#   check_limited NAME [VAR=VALUE...] CMD...
#                       check, with CMD (in that environment) under
#                       $GEOPREF_PEERS_SECONDS (240), unbuffered: a run cut at
#                       its limit keeps the rows it printed and passes
#   summary             prints the table of every check (and summary.txt); the
#                       caller exits with $failed
t0=$(date +%s)
names=() results=()
failed=0
say() { echo "== $STEP [$(( $(date +%s) - t0 )) s] $*"; }
check() {
  local name=$1; shift
  "$@" >"$logs/$name.log" 2>&1
  local rc=$? res=passed
  tail -n 15 "$logs/$name.log"
  case $rc in 0) ;; 77) res=skipped ;; *) res="FAILED ($rc)"; failed=1 ;; esac
  names+=("$name") results+=("$res")
  say "$name: $res"
}
check_limited() {
  local name=$1; shift
  check "$name" env PYTHONUNBUFFERED=1 bash -c \
    'timeout --kill-after=10 "${GEOPREF_PEERS_SECONDS:-240}" env "$@"
     rc=$?; [[ $rc -eq 124 ]] && echo "stopped at its time limit; rows so far kept" && rc=0
     exit $rc' _ "$@"
}
summary() {
  echo
  echo "== $STEP summary ($(( $(date +%s) - t0 )) s)"
  for i in "${!names[@]}"; do printf '  %-16s %s\n' "${names[$i]}" "${results[$i]}"; done |
    tee "$logs/summary.txt"
}
