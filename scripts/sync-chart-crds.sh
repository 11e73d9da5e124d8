#!/usr/bin/env bash
# Copy the canonical CRDs (crds/*.yaml), byte for byte, to where they ship:
#  - the chart (charts/fillprob-operator/crds/), so `helm install` creates the same CRD that
#    `kubectl apply -f crds/` does;
#  - the Python package (operator/fillprob_operator/crds/, package data in the wheel), so the
#    installed `kubectl-fillprob plan` validates against the same CRD without a checkout;
#  - the CRD chart (charts/fillprob-operator-crds/files/), whose template adds only
#    helm.sh/resource-policy: keep and labels, so `helm upgrade` upgrades the CRD.
# `make chart-crds` runs this; tests/unit/test_chart.py and tests/unit/test_packaged_crd.py fail
# when a copy differs. The chart's own kopf peering CRDs (kopf-peerings.yaml) live only in the
# chart and are kept.
#   --check: change nothing; exit 1 and name the files that are out of date.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/crds"
destinations=("$repo/charts/fillprob-operator/crds" "$repo/operator/fillprob_operator/crds"
              "$repo/charts/fillprob-operator-crds/files")
check=0
[ "${1:-}" = "--check" ] && check=1

shopt -s nullglob
sources=("$src"/*.yaml)
[ ${#sources[@]} -gt 0 ] || { echo "sync-chart-crds: no CRDs in $src" >&2; exit 1; }

stale=0
for dst in "${destinations[@]}"; do
  for f in "${sources[@]}"; do
    out="$dst/$(basename "$f")"
    if cmp -s "$f" "$out"; then
      continue
    fi
    if [ $check = 1 ]; then
      echo "out of date: ${out#"$repo/"} (differs from ${f#"$repo/"}); run make chart-crds" >&2
      stale=1
    else
      mkdir -p "$dst"
      cp "$f" "$out.tmp.$$" && mv -f "$out.tmp.$$" "$out"
      echo "updated ${out#"$repo/"} from ${f#"$repo/"}"
    fi
  done
done
exit $stale
