#!/usr/bin/env bash
# Run the test suite. CI (.ci/run) runs `bash scripts/test.sh --all`.
#
#   bash scripts/test.sh [PYTEST ARGS]  set up .venv (scripts/setup.sh: the pinned environment,
#                                       torch 2.14.1, newest napari, PyQt6) and run pytest in it
#   bash scripts/test.sh --all          what CI runs: lint (ruff check, ruff format --check), the
#                                       pinned environment, then the tox environments `oldest`
#                                       (Python 3.10, every lower bound pyproject.toml claims) and
#                                       `newest` (Python 3.12, the newest release of everything);
#                                       a table of each step's result and time at the end
#   bash scripts/test.sh --all --lean   the same, for a clean clone on a machine short of disk (what
#                                       .ci/run runs): no pip cache, and each environment is deleted
#                                       once its tests ran (.venv included), so at most one holds
#                                       disk at a time (each is 6-7 GB: torch from PyPI carries CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
export PMT_IQA_OFFLINE=1 QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-xcb}

if [ "${1:-}" != "--all" ]; then
  bash scripts/setup.sh
  exec .venv/bin/python -m pytest -q "$@"
fi

LEAN=0
if [ "${2:-}" = "--lean" ]; then
  LEAN=1
  export PIP_NO_CACHE_DIR=1
fi

TOX_VERSION=4.67.15
REPORTS=.tox/_reports
mkdir -p "$REPORTS"
rm -f "$REPORTS"/*.xml
steps=() results=() seconds=() cpu=()

cpu_now() {  # CPU_NOW = CPU seconds (user + system) of this shell's finished child processes
  times >"$REPORTS/times.txt"  # (in this shell: a $(...) subshell has children of its own)
  CPU_NOW=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/);
    printf "%.0f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$REPORTS/times.txt")
}

step() {  # step NAME COMMAND...: run, time and record one step; a failure does not stop the rest
  local name=$1 t0 c0 rc
  shift
  echo
  echo "==== $name: $*"
  cpu_now
  t0=$(date +%s) c0=$CPU_NOW
  set +e
  "$@"
  rc=$?
  set -e
  steps+=("$name") results+=("$([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)")")
  cpu_now
  seconds+=("$(($(date +%s) - t0))") cpu+=("$((CPU_NOW - c0))")
  return 0
}

find_python() {  # find_python 3.10: the newest installed 3.10.x interpreter (pyenv's, else PATH)
  local v=$1 c root
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for c in $(ls -d "$root"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V -r) \
    "$(command -v "python$v" || true)"; do
    if [ -n "$c" ] && "$c" -c "import sys, venv; assert sys.version_info[:2] == (${v/./, })" \
      >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  echo "Python $v not found (pyenv's versions/$v.*, python$v on the PATH): install it, e.g." \
    "'pyenv install $v', to run the tox environment that needs it" >&2
  return 1
}

free_disk() {  # free_disk WHERE: the free space of this folder's file system, for the log
  echo "free disk ($1): $(df -h --output=avail . | tail -1 | tr -d ' ')"
}

drop() {  # drop PATH...: with --lean, delete an environment whose tests ran
  if [ "$LEAN" = 1 ]; then
    rm -rf "$@"
    free_disk "after removing $*"
  fi
}

tox_runner() {  # tox itself, in its own small venv (not in .venv, whose pins it must not move)
  { [ -x .tox/_runner/bin/python ] || python3 -m venv .tox/_runner; } &&
    .tox/_runner/bin/python -m pip install -q "tox==$TOX_VERSION"
}

tox_env() {  # tox_env NAME PHASE: PHASE "install" builds the environment, "test" runs pytest in it
  if [ "$2" = install ]; then
    .tox/_runner/bin/tox run -e "$1" --notest
  else
    .tox/_runner/bin/tox run -e "$1" --skip-pkg-install -- --junitxml="$REPORTS/$1.xml"
  fi
}

free_disk start
step "setup pinned (.venv)" bash scripts/setup.sh
free_disk "after the pinned setup"
step "lint: ruff check" .venv/bin/ruff check .
step "lint: ruff format --check" .venv/bin/ruff format --check .
step "test pinned (.venv)" .venv/bin/python -m pytest -q -p no:cacheprovider \
  --junitxml="$REPORTS/pinned.xml"
drop .venv
step "setup tox" tox_runner
if PMT_IQA_PY310=$(find_python 3.10) && PMT_IQA_PY312=$(find_python 3.12); then
  export PMT_IQA_PY310 PMT_IQA_PY312
  # tox also looks interpreters up by name (for the wheel-building envs): pyenv's shims answer
  # "command not found" for a version that is not the global one, so put the real ones first
  mkdir -p .tox/_pythons
  ln -sf "$PMT_IQA_PY310" .tox/_pythons/python3.10
  ln -sf "$PMT_IQA_PY312" .tox/_pythons/python3.12
  export PATH="$PWD/.tox/_pythons:$PATH"
  for env in oldest newest; do
    step "setup $env" tox_env "$env" install
    free_disk "after the $env setup"
    step "test $env" tox_env "$env" test
    drop ".tox/$env"
  done
else
  steps+=("find Python 3.10 and 3.12") results+=("FAILED") seconds+=(0) cpu+=(0)
fi

echo
echo "==== summary (wall-clock seconds, and CPU seconds used: on a busy machine wall >> CPU / 2)"
failed=0
printf '%-28s %-18s %8s %8s\n' step result wall cpu
for i in "${!steps[@]}"; do
  printf '%-28s %-18s %7ss %7ss\n' "${steps[$i]}" "${results[$i]}" "${seconds[$i]}" "${cpu[$i]}"
  [ "${results[$i]}" = ok ] || failed=1
done
python3 - "$REPORTS" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in sorted(Path(sys.argv[1]).glob("*.xml")):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    got = {k: sum(int(s.get(k, 0)) for s in suites) for k in total}
    print(f"{path.stem}: {got['tests']} tests, {got['failures'] + got['errors']} failed, "
          f"{got['skipped']} skipped")
    total = {k: total[k] + got[k] for k in total}
bad = total["failures"] + total["errors"]
print(f"ci: {total['tests'] - bad - total['skipped']} passed, {bad} failed, {total['skipped']} skipped")
EOF
exit $failed
