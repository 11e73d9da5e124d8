#!/usr/bin/env bash
# Build (or reuse) every image the testbed's node runs, and load them into its containerd.
# The machine has no Docker engine and no registry, so:
#  - a base image is made from Debian packages (debootstrap minbase + python3), standing in
#    for the public python:3.11-slim the Dockerfiles default to (ARG BASE);
#  - buildah (Debian's) builds the repository's Dockerfiles daemonless, in its own storage
#    under .testbed/cache/buildah (vfs, chroot isolation: nothing touches the system's);
#  - the operator's pinned wheels are downloaded by the host (whose pip trusts the HTTPS
#    proxy) and mounted into the build, which then installs with --no-index;
#  - each image is written to .testbed/images/<name>.tar (OCI archive named as containerd
#    will look it up), which `ctr images import` and `kind load image-archive` both read.
#
#   testbed/images.sh [build]         build what changed (cold: minutes; warm: seconds)
#   testbed/images.sh import SOCKET   import the archives into containerd (namespace k8s.io),
#                                     skipping those already there with the same digest
#
# Sourcing it (`. testbed/images.sh`) only defines the TB_IMG_* refs and the tb_images_build
# and tb_images_import functions, for up.sh.
# An image is rebuilt when the hash of its inputs changes: its Dockerfile, the files it copies,
# the base image's id and the build arguments (<name>.inputs beside the archive).
set -euo pipefail
# Sourced from up.sh, lib.sh is already there: sourcing it again would restart its clock.
# shellcheck source=lib.sh
declare -F tb_step >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TB_IMAGES_DIR="$TB_DIR/images"
TB_BUILDAH="$TB_CACHE/buildah"
TB_WHEELS="$TB_CACHE/wheels"
TB_IMAGES_CTX="$TB_CACHE/image-context"  # generated build contexts (pause, coredns, grinder-lite)

# Refs as a pod spec (and containerd's config, for the sandbox) names them. The pause and
# CoreDNS tags are pinned here and checked against their sources when built.
TB_BASE_SUITE="bookworm"
TB_BASE_PACKAGES="python3,python3-venv,ca-certificates"
TB_IMG_BASE="localhost/fillprob-base:$TB_BASE_SUITE"
TB_PAUSE_TAG="3.10.2"    # k8s.io/kubernetes build/pause/Makefile TAG at $TB_K8S_VERSION
TB_COREDNS_TAG="1.13.2"  # github.com/coredns/coredns in testbed/cluster/go.mod
TB_IMG_PAUSE="localhost/testbed/pause:$TB_PAUSE_TAG"
TB_IMG_COREDNS="localhost/testbed/coredns:$TB_COREDNS_TAG"
TB_IMG_GRINDER="grinder-sim:local"
TB_IMG_GRINDER_LITE="grinder-lite:local"  # sim/grinder-lite, the bench's simulator
TB_PROJECT_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$TB_REPO/pyproject.toml" | head -1)
TB_IMG_OPERATOR="fillprob-operator:$TB_PROJECT_VERSION"
# Archive names (.testbed/images/<name>.tar), in build order.
TB_IMAGE_NAMES="pause coredns grinder-lite grinder-sim fillprob-operator"

# The operator's wheels: CPython 3.11 on x86_64 glibc, as both python:3.11-slim and the
# Debian base run. pip does not widen a manylinux_2_N platform to older ones by itself.
TB_WHEEL_PYTHON="3.11"
TB_WHEEL_GLIBC_MAX=36  # bookworm's glibc 2.36

# bah ARGS...: buildah with the testbed's own storage. Its transient files (layer blobs while
# committing and pushing) stay under .testbed too; TMPDIR is set for buildah alone, because
# up.sh sources this file and starts daemons after.
bah() {
  mkdir -p "$TB_BUILDAH/tmp"
  TMPDIR="$TB_BUILDAH/tmp" buildah --storage-driver vfs --root "$TB_BUILDAH/storage" --runroot "$TB_BUILDAH/run" "$@"
}

