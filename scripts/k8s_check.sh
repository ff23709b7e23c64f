#!/usr/bin/env bash
# Placeholder until the Kubernetes manifests exist (k8s issue): renders nothing, checks nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$root/k8s/base/kustomization.yaml" ]; then
  echo "k8s-check: no k8s/base/kustomization.yaml yet; nothing to render"
  exit 0
fi
echo "k8s-check: k8s/base exists but this script has not been written yet" >&2
exit 1
