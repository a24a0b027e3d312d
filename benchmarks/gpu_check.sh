#!/usr/bin/env bash
# The GPU check in one call: every section of benchmarks/gpu_check.py and the kernel timings of
# benchmarks/bench_kernels.py, each in its own process under a time limit, so that one failing or
# slow section cannot hide the others. Results: RESULTS_DIR/results.jsonl (JSON lines), log.txt
# (stderr and nvidia-smi), and a short table printed last; the exit status is 1 when a section failed
# or ran out of time.
#
#   bash benchmarks/gpu_check.sh RESULTS_DIR            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh RESULTS_DIR --smoke    # tiny shapes, anywhere (CPU: kernels interpreted)
#   KERNEL_ARGS="--seq 8192 32768 --cases xla pallas" bash benchmarks/gpu_check.sh RESULTS_DIR "" kernels
#                                                       # only the named sections, kernel timings narrowed
#
# Without an installed xlstm-jax the package is installed (no dependencies) into a temporary folder.
set -u
out=${1:?usage: gpu_check.sh RESULTS_DIR [--smoke|""] [SECTION ...]}
smoke=${2:-}
if [[ -n $smoke && $smoke != --smoke ]]; then
  echo "gpu_check.sh: the second argument must be --smoke or \"\" (then section names), got '$smoke'" >&2
  exit 2
fi
shift $(($# < 2 ? $# : 2))
only=" ${*:-env mlstm kernels slstm train tune} "
failed=0
mkdir -p "$out"
res="$out/results.jsonl"
log="$out/log.txt"
: >"$res"
: >"$log"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

if ! "$py" -c "import xlstm_jax.pallas_kernels" 2>/dev/null; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-deps --no-build-isolation --no-compile --target "$site" . >>"$log" 2>&1 || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# Carried wheels (.whl/) fill in what the machine lacks: the official mlstm_kernels (the TFLA
# baseline), and flax when the installed one is older than pyproject.toml's floor.
needs=()
"$py" -c "import mlstm_kernels" 2>/dev/null || needs+=(.whl/mlstm_kernels-*.whl)
"$py" -c "import flax, sys; sys.exit(tuple(map(int, flax.__version__.split('.')[:3])) < (0, 12, 8))" 2>/dev/null ||
  needs+=(.whl/flax-*.whl)
wheels=()
for w in "${needs[@]}"; do [ -f "$w" ] && wheels+=("$w"); done
if [ ${#wheels[@]} -gt 0 ]; then
  wsite=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$wsite" "${wheels[@]}" >>"$log" 2>&1
  export PYTHONPATH="$wsite${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed from .whl: ${wheels[*]}" >>"$log"
fi
command -v nvidia-smi >/dev/null && nvidia-smi >>"$log" 2>&1

section() {  # name, time limit (s), command...
  local name=$1 limit=$2
  shift 2
  [[ $only == *" $name "* ]] || return 0
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)" | tee -a "$log"
  timeout -k 10 "$limit" "$@" >>"$res" 2>>"$log"
  local rc=$?
  [[ $rc -eq 0 ]] || failed=1
  echo "{\"section\": \"done\", \"name\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" >>"$res"
  echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
}

section env 45 "$py" benchmarks/gpu_check.py --section env $smoke
section mlstm 120 "$py" benchmarks/gpu_check.py --section mlstm $smoke
# torch (the TFLA baseline) shares the GPU with JAX in this process: JAX takes at most 60% of it.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 section kernels 190 "$py" benchmarks/bench_kernels.py ${KERNEL_ARGS:---reps 10} $smoke
section slstm 100 "$py" benchmarks/gpu_check.py --section slstm $smoke
section train 160 "$py" benchmarks/gpu_check.py --section train $smoke
section tune 70 "$py" benchmarks/gpu_check.py --section tune $smoke
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >>"$log" 2>&1
echo "== summary"
"$py" benchmarks/gpu_check.py --summary "$res"
exit $failed  # 1 when a section failed or ran out of time
