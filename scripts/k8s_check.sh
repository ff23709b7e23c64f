#!/usr/bin/env bash
# make k8s-check: renders every overlay in k8s/overlays, alone and with every combination of the opt-in
# components in k8s/components, with `kubectl kustomize`; validates every rendered object offline with
# `kubernetes-validate --strict` (schemas bundled, no cluster, no network); then runs the manifest tests in
# tests/k8s (settings cross-check, ports and probes, security, references between objects, Dockerfiles) on
# those renders. Exits non-zero on any failure.
#
#   scripts/k8s_check.sh [--out DIR] [--no-tests]
#     --out DIR    keep the renders in DIR (one file per combination: <overlay>[+<component>...].yaml); a new or empty
#                  folder, or one of an earlier run (its renders are replaced): other files there are refused
#     --no-tests   render and validate only (what tests/k8s itself calls)
#   KUBERNETES_VERSION (default 1.30.0): the API version the objects are validated against.
#   PYTHON (default: python): the interpreter that runs the tests (needs pytest, pydantic-settings, PyYAML).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
k8s="$root/k8s"
kube_version=${KUBERNETES_VERSION:-1.30.0}
python=${PYTHON:-python}
out=""
run_tests=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --no-tests) run_tests=0; shift ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "k8s-check: unknown argument $1" >&2; exit 2 ;;
  esac
done

command -v kubernetes-validate >/dev/null \
  || { echo "k8s-check: kubernetes-validate not found on PATH (make k8s-check puts .venv/bin first)" >&2; exit 2; }
# kubectl is a system tool, not a Python package: where it is missing the renders are skipped, as tests/k8s skips
# them, and said so, rather than failing every other check of a machine that cannot install it.
if ! command -v kubectl >/dev/null; then
  echo "k8s-check: SKIPPED: kubectl (>= 1.27, with kustomize) not found on PATH, so the manifests were not rendered" \
    "or validated; install it to run this check" >&2
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$out" ]; then
  out="$work/renders"
fi
mkdir -p "$out"
# --out holds this script's renders only (<overlay>.yaml, <overlay>+<components>.yaml, from an earlier run: replaced).
# Anything else there is refused, not deleted: it is not ours, and it would be validated as a render.
overlays=()
for overlay_dir in "$k8s"/overlays/*/; do overlays+=("$(basename "$overlay_dir")"); done
foreign=()
for file in "$out"/* "$out"/.[!.]*; do
  [ -e "$file" ] || continue
  name=$(basename "$file")
  ours=0
  for overlay in "${overlays[@]}"; do
    case "$name" in "$overlay.yaml" | "$overlay+"*.yaml) ours=1 ;; esac
  done
  [ "$ours" = 1 ] || foreign+=("$name")
done
if [ ${#foreign[@]} -gt 0 ]; then
  echo "k8s-check: --out $out holds files this script did not write (${foreign[*]}); give a new or empty folder" >&2
  exit 2
fi
for overlay in "${overlays[@]}"; do rm -f "$out/$overlay.yaml" "$out/$overlay+"*.yaml; done

# Components in a fixed order: embedded-ranking last, because it removes Triton's objects, including the ones
# other components add (its HPA, its NetworkPolicy). Components that only make sense with Triton are skipped for
# overlays that render no Triton (the cpu overlay removes it). sharded-retrieval (index shards + router) is
# rendered with every overlay and combination like the others; it gives the same objects wherever it is listed
# (tests/k8s/test_sharded_retrieval.py renders it first to compare).
components=()
for name in $(cd "$k8s/components" 2>/dev/null && ls -d -- */ 2>/dev/null | sed 's#/$##' | LC_ALL=C sort); do
  [ -f "$k8s/components/$name/kustomization.yaml" ] || continue
  [ "$name" = embedded-ranking ] && continue
  components+=("$name")
done
[ -f "$k8s/components/embedded-ranking/kustomization.yaml" ] && components+=(embedded-ranking)
needs_triton=(autoscaling-triton)

contains() { # contains WORD LIST...
  local word=$1; shift
  local item
  for item in "$@"; do [ "$item" = "$word" ] && return 0; done
  return 1
}

render() { # render DIR OUTFILE
  if ! kubectl kustomize "$1" >"$2" 2>"$work/error"; then
    echo "k8s-check: FAILED to render $(basename "$2" .yaml):" >&2
    cat "$work/error" >&2
    return 1
  fi
  [ -s "$2" ] || { echo "k8s-check: $(basename "$2" .yaml) rendered nothing" >&2; return 1; }
}

failed=0
renders=0
for overlay_dir in "$k8s"/overlays/*/; do
  overlay=$(basename "$overlay_dir")
  [ -f "$overlay_dir/kustomization.yaml" ] || continue
  render "$overlay_dir" "$out/$overlay.yaml" || { failed=1; continue; }
  renders=$((renders + 1))

  # The overlay's own components, and whether it still runs Triton.
  own=()
  for name in "${components[@]+"${components[@]}"}"; do
    grep -Eq "components/$name/?[[:space:]]*$" "$overlay_dir/kustomization.yaml" && own+=("$name")
  done
  has_triton=0
  grep -Eq '^  name: triton$' "$out/$overlay.yaml" && has_triton=1
  candidates=()
  for name in "${components[@]+"${components[@]}"}"; do
    contains "$name" "${own[@]+"${own[@]}"}" && continue
    if [ "$has_triton" = 0 ] && contains "$name" "${needs_triton[@]}"; then continue; fi
    candidates+=("$name")
  done

  # Every non-empty subset of the candidates, in the fixed order, on top of the overlay.
  n=${#candidates[@]}
  for ((mask = 1; mask < (1 << n); mask++)); do
    chosen=()
    for ((i = 0; i < n; i++)); do
      ((mask & (1 << i))) && chosen+=("${candidates[i]}")
    done
    label=$(IFS=+; echo "$overlay+${chosen[*]}")
    dir="$work/combinations/$label"
    mkdir -p "$dir"
    {
      echo "apiVersion: kustomize.config.k8s.io/v1beta1"
      echo "kind: Kustomization"
      echo "resources:"
      echo "  - $(realpath --relative-to="$dir" "$overlay_dir")"
      echo "components:"
      for name in "${chosen[@]}"; do
        echo "  - $(realpath --relative-to="$dir" "$k8s/components/$name")"
      done
    } >"$dir/kustomization.yaml"
    render "$dir" "$out/$label.yaml" || { failed=1; continue; }
    renders=$((renders + 1))
  done
done

if [ "$renders" = 0 ]; then
  echo "k8s-check: no overlay rendered (k8s/overlays/*/kustomization.yaml)" >&2
  exit 1
fi

# One validator run over every render; it names each object that fails and why.
if ! kubernetes-validate --strict --quiet -k "$kube_version" "$out"/*.yaml >"$work/validate" 2>&1; then
  echo "k8s-check: objects that are not valid Kubernetes $kube_version (strict):" >&2
  cat "$work/validate" >&2
  failed=1
fi
objects=$(cat "$out"/*.yaml | grep -c '^kind: ' || true)
if [ "$failed" != 0 ]; then
  echo "k8s-check: FAILED ($renders renders)" >&2
  exit 1
fi
echo "k8s-check: $renders renders (every overlay, alone and with every combination of components):" \
  "$objects objects valid against Kubernetes $kube_version (strict)"

if [ "$run_tests" = 1 ]; then
  K8S_CHECK_RENDERS="$out" "$python" -m pytest -q -p no:cacheprovider "$root/tests/k8s"
fi