# containerd_name REF: the fully qualified name containerd (and the kubelet) turns REF into:
# a name without a registry host is on docker.io, one without a path under library/. An
# archive named otherwise imports under a name no pod asks for.
containerd_name() {
  local ref="$1" first="${1%%/*}"
  if [ "$first" != "$ref" ] && { [[ "$first" == *.* ]] || [[ "$first" == *:* ]] || [ "$first" = localhost ]; }; then
    echo "$ref"
  elif [[ "$ref" == */* ]]; then
    echo "docker.io/$ref"
  else
    echo "docker.io/library/$ref"
  fi
}

# run_logged LABEL LOG PATTERN CMD...: run CMD with output in LOG; every 10 s print the last
# line of LOG matching PATTERN (grep -E) so a long step shows it is moving.
run_logged() {
  local label="$1" log="$2" pattern="$3" start last="" line pid rc
  shift 3
  start=$(date +%s)
  "$@" >"$log" 2>&1 &
  pid=$!
  while kill -0 $pid 2>/dev/null; do
    sleep 1 & wait $! 2>/dev/null || true
    [ $(( ($(date +%s) - start) % 10 )) -eq 0 ] && kill -0 $pid 2>/dev/null || continue
    line=$(grep -E "$pattern" "$log" 2>/dev/null | tail -n 1 | cut -c1-120 || true)
    if [ -n "$line" ] && [ "$line" != "$last" ]; then
      tb_info "[$label] $(( $(date +%s) - start ))s: $line"
      last=$line
    fi
  done
  wait $pid && rc=0 || rc=$?
  return $rc
}

# inputs_hash PATHS EXTRA...: sha256 over the files under PATHS (space separated, relative to
# the repository or absolute; bytecode and egg-info left out, as .dockerignore does) and the
# EXTRA strings.
inputs_hash() {
  local paths="$1"
  shift
  {
    # shellcheck disable=SC2086  # PATHS is a list
    (cd "$TB_REPO" && find $paths -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
      LC_ALL=C sort -z | xargs -0 -r sha256sum)
    printf '%s\n' "$@"
  } | sha256sum | cut -d' ' -f1
}

# image_id REF: the id of REF in the testbed's storage, empty when absent.
image_id() { { bah images --noheading --no-trunc --format '{{.ID}}' "$1" 2>/dev/null || true; } | head -1 | sed 's/^sha256://'; }

# ---------------------------------------------------------------- base image
# debian_mirror: the Debian mirror this machine's apt uses for $TB_BASE_SUITE (deb822 .sources
# or sources.list); TB_DEBIAN_MIRROR overrides.
debian_mirror() {
  if [ -n "${TB_DEBIAN_MIRROR:-}" ]; then echo "$TB_DEBIAN_MIRROR"; return; fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v RS= -v suite="$TB_BASE_SUITE" '
      {
        types = suites = uris = comps = ""
        n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          split(lines[i], kv, ":[ \t]*")
          v = substr(lines[i], index(lines[i], ":") + 1)
          if (kv[1] == "Types") types = " " v " "
          if (kv[1] == "Suites") suites = " " v " "
          if (kv[1] == "URIs") uris = v
          if (kv[1] == "Components") comps = " " v " "
        }
        if (types ~ /[ \t]deb[ \t]/ && suites ~ ("[ \t]" suite "[ \t]") && comps ~ /[ \t]main[ \t]/) {
          split(uris, u, " "); for (j in u) if (u[j] != "") { print u[j]; exit }
        }
      }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(sed -e 's/\[[^]]*\]//' "$f" | awk -v suite="$TB_BASE_SUITE" '$1 == "deb" && $3 == suite { print $2; exit }')
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  return 1
}

step_base() {
  local mirror key rootfs stamp="$TB_CACHE/rootfs/base.inputs" id log start
  mirror=$(debian_mirror) ||
    tb_fail "base image" "no apt source for $TB_BASE_SUITE in /etc/apt/sources.list{,.d}; set TB_DEBIAN_MIRROR" ""
  key=$(printf '%s\n' "$TB_BASE_SUITE" "$TB_BASE_PACKAGES" "$mirror" minbase slim | sha256sum | cut -c1-16)
  rootfs="$TB_CACHE/rootfs/$TB_BASE_SUITE-$key"
  id=$(image_id "$TB_IMG_BASE")
  if [ -n "$id" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key $id" ]; then
    tb_step "base image: reused $TB_IMG_BASE (${id:0:12}; $TB_BASE_SUITE minbase + $TB_BASE_PACKAGES)"
    TB_BASE_ID=$id
    return
  fi
  command -v debootstrap >/dev/null || tb_fail "base image" "debootstrap not found (apt-get install debootstrap)" ""
  [ "$(id -u)" = 0 ] || tb_fail "base image" "debootstrap and buildah's chroot isolation need root" ""

  if [ ! -f "$rootfs/.complete" ]; then
    log="$TB_CACHE/logs/debootstrap.log"
    tb_step "base image: debootstrap --variant=minbase $TB_BASE_SUITE from $mirror (about 2-4 min; log: $log)"
    start=$(date +%s)
    rm -rf "$rootfs.tmp"
    mkdir -p "$(dirname "$rootfs")"
    run_logged debootstrap "$log" '^I: ' \
      debootstrap --variant=minbase --include="$TB_BASE_PACKAGES" "$TB_BASE_SUITE" "$rootfs.tmp" "$mirror" ||
      tb_fail "base image: debootstrap" "debootstrap exited non-zero after $(( $(date +%s) - start ))s" "$log"
    # What a container runtime provides per container, and apt's downloads. Documentation
    # and translations go as in the slim images (28% of the rootfs); copyright files stay.
    rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/*
    : >"$rootfs.tmp/etc/resolv.conf"
    : >"$rootfs.tmp/etc/hostname"
    find "$rootfs.tmp/usr/share/doc" -type f ! -name copyright -delete
    find "$rootfs.tmp/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -rf "$rootfs.tmp"/usr/share/man/* "$rootfs.tmp"/usr/share/info/*
    rm -rf "$rootfs"
    mv "$rootfs.tmp" "$rootfs"
    touch "$rootfs/.complete"
    # Root filesystems of earlier inputs (another mirror, package list) are no longer used.
    find "$TB_CACHE/rootfs" -mindepth 1 -maxdepth 1 -type d ! -name "${rootfs##*/}" -exec rm -rf {} +
    tb_info "rootfs $rootfs ($(du -sh "$rootfs" | cut -f1)) in $(( $(date +%s) - start ))s"
  fi

  tb_step "base image: committing $rootfs as $TB_IMG_BASE"
  log="$TB_CACHE/logs/image-base.log"
  local ctr mnt
  {
    ctr=$(bah from --name "tb-base-$$" scratch) &&
      mnt=$(bah mount "$ctr") &&
      cp -a "$rootfs/." "$mnt/" && rm -f "$mnt/.complete" &&
      bah umount "$ctr" &&
      # What python:3.11-slim sets, so a Dockerfile behaves alike on either base.
      bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd '["python3"]' \
        --label "org.opencontainers.image.description=Debian $TB_BASE_SUITE minbase + $TB_BASE_PACKAGES (debootstrap)" "$ctr" &&
      bah commit --rm -q "$ctr" "$TB_IMG_BASE"
  } >"$log" 2>&1 || {
    bah rm "tb-base-$$" >/dev/null 2>&1 || true
    tb_fail "base image: commit" "buildah could not turn the rootfs into an image" "$log"
  }
  id=$(image_id "$TB_IMG_BASE")
  echo "$key $id" >"$stamp"
  TB_BASE_ID=$id
  tb_info "base image ${id:0:12}"
}

# ---------------------------------------------------------------- operator wheels
pip_platforms() {
  local v
  for v in $(seq "$TB_WHEEL_GLIBC_MAX" -1 5); do printf -- '--platform manylinux_2_%s_x86_64 ' "$v"; done
  printf -- '--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64'
}

step_wheels() {
  local build_requires key log start
  build_requires=$(python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' \
    "$TB_REPO/pyproject.toml") || tb_fail "wheels" "cannot read [build-system].requires from pyproject.toml (needs python3 >= 3.11)" ""
  key=$(inputs_hash "requirements.lock" "$build_requires" "$TB_WHEEL_PYTHON" "$(pip_platforms)")
  if [ -f "$TB_WHEELS/.inputs" ] && [ "$(cat "$TB_WHEELS/.inputs")" = "$key" ]; then
    tb_step "operator wheels: reused $TB_WHEELS ($(find "$TB_WHEELS" -name '*.whl' | wc -l) wheels for requirements.lock)"
    return
  fi
  log="$TB_CACHE/logs/pip-download.log"
  tb_step "operator wheels: pip download requirements.lock + build requirements (cp$TB_WHEEL_PYTHON manylinux x86_64; log: $log)"
  start=$(date +%s)
  rm -rf "$TB_WHEELS.tmp"
  mkdir -p "$TB_WHEELS.tmp"
  local common
  # shellcheck disable=SC2207  # flags without spaces
  common=($(pip_platforms) --only-binary=:all: --python-version "$TB_WHEEL_PYTHON" --implementation cp
    --abi "cp${TB_WHEEL_PYTHON/./}" -d "$TB_WHEELS.tmp")
  {
    # --no-deps: the lock already names every package; the image's `pip install` checks the set.
    python3 -m pip download "${common[@]}" --no-deps -r "$TB_REPO/requirements.lock" &&
      # setuptools and wheel: pip builds the project (pyproject.toml) with them, offline too.
      # shellcheck disable=SC2086
      python3 -m pip download "${common[@]}" $build_requires
  } >"$log" 2>&1 || tb_fail "operator wheels: pip download" "pip could not fetch the wheels (network? a package without a cp311 manylinux wheel?)" "$log"
  echo "$key" >"$TB_WHEELS.tmp/.inputs"
  rm -rf "$TB_WHEELS"
  mv "$TB_WHEELS.tmp" "$TB_WHEELS"
  tb_info "$(find "$TB_WHEELS" -name '*.whl' | wc -l) wheels ($(du -sh "$TB_WHEELS" | cut -f1)) in $(( $(date +%s) - start ))s"
}

# ---------------------------------------------------------------- generated build contexts
# The pause binary, compiled as upstream's Makefile does, from the kubernetes module the
# cluster binary is built from (module cache; not copied into the repository).
step_pause_context() {
  local dir src makefile tag cflags out="$TB_IMAGES_CTX/pause"
  dir=$(cd "$TB_SRC/cluster" && go mod download -json k8s.io/kubernetes 2>/dev/null | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') ||
    true
  [ -n "$dir" ] && [ -f "$dir/build/pause/linux/pause.c" ] ||
    tb_fail "pause image" "cannot find k8s.io/kubernetes in the Go module cache (go on PATH? go mod download in testbed/cluster)" ""
  src="$dir/build/pause/linux/pause.c"
  makefile="$dir/build/pause/Makefile"
  tag=$(sed -n 's/^TAG ?= *//p' "$makefile")
  [ "$tag" = "$TB_PAUSE_TAG" ] ||
    tb_fail "pause image" "$makefile says TAG $tag, images.sh pins $TB_PAUSE_TAG: update TB_PAUSE_TAG (and the containerd config's sandbox image)" ""
  cflags="-Os -Wall -Werror -static -DVERSION=v$TB_PAUSE_TAG-$TB_K8S_VERSION"
  mkdir -p "$out"
  if [ -x "$out/pause" ] && [ -f "$out/pause.inputs" ] && [ "$(cat "$out/pause.inputs")" = "$(sha256sum <"$src") $cflags" ]; then
    return
  fi
  # shellcheck disable=SC2086
  gcc $cflags -o "$out/pause" "$src" 2>"$TB_CACHE/logs/pause-gcc.log" ||
    tb_fail "pause image: gcc" "gcc -static failed (libc6-dev installed?)" "$TB_CACHE/logs/pause-gcc.log"
  strip "$out/pause"
  echo "$(sha256sum <"$src") $cflags" >"$out/pause.inputs"
}

# The CoreDNS binary testbed/build.sh made (TB_COREDNS_BIN overrides), with the file
# capability upstream's image gives it. A copy, so the capability stays off the build output.
step_coredns_context() {
  local bin="${TB_COREDNS_BIN:-$TB_BIN/coredns}" out="$TB_IMAGES_CTX/coredns" v
  [ -x "$bin" ] || tb_fail "coredns image" "$bin not found: run testbed/build.sh first (builds testbed/cluster/coredns)" ""
  v=$("$bin" -version 2>&1) || true
  v=${v%%$'\n'*}  # the first line (no `| head -1`: a SIGPIPE'd writer fails the pipeline)
  case "$v" in "CoreDNS-$TB_COREDNS_TAG"*) ;;
    *) tb_fail "coredns image" "$bin reports '$v', images.sh pins $TB_COREDNS_TAG: update TB_COREDNS_TAG" "" ;;
  esac
  # The image is FROM scratch: no dynamic loader in it. (No `| grep -q`: an early exit can
  # SIGPIPE readelf and, under pipefail, hide the match.)
  v=$(readelf -l "$bin" 2>/dev/null) || true
  if [[ "$v" == *"program interpreter"* ]]; then
    tb_fail "coredns image" "$bin is dynamically linked; the image has no libc: build it with CGO_ENABLED=0" ""
  fi
  mkdir -p "$out"
  if [ ! "$out/coredns" -nt "$bin" ] || ! cmp -s "$bin" "$out/coredns"; then
    cp "$bin" "$out/coredns.tmp"
    setcap cap_net_bind_service=+ep "$out/coredns.tmp" ||
      tb_fail "coredns image" "setcap failed (libcap2-bin installed? a filesystem without xattrs?)" ""
    mv -f "$out/coredns.tmp" "$out/coredns"
  fi
}

# The lite grinder simulator (sim/grinder-lite: Go, stdlib only), static for its FROM-scratch
# image. Compiled again when its sources or the Go toolchain change (the .inputs stamp); the
# image's own inputs list the same sources and the binary.
grinder_lite_sources() {
  (cd "$TB_REPO" && find sim/grinder-lite -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort | tr '\n' ' ')
}

step_grinder_lite_context() {
  local out="$TB_IMAGES_CTX/grinder-lite" key log="$TB_CACHE/logs/grinder-lite-go-build.log"
  command -v go >/dev/null || tb_fail "grinder-lite image" "go not found on PATH (the pause image needs it too)" ""
  key=$(inputs_hash "$(grinder_lite_sources)" "$(go version)" "CGO_ENABLED=0 -trimpath -ldflags=-s -w")
  mkdir -p "$out"
  if [ -x "$out/grinder-lite" ] && [ -f "$out/grinder-lite.inputs" ] && [ "$(cat "$out/grinder-lite.inputs")" = "$key" ]; then
    return
  fi
  (cd "$TB_REPO/sim/grinder-lite" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out/grinder-lite.tmp" .) >"$log" 2>&1 ||
    tb_fail "grinder-lite image: go build" "sim/grinder-lite does not build" "$log"
  mv -f "$out/grinder-lite.tmp" "$out/grinder-lite"
  echo "$key" >"$out/grinder-lite.inputs"
}

# ---------------------------------------------------------------- images
# build_image NAME REF DOCKERFILE CONTEXT INPUTS [BUD_ARGS...]: build REF unless the hash of
# INPUTS (paths, see inputs_hash), the base image id and BUD_ARGS matches the one stored
# beside the archive; then write .testbed/images/NAME.tar named as containerd will look it up.
TB_SUMMARY=()
build_image() {
  local name="$1" ref="$2" dockerfile="$3" context="$4" inputs="$5"
  shift 5
  local archive="$TB_IMAGES_DIR/$name.tar" meta="$TB_IMAGES_DIR/$name.inputs"
  local log="$TB_CACHE/logs/image-$name.log" key start id oci_name secs
  key=$(inputs_hash "$inputs" "base=${TB_BASE_ID:-}" "$@")
  oci_name=$(containerd_name "$ref")
  if [ -f "$archive" ] && [ -f "$meta" ] && [ "$(sed -n 's/^inputs=//p' "$meta")" = "$key" ]; then
    tb_step "$name: reused $archive (inputs unchanged)"
    TB_SUMMARY+=("$name|$oci_name|reused|-|$(du -h "$archive" | cut -f1)")
    return
  fi
  tb_step "$name: buildah bud -f ${dockerfile#"$TB_REPO/"} ${context#"$TB_REPO/"} -> $ref (log: $log)"
  start=$(date +%s)
  local attempt
  for attempt in 1 2; do
    if run_logged "$name" "$log" '^(STEP|\[[0-9]+/[0-9]+\] STEP|Collecting|Processing|Installing|Successfully)' \
      bah bud --isolation chroot --pull=never --format oci -f "$dockerfile" -t "$ref" "$@" "$context"; then
      break
    fi
    # A failed build leaves its working containers (full copies, with vfs); the storage is
    # the testbed's own, so every container in it is a leftover.
    bah rm --all >/dev/null 2>&1 || true
    # runc's copy of itself (a sealed memfd) now and then fails to seal while another process
    # still maps it ("Close_Fd sealing memfd copy: Device or resource busy": a RUN step failed
    # before running anything). That, and only that, is tried once more.
    if [ "$attempt" = 1 ] && grep -q "sealing memfd copy: Device or resource busy" "$log"; then
      tb_warn "$name: runc could not seal its memfd copy (EBUSY, transient): building again"
      cp "$log" "$log.attempt1"
      continue
    fi
    tb_fail "$name: buildah bud" "the build failed after $(( $(date +%s) - start ))s" "$log"
  done
  id=$(image_id "$ref")

  rm -f "$archive.tmp"
  bah push -q --digestfile "$archive.digest" "$ref" "oci-archive:$archive.tmp:$oci_name" >>"$log" 2>&1 ||
    tb_fail "$name: buildah push" "could not write the OCI archive" "$log"
  # Without its .inputs an archive is neither reused nor imported: drop it first, write it last.
  rm -f "$meta"
  mv -f "$archive.tmp" "$archive"
  printf 'inputs=%s\nref=%s\ndigest=%s\nimage=%s\n' "$key" "$oci_name" "$(cat "$archive.digest")" "$id" >"$meta.tmp"
  mv -f "$meta.tmp" "$meta"
  rm -f "$archive.digest"
  # Earlier builds of the same tag are now dangling: drop them so vfs storage does not grow.
  bah rmi --prune >/dev/null 2>&1 || true
  secs=$(( $(date +%s) - start ))
  tb_info "built ${id:0:12} in ${secs}s: $archive ($(du -h "$archive" | cut -f1)), imports as $oci_name"
  TB_SUMMARY+=("$name|$oci_name|built|${secs}s|$(du -h "$archive" | cut -f1)")
}

# tb_images_build: one run at a time (make images and up.sh may overlap); the lock is held
# in a subshell so nothing started later inherits it.
tb_images_build() {
  command -v buildah >/dev/null || tb_fail "images" "buildah not found (apt-get install buildah)" ""
  mkdir -p "$TB_IMAGES_DIR" "$TB_BUILDAH/tmp" "$TB_CACHE/logs" "$TB_CACHE/rootfs" "$TB_IMAGES_CTX"
  (
    flock -n 9 || { tb_info "waiting for another testbed/images.sh run to finish"; flock 9; }
    images_build_locked
  ) 9>"$TB_CACHE/images.lock"
}

# tb_images_prefetch: what needs no Go binary (the base rootfs by debootstrap, the operator's
# wheels, the simulator's and the operator's images), under the same lock: testbed/build.sh
# runs it beside the Go builds on a cold machine, so the network waits and the image builds
# overlap the compiles; `build` then finds those two images cached.
tb_images_prefetch() {
  command -v buildah >/dev/null || tb_fail "images" "buildah not found (apt-get install buildah)" ""
  mkdir -p "$TB_IMAGES_DIR" "$TB_BUILDAH/tmp" "$TB_CACHE/logs" "$TB_CACHE/rootfs" "$TB_IMAGES_CTX"
  (
    flock 9
    step_base
    step_wheels
    build_python_images
  ) 9>"$TB_CACHE/images.lock"
}

# build_python_images: the simulator's and the operator's images (Dockerfiles of the repo).
build_python_images() {
  [ -n "$TB_PROJECT_VERSION" ] || tb_fail "images" "no version = \"...\" in pyproject.toml" ""
  build_image grinder-sim "$TB_IMG_GRINDER" "$TB_REPO/sim/grinder/Dockerfile" "$TB_REPO/sim/grinder" \
    "sim/grinder/Dockerfile sim/grinder/grinder_sim.py sim/grinder/scripts/__init__.py sim/grinder/scripts/preflight_fill_prob.py" \
    --build-arg "BASE=$TB_IMG_BASE"
  # The wheels are mounted read-only for the builder stage's `pip install --no-index`.
  build_image fillprob-operator "$TB_IMG_OPERATOR" "$TB_REPO/Dockerfile" "$TB_REPO" \
    "Dockerfile .dockerignore requirements.lock pyproject.toml operator" \
    --build-arg "BASE=$TB_IMG_BASE" --build-arg "VERSION=$TB_PROJECT_VERSION" --build-arg PIP_OFFLINE=1 \
    -v "$TB_WHEELS:/wheels:ro"
}

images_build_locked() {
  local t0
  t0=$(date +%s)

  step_base
  step_wheels
  step_pause_context
  step_coredns_context
  step_grinder_lite_context

  build_image pause "$TB_IMG_PAUSE" "$TB_SRC/images/pause/Dockerfile" "$TB_IMAGES_CTX/pause" \
    "testbed/images/pause/Dockerfile $TB_IMAGES_CTX/pause/pause"
  build_image coredns "$TB_IMG_COREDNS" "$TB_SRC/images/coredns/Dockerfile" "$TB_IMAGES_CTX/coredns" \
    "testbed/images/coredns/Dockerfile $TB_IMAGES_CTX/coredns/coredns"
  build_image grinder-lite "$TB_IMG_GRINDER_LITE" "$TB_SRC/images/grinder-lite/Dockerfile" "$TB_IMAGES_CTX/grinder-lite" \
    "testbed/images/grinder-lite/Dockerfile $(grinder_lite_sources) $TB_IMAGES_CTX/grinder-lite/grinder-lite"
  build_python_images

  tb_step "images ready in $TB_IMAGES_DIR ($(( $(date +%s) - t0 ))s):"
  local row
  printf '    %-18s %-48s %-7s %-6s %s\n' IMAGE "REF (containerd)" STATUS TIME ARCHIVE
  for row in "${TB_SUMMARY[@]}"; do
    IFS='|' read -r n r s t z <<<"$row"
    printf '    %-18s %-48s %-7s %-6s %s\n' "$n" "$r" "$s" "$t" "$z"
  done
}

# ---------------------------------------------------------------- import
# tb_images_import SOCKET: put every archive into containerd at SOCKET (namespace k8s.io, as
# the kubelet's CRI uses), unless an image of that name and digest is already there.
tb_images_import() {
  local sock="$1" ctr="${TB_CTR:-$TB_BIN/ctr}" name archive meta ref digest have existing log="$TB_CACHE/logs/ctr-import.log"
  [ -x "$ctr" ] || tb_fail "import images" "$ctr not found: run testbed/build.sh first" ""
  : >"$log"
  existing=$("$ctr" -a "$sock" -n k8s.io images ls 2>>"$log") ||
    tb_fail "import images" "containerd at $sock does not answer" "$log"
  for name in $TB_IMAGE_NAMES; do
    archive="$TB_IMAGES_DIR/$name.tar" meta="$TB_IMAGES_DIR/$name.inputs"
    [ -f "$archive" ] && [ -f "$meta" ] || tb_fail "import images" "$archive missing: run testbed/images.sh" ""
    ref=$(sed -n 's/^ref=//p' "$meta")
    digest=$(sed -n 's/^digest=//p' "$meta")
    have=$(awk -v r="$ref" '$1 == r { print $3; exit }' <<<"$existing")
    if [ "$have" = "$digest" ]; then
      tb_info "$ref: present (${digest:7:12})"
      continue
    fi
    "$ctr" -a "$sock" -n k8s.io images import "$archive" >>"$log" 2>&1 ||
      tb_fail "import images: $name" "ctr images import $archive failed" "$log"
    have=$("$ctr" -a "$sock" -n k8s.io images ls "name==$ref" 2>>"$log" | awk -v r="$ref" '$1 == r { print $3 }')
    [ "$have" = "$digest" ] ||
      tb_fail "import images: $name" "after import containerd has '$ref' at '${have:-nothing}', expected $digest" "$log"
    tb_info "$ref: imported (${digest:7:12})"
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-build}" in
    build) tb_images_build ;;
    prefetch) tb_images_prefetch ;;
    import)
      [ $# -eq 2 ] || { echo "usage: $0 import SOCKET" >&2; exit 2; }
      tb_step "importing images into containerd at $2 (namespace k8s.io)"
      tb_images_import "$2"
      ;;
    *) echo "usage: $0 [build | prefetch | import SOCKET]" >&2; exit 2 ;;
  esac
fi
