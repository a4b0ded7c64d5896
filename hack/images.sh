#!/usr/bin/env bash
# The project's images, built on this machine without any registry of base images, and a
# local plain-HTTP registry that containerd pulls them from (only new layers travel).
#
#   hack/images.sh build            base (debootstrap, once), pause, curl, operator, runtime
#   hack/images.sh serve-registry   start the local registry if it is not running; prints it
#   hack/images.sh push [HOST:PORT] push what `build` made (default: the local registry)
#   hack/images.sh refs [HOST:PORT] name=ref, one a line, for the current tree
#   hack/images.sh all              build, serve-registry, push, refs
#   hack/images.sh verify           check inside the images (torch in runtime only, kaito runs)
#   hack/images.sh prune            drop older trees' and bases' images, here and in the registry
#   hack/images.sh stop-registry    stop the registry serve-registry started
#
# Every image is tagged with a hash of its inputs (hack/images/inputs.py): an unchanged
# tree builds and pushes nothing, a source edit rebuilds only the layers after the
# dependencies. State lives in ${XDG_CACHE_HOME:-~/.cache}/kaito-images (buildah storage,
# registry data, temporary files), outside the clone. Runs as root (debootstrap, chroot).
# Settings: KAITO_IMAGES_PORT (5001), KAITO_IMAGES_STORAGE_DRIVER (overlay, else vfs).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$REPO/hack/images
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/kaito-images
PORT=${KAITO_IMAGES_PORT:-5001}
LOCAL_REGISTRY=127.0.0.1:$PORT
HOST_CA=/etc/ssl/certs/ca-certificates.crt
# Base images are cached under this name too, so the Dockerfile's default FROM resolves to
# the local one (`--pull=never`); the builds below pass the content-tagged name instead.
PYTHON_ALIASES=(docker.io/library/python:3.11-slim-bookworm localhost/python:3.11-slim-bookworm)
CURL_NAME=curlimages/curl

started=$(date +%s)
say() { printf '[images %s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(($(date +%s) - started))" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- what to build: content tags ------------------------------------------------------
inputs() { python3 "$HERE/inputs.py" "$@"; }
base_tag() { inputs hash "$HERE/base.sh"; }  # the whole recipe, its image config included
pause_tag() { inputs hash "$HERE/pause.c" --extra recipe=static-gcc-1; }
curl_tag() { inputs hash "$HERE/curl.Containerfile" --extra "base=$1"; }
target_tag() { # TARGET BASE_TAG
  inputs tag --root "$REPO" --dockerfile "$REPO/Dockerfile" --target "$1" --extra "base=$2"
}

# name=repository:tag (no registry) of every image, for the current tree.
image_list() {
  local base; base=$(base_tag)
  echo "operator=kaito-operator:$(target_tag operator "$base")"
  echo "runtime=kaito-runtime:$(target_tag runtime "$base")"
  echo "pause=kaito-pause:$(pause_tag)"
  echo "curl=$CURL_NAME:latest"
}

# --- buildah with its own storage ------------------------------------------------------
storage_driver() {
  if [[ -n ${KAITO_IMAGES_STORAGE_DRIVER:-} ]]; then echo "$KAITO_IMAGES_STORAGE_DRIVER"; return; fi
  if [[ -s $CACHE/storage-driver ]]; then cat "$CACHE/storage-driver"; return; fi
  # overlay is ~2x faster and needs half the disk; vfs works everywhere.
  local driver=vfs ctr
  if ctr=$(buildah --root "$CACHE/storage/overlay/root" --runroot "$CACHE/storage/overlay/run" \
      --storage-driver overlay from scratch 2>/dev/null) \
    && buildah --root "$CACHE/storage/overlay/root" --runroot "$CACHE/storage/overlay/run" \
      --storage-driver overlay mount "$ctr" >/dev/null 2>&1; then
    driver=overlay
  fi
  [[ -n ${ctr:-} ]] && buildah --root "$CACHE/storage/overlay/root" \
    --runroot "$CACHE/storage/overlay/run" --storage-driver overlay rm "$ctr" >/dev/null 2>&1
  echo "$driver" >"$CACHE/storage-driver"
  echo "$driver"
}
bah() {
  buildah --root "$CACHE/storage/$DRIVER/root" --runroot "$CACHE/storage/$DRIVER/run" \
    --storage-driver "$DRIVER" "$@"
}
has_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

# --- temporary files: one directory per run, removed on exit; buildah's TMPDIR too (it
# writes GBs there while committing and pushing) ---------------------------------------------
RUN_TMP=
cleanup() {
  [[ -n $RUN_TMP && -d $RUN_TMP ]] || return 0
  # Never remove through a mount left behind (a chroot's /proc or /dev).
  if awk -v r="$RUN_TMP/" 'index($2, r) == 1 {found=1} END {exit !found}' /proc/mounts; then
    say "warning: mounts left under $RUN_TMP; not removing it"
  else
    rm -rf --one-file-system "$RUN_TMP"
  fi
}
new_tmp() { mktemp -d "$RUN_TMP/$1.XXXXXX"; }

prepare() {
  [[ $(id -u) == 0 ]] || die "run as root (debootstrap, chroot and buildah's storage need it)"
  local tool
  for tool in buildah debootstrap gcc python3 docker-registry curl flock; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: buildah debootstrap gcc libc6-dev docker-registry curl)"
  done
  if [[ -z $RUN_TMP ]]; then
    mkdir -p "$CACHE/tmp" "$CACHE/logs"
    RUN_TMP=$(mktemp -d "$CACHE/tmp/run.XXXXXX")
    export TMPDIR=$RUN_TMP
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  # One build or push at a time per cache; a second run waits, then finds the work done.
  exec 9>"$CACHE/lock"
  if ! flock -n 9; then say "waiting for another hack/images.sh run"; flock 9; fi
  DRIVER=$(storage_driver)
}

