#!/usr/bin/env bash
# Build the krew archive of the plugin: dist/kubectl-fillprob-v<version>.tar.gz holding
#   kubectl-fillprob                          the shim (krew/kubectl-fillprob): runs the Python plugin
#   fillprob_operator-<version>-py3-none-any.whl   the package (CRD included), installed by the user
# and print its sha256. The archive is reproducible (SOURCE_DATE_EPOCH = the last commit's time,
# sorted tar members, fixed owner, gzip -n), so the same tree gives the same sha256.
#   --update-manifest: also write that sha256 and the version into krew/fillprob.yaml.
#   --base-url URL:     with --update-manifest, the release URL the archive is published under
#                       (uri = URL/kubectl-fillprob-v<version>.tar.gz).
# Local install without publishing (krew checks the sha256 against the manifest):
#   kubectl krew install --manifest=krew/fillprob.yaml --archive=dist/kubectl-fillprob-v<version>.tar.gz
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
update=0
base_url=""
while [ $# -gt 0 ]; do
  case "$1" in
    --update-manifest) update=1 ;;
    --base-url) base_url="${2:?--base-url needs a URL}"; shift ;;
    *) echo "usage: $0 [--update-manifest] [--base-url URL]" >&2; exit 64 ;;
  esac
  shift
done

version="$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$repo/pyproject.toml")"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 315532800)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Build from a copy of the build inputs (no stale build/ or egg-info from the checkout).
mkdir -p "$tmp/src" "$tmp/stage" "$repo/dist"
cp "$repo/pyproject.toml" "$tmp/src/"
(cd "$repo" && tar --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' -cf - operator) | tar -C "$tmp/src" -xf -
"$python" -m pip wheel --no-deps -q -w "$tmp/stage" "$tmp/src"
wheel="$(cd "$tmp/stage" && ls fillprob_operator-"$version"-*.whl)"
install -m 0755 "$repo/krew/kubectl-fillprob" "$tmp/stage/kubectl-fillprob"

archive="$repo/dist/kubectl-fillprob-v$version.tar.gz"
tar -C "$tmp/stage" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  -cf - kubectl-fillprob "$wheel" | gzip -n -9 > "$archive"
sha="$(sha256sum "$archive" | cut -d' ' -f1)"
echo "$archive"
echo "sha256 $sha"

if [ $update = 1 ]; then
  "$python" - "$repo/krew/fillprob.yaml" "v$version" "$sha" "$base_url" <<'PY'
import re, sys
path, version, sha, base = sys.argv[1:]
text = open(path, encoding="utf-8").read()
text = re.sub(r"(?m)^(  version: ).*$", rf"\g<1>{version}", text)
text = re.sub(r"(?m)^(    sha256: ).*$", rf"\g<1>{sha}", text)
text = re.sub(r"fillprob_operator-[^ \n]*?-py3-none-any\.whl", f"fillprob_operator-{version[1:]}-py3-none-any.whl", text)
if base:
    text = re.sub(r"(?m)^(    uri: ).*$", rf"\g<1>{base.rstrip('/')}/kubectl-fillprob-{version}.tar.gz", text)
else:
    text = re.sub(r"kubectl-fillprob-v[^/\s]*\.tar\.gz", f"kubectl-fillprob-{version}.tar.gz", text)
    text = re.sub(r"/v\d[^/\s]*/kubectl-fillprob-", f"/{version}/kubectl-fillprob-", text)
open(path, "w", encoding="utf-8").write(text)
PY
  echo "updated krew/fillprob.yaml (version v$version, sha256 $sha)"
fi