# --- the base: Debian bookworm + Python 3.11 + /opt/venv ---------------------------------
# The Debian mirror apt on this machine uses (deb822 or one-line sources).
apt_mirror() { # SUFFIX: debian | debian-security
  local uri
  uri=$(grep -hoE "https?://[^ ]+/$1/?( |$)" /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      2>/dev/null | head -n1 | tr -d ' ' || true)
  if [[ -z $uri ]]; then
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | grep -oE "https?://[^ ]+/$1/?$" | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/$1}"
}

build_base() { # TAG
  local name=localhost/kaito-base:$1 alias
  if ! has_image "$name"; then
    local t0 work ctr mnt; t0=$(date +%s); work=$(new_tmp base)
    say "base $name: debootstrap bookworm from $(apt_mirror debian) (~2 min, once)"
    if ! bash "$HERE/base.sh" "$work/rootfs" "$(apt_mirror debian)" "$(apt_mirror debian-security)" \
        >"$CACHE/logs/base.log" 2>&1; then
      tail -n 30 "$CACHE/logs/base.log" >&2; die "base: recipe failed (full output: $CACHE/logs/base.log)"
    fi
    ctr=$(bah from --name "kaito-base-$1-$$" scratch)
    mnt=$(bah mount "$ctr")
    cp -a "$work/rootfs/." "$mnt/"
    bah umount "$ctr" >/dev/null
    local config=() kind value
    while read -r kind value; do config+=("--$kind" "$value"); done < <(bash "$HERE/base.sh" --config)
    bah config "${config[@]}" \
      --label org.opencontainers.image.description="Debian bookworm, Python 3.11, /opt/venv" "$ctr"
    bah commit --quiet --rm "$ctr" "$name" >/dev/null
    rm -rf --one-file-system "$work/rootfs"
    say "base $name: built in $(($(date +%s) - t0))s"
  else
    say "base $name: cached"
  fi
  for alias in "${PYTHON_ALIASES[@]}"; do bah tag "$name" "$alias"; done
}

build_pause() { # TAG
  local name=localhost/kaito-pause:$1
  if has_image "$name"; then say "pause $name: cached"; return; fi
  local t0 work ctr; t0=$(date +%s); work=$(new_tmp pause)
  gcc -static -Os -s -Wall -Werror -o "$work/pause" "$HERE/pause.c"
  ctr=$(bah from --name "kaito-pause-$1-$$" scratch)
  bah copy --quiet "$ctr" "$work/pause" /pause >/dev/null
  bah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  bah commit --quiet --rm "$ctr" "$name" >/dev/null
  say "pause $name: built in $(($(date +%s) - t0))s"
}

build_curl() { # TAG BASE_TAG
  local name=localhost/kaito-curl:$1
  if ! has_image "$name"; then
    local t0; t0=$(date +%s)
    say "curl $name: base + Debian's curl"
    if ! bah bud --layers --pull=never --isolation chroot --format oci \
        --build-arg "BASE_IMAGE=localhost/kaito-base:$2" -f "$HERE/curl.Containerfile" \
        -t "$name" "$(new_tmp curl-context)" >"$CACHE/logs/curl.log" 2>&1; then
      tail -n 30 "$CACHE/logs/curl.log" >&2; die "curl: buildah bud failed (full output: $CACHE/logs/curl.log)"
    fi
    say "curl $name: built in $(($(date +%s) - t0))s"
  else
    say "curl $name: cached"
  fi
  bah tag "$name" "docker.io/$CURL_NAME:latest"
}

build_target() { # TARGET TAG BASE_TAG
  local name=localhost/kaito-$1:$2
  if has_image "$name"; then say "$1 $name: cached"; return; fi
  local t0 context; t0=$(date +%s); context=$(new_tmp "$1-context")
  inputs stage --root "$REPO" --dockerfile "$REPO/Dockerfile" --target "$1" "$context"
  say "$1 $name: building (buildah bud --layers, $DRIVER)"
  # The host's CA bundle is mounted for the build only: pip reaches PyPI through it.
  # The full output goes to a log; the steps to stderr.
  local log=$CACHE/logs/$1.log
  if ! bah bud --layers --pull=never --isolation chroot --format oci \
      -v "$HOST_CA:$HOST_CA:ro" --build-arg "PYTHON_IMAGE=localhost/kaito-base:$3" \
      --target "$1" -f "$REPO/Dockerfile" -t "$name" "$context" >"$log" 2>&1; then
    tail -n 30 "$log" >&2; die "$1: buildah bud failed (full output: $log)"
  fi
  say "$1 $name: built in $(($(date +%s) - t0))s ($(grep -cE 'STEP [0-9]+/[0-9]+:' "$log") steps, \
$(grep -c '^--> Using cache' "$log") from cache)"
}

build_all() {
  local base; base=$(base_tag)
  build_base "$base"
  build_pause "$(pause_tag)"
  build_curl "$(curl_tag "$base")" "$base"
  build_target operator "$(target_tag operator "$base")" "$base"
  build_target runtime "$(target_tag runtime "$base")" "$base"
}

cmd_build() {
  prepare
  build_all
  say "build: done"
}

# --- the local registry -------------------------------------------------------------------
registry_up() { curl -sf -o /dev/null --max-time 2 "http://$1/v2/"; }

cmd_serve_registry() {
  local dir=$CACHE/registry
  mkdir -p "$dir/data"
  exec 8>"$dir/lock"; flock 8
  if registry_up "$LOCAL_REGISTRY"; then echo "$LOCAL_REGISTRY"; return; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "127.0.0.1:$PORT is taken by something that is not a registry (set KAITO_IMAGES_PORT)"
  fi
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: true
      age: 2h
      interval: 1h
      dryrun: false
http:
  addr: $LOCAL_REGISTRY
EOF
  # Its own session, and none of our lock descriptors: it outlives this script.
  setsid docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$dir/pid"
  local i
  for i in $(seq 50); do
    registry_up "$LOCAL_REGISTRY" && { say "registry: serving $LOCAL_REGISTRY (pid $(cat "$dir/pid"), data $dir/data)"; echo "$LOCAL_REGISTRY"; return; }
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
    sleep 0.2
  done
  die "registry did not start; see $dir/registry.log"
}

cmd_stop_registry() {
  local pidfile=$CACHE/registry/pid pid i
  if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid=$(cat "$pidfile"); kill "$pid"
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    say "registry: stopped"
  fi
  rm -f "$pidfile"
}

# --- push: only what the registry lacks ---------------------------------------------------
has_manifest() { # HOST REPOSITORY TAG
  curl -sf -o /dev/null --max-time 10 -I \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$1/v2/$2/manifests/$3"
}

push_one() { # HOST LOCAL_NAME REPOSITORY:TAG
  local t0; t0=$(date +%s)
  bah push --quiet --tls-verify=false --format oci "$2" "docker://$1/$3"
  say "push $1/$3: $(($(date +%s) - t0))s"
}

cmd_push() {
  local host=${1:-$LOCAL_REGISTRY}
  prepare
  registry_up "$host" || die "no registry at http://$host/v2/ (hack/images.sh serve-registry)"
  local base line label ref repo tag local_name curl images
  base=$(base_tag); curl=$(curl_tag "$base")
  mapfile -t images < <(image_list)
  # Others may edit the tree between `build` and `push`: build what the tree now needs
  # (seconds when nothing changed) rather than fail.
  for line in "${images[@]}"; do
    ref=${line#*=}; [[ ${line%%=*} == curl ]] && ref=kaito-curl:$curl
    if ! has_image "localhost/$ref"; then say "push: localhost/$ref is not built yet"; build_all; break; fi
  done
  for line in "${images[@]}"; do
    label=${line%%=*}; ref=${line#*=}; repo=${ref%:*}; tag=${ref##*:}
    if [[ $label == curl ]]; then
      # `latest` is not a content tag: the content tag beside it says what is there.
      local_name=localhost/kaito-curl:$curl
      if has_manifest "$host" "$repo" "$curl"; then say "push $host/$repo:$curl: present"; continue; fi
      push_one "$host" "$local_name" "$repo:latest"
      push_one "$host" "$local_name" "$repo:$curl"
      continue
    fi
    local_name=localhost/$ref
    if has_manifest "$host" "$repo" "$tag"; then say "push $host/$ref: present"; continue; fi
    push_one "$host" "$local_name" "$ref"
  done
  say "push: done"
}

cmd_refs() {
  local host=${1:-$LOCAL_REGISTRY} label ref
  while IFS== read -r label ref; do echo "$label=$host/$ref"; done < <(image_list)
}

# --- verify: what each image must hold, checked inside it ----------------------------------
run_in() { # IMAGE COMMAND...
  local image=$1 ctr status=0; shift
  ctr=$(bah from --pull=never "$image")
  bah run --isolation chroot "$ctr" -- "$@" || status=$?
  bah rm "$ctr" >/dev/null
  return "$status"
}

check() { # DESCRIPTION EXPECT(ok|fails) IMAGE COMMAND...
  local description=$1 expect=$2 image=$3 out status=0; shift 3
  out=$(run_in "$image" "$@" 2>&1) || status=$?
  if [[ ($expect == ok && $status == 0) || ($expect == fails && $status != 0) ]]; then
    say "verify ok: $description"
  else
    say "verify FAILED: $description (exit $status): $(grep -v -e "^Error: exit status" -e "^subprocess exited" <<<"$out" | tail -n 1)"; failures+=("$description")
  fi
}

cmd_verify() {
  prepare
  local label ref failures=()
  declare -A image
  while IFS== read -r label ref; do image[$label]=localhost/$ref; done < <(image_list)
  image[curl]=localhost/kaito-curl:$(curl_tag "$(base_tag)")
  for label in "${!image[@]}"; do
    has_image "${image[$label]}" || die "${image[$label]} is not built (hack/images.sh build)"
  done
  check "runtime: import torch, runtime" ok "${image[runtime]}" python -c 'import torch, runtime'
  check "runtime: kaito serve --help" ok "${image[runtime]}" kaito serve --help
  check "runtime: kaito tune --help" ok "${image[runtime]}" kaito tune --help
  check "runtime: kaito --help" ok "${image[runtime]}" kaito --help
  check "operator: kaito --help" ok "${image[operator]}" kaito --help
  check "operator: kaito controller --help" ok "${image[operator]}" kaito controller --help
  check "operator: import controller, webhook" ok "${image[operator]}" python -c 'import controller, webhook'
  check "operator: no torch" fails "${image[operator]}" python -c 'import torch'
  check "curl: curl --version" ok "${image[curl]}" curl --version
  ((${#failures[@]} == 0)) || die "verify: ${#failures[@]} failed: ${failures[*]}"
}

# Drops what older trees and older bases left behind: everything not built on the current
# base (its GB dependency layers included), the operator and runtime images beyond the
# current tree's and the newest two of each on the current base (another clone may share
# this cache), and the same tags in the local registry, whose storage is then
# garbage-collected. The current base's untagged intermediate images stay: they are
# buildah's layer cache.
cmd_prune() {
  prepare
  local keep=() line base_layer id created name layer repository untagged=0
  declare -A first_layer newest
  for line in $(image_list); do keep+=("localhost/${line#*=}"); done
  keep+=("localhost/kaito-base:$(base_tag)" "localhost/kaito-curl:$(curl_tag "$(base_tag)")")
  bah rm --all >/dev/null
  has_image "localhost/kaito-base:$(base_tag)" || die "prune: the current base is not built (hack/images.sh build)"
  base_layer=$(bah inspect --type image --format '{{index .OCIv1.RootFS.DiffIDs 0}}' "localhost/kaito-base:$(base_tag)")
  # Newest first, so children go before their parents (removing a tagged image also
  # removes the parents it leaves dangling; an image still in use stays).
  while read -r id created name; do
    [[ " ${keep[*]} " == *" $name "* ]] && continue
    if [[ -z ${first_layer[$id]:-} ]]; then
      first_layer[$id]=$(bah inspect --type image --format '{{index .OCIv1.RootFS.DiffIDs 0}}' "$id" 2>/dev/null </dev/null || echo gone)
    fi
    layer=${first_layer[$id]}
    [[ $layer == gone ]] && continue
    if [[ $layer == "$base_layer" ]]; then
      [[ $name =~ ^localhost/kaito-(operator|runtime): ]] || continue
      repository=${BASH_REMATCH[1]}
      newest[$repository]=$((${newest[$repository]:-0} + 1))
      ((${newest[$repository]} <= 2)) && continue
    fi
    if [[ $name == "<none>:<none>" ]]; then
      bah rmi "$id" >/dev/null 2>&1 </dev/null && untagged=$((untagged + 1))
    elif [[ $name == localhost/* ]]; then
      bah rmi "$name" >/dev/null 2>&1 </dev/null && say "prune: $name"
    fi
  done < <(bah images --all --format '{{.ID}} {{.CreatedAtRaw.Unix}} {{.Name}}:{{.Tag}}' | sort -k2 -rn)
  ((untagged == 0)) || say "prune: $untagged intermediate images of older bases"
  say "prune: $(du -sh "$CACHE/storage" | cut -f1) in buildah storage"
  local kept=()
  while read -r name; do kept+=("$name"); done < <(bah images --format '{{.Name}}:{{.Tag}}')
  prune_registry "${kept[@]}"
}

prune_registry() { # KEPT_LOCAL_NAMES...
  registry_up "$LOCAL_REGISTRY" || return 0
  local kept=" $* " repository tag digest deleted=0
  local accept=(-H 'Accept: application/vnd.oci.image.manifest.v1+json'
                -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')
  for repository in kaito-operator kaito-runtime kaito-pause $CURL_NAME; do
    for tag in $({ curl -sf "http://$LOCAL_REGISTRY/v2/$repository/tags/list" || echo '{}'; } \
        | python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin).get("tags") or []))'); do
      case $repository in
        "$CURL_NAME") [[ $tag == latest || $kept == *" localhost/kaito-curl:$tag "* ]] && continue ;;
        *) [[ $kept == *" localhost/$repository:$tag "* ]] && continue ;;
      esac
      digest=$(curl -sf -I "${accept[@]}" "http://$LOCAL_REGISTRY/v2/$repository/manifests/$tag" \
        | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')
      [[ -n $digest ]] || continue
      curl -sf -X DELETE -o /dev/null "http://$LOCAL_REGISTRY/v2/$repository/manifests/$digest" \
        && { say "prune: $LOCAL_REGISTRY/$repository:$tag"; deleted=$((deleted + 1)); }
    done
  done
  local dir=$CACHE/registry uploads
  uploads=$(find "$dir/data/docker/registry/v2/repositories" -mindepth 3 -path '*/_uploads/*' \
    -maxdepth 4 2>/dev/null | head -n1)
  if ((deleted > 0)) || [[ -n $uploads ]] && [[ -s $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    # The registry's own garbage collector runs only while nothing writes: stop it, sweep,
    # start it again (pushes wait on our lock; a pull in flight would fail and be retried).
    # Uploads left by an interrupted push go too.
    cmd_stop_registry
    find "$dir/data/docker/registry/v2/repositories" -mindepth 2 -maxdepth 3 -type d -name _uploads \
      -exec sh -c 'rm -rf --one-file-system "$1"/*' _ {} \;
    docker-registry garbage-collect --delete-untagged "$dir/config.yml" >>"$dir/registry.log" 2>&1 \
      || say "prune: registry garbage-collect failed (see $dir/registry.log)"
    cmd_serve_registry >/dev/null
  fi
  say "prune: $(du -sh "$CACHE/registry" | cut -f1) in the registry"
}

case ${1:-} in
  build) cmd_build ;;
  serve-registry) cmd_serve_registry ;;
  stop-registry) cmd_stop_registry ;;
  push) shift; cmd_push "$@" ;;
  refs) shift; cmd_refs "$@" ;;
  all) cmd_build; cmd_serve_registry >/dev/null; cmd_push; cmd_refs ;;
  verify) cmd_verify ;;
  prune) cmd_prune ;;
  *) sed -n '2,18s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
