#!/bin/sh
# Copies pinned, complete artefact versions from the artefact store into a pod's volume. It runs as an init
# container (rclone image) before the server starts, so a server never sees a half-copied version, and every
# pod of a Deployment serves exactly the versions its ConfigMap pins (a change rolls the Deployment).
#
#   sync-artifacts.sh index DEST VERSION [ROOT]   $ARTIFACTS_URI/ROOT/VERSION/ -> DEST/VERSION/ (ROOT: index; the
#                                                 router of a sharded index: sharded-index/router)
#   sync-artifacts.sh shard DEST VERSION ROOT     this StatefulSet pod's shard of a sharded index:
#                                                 $ARTIFACTS_URI/ROOT/shard-<i>/VERSION/ -> DEST/VERSION/, where <i> is
#                                                 the pod's ordinal: $POD_INDEX (the apps.kubernetes.io/pod-index
#                                                 label, Kubernetes >= 1.28) or else the number that ends $POD_NAME
#                                                 (<statefulset>-<i>); both set and different fails
#   sync-artifacts.sh model DEST NAME VERSIONS    $ARTIFACTS_URI/model_repository/NAME/{config.pbtxt,configs/,V/}
#                                                 -> DEST/NAME/ for each V in VERSIONS (space-separated)
#   sync-artifacts.sh file DEST NAME              $ARTIFACTS_URI/NAME -> DEST/NAME (an unversioned file such as
#                                                 catalog.json, which `aisle train --out` writes beside index/)
#
# An empty VERSION(S) means the newest complete version in the store. A version is complete when its
# metadata.json is there: `aisle train` and `aisle models publish` write it last (the folder is renamed into
# place), and an object-store upload must do the same (upload metadata.json last).
# ARTIFACTS_URI: an rclone remote (":s3,env_auth=true:bucket/prefix", ":gcs:bucket/prefix", ...) or a local path.
# SYNC_WAIT_S: how long to wait for a version to appear (a training job may still be writing it).
set -eu

# No rclone config file: the remote is described by ARTIFACTS_URI itself and credentials come from the environment.
export HOME=/tmp RCLONE_CONFIG=/tmp/rclone.conf RCLONE_CACHE_DIR=/tmp/rclone-cache
: >"$RCLONE_CONFIG"
MARKER=metadata.json
store=${ARTIFACTS_URI:?ARTIFACTS_URI is not set (artifact-store ConfigMap)}
wait_s=${SYNC_WAIT_S:-0}

log() { echo "sync-artifacts: $*" >&2; }

# The store itself must answer a listing: credentials, the network or a malformed ARTIFACTS_URI fail here, in
# rclone's own words, instead of being waited out as "no complete version" (the listings below cannot tell a failure
# from a version not there yet). An object store lists a prefix not written yet as empty (exit 0), and exits 3 only
# for a bucket that does not exist, a wrong ARTIFACTS_URI; a local path not written yet exits 3.
status=0
rclone lsf --max-depth 1 "$store" >/dev/null 2>/tmp/sync-artifacts-check.err || status=$?
case "$store" in *:*) not_yet="" ;; *) not_yet=3 ;; esac
case "$status" in
  0 | "$not_yet") ;;
  *)
    log "cannot list the artefact store $store (rclone exit $status): $(tr '\n' ' ' </tmp/sync-artifacts-check.err)"
    exit 1
    ;;
esac

complete() { # complete SRC_DIR: true when SRC_DIR/metadata.json exists
  [ -n "$(rclone lsf --files-only --max-depth 1 --include "/$MARKER" "$1" 2>/dev/null)" ]
}

newest() { # newest SRC SORT_FLAGS: the newest complete version folder under SRC
  for name in $(rclone lsf --dirs-only --max-depth 1 "$1" 2>/dev/null | sed 's#/$##' | grep -v '^\.' | sort -r $2); do
    if complete "$1/$name"; then echo "$name"; return 0; fi
  done
  return 1
}

resolve() { # resolve SRC SORT_FLAGS VERSION: VERSION when complete (or the newest when empty), waiting up to wait_s
  waited=0
  while :; do
    if [ -z "$3" ]; then
      found=$(newest "$1" "$2") && { echo "$found"; return 0; }
    elif complete "$1/$3"; then
      echo "$3"; return 0
    fi
    if [ "$waited" -ge "$wait_s" ]; then
      log "no complete version ${3:-(newest)} under $1 after ${waited}s (a complete version has $MARKER)"
      return 1
    fi
    sleep 10; waited=$((waited + 10))
    log "waiting for version ${3:-(newest)} under $1 (${waited}s of ${wait_s}s)"
  done
}

copy() { # copy SRC DEST: a checked copy of one version folder
  rclone copy --checksum --transfers 8 --retries 3 "$1" "$2"
  [ -f "$2/$MARKER" ] || { log "$2/$MARKER missing after the copy"; return 1; }
}

present() { # present DIR NAME: true when the file DIR/NAME exists
  [ -n "$(rclone lsf --files-only --max-depth 1 --include "/$2" "$1" 2>/dev/null)" ]
}

pod_ordinal() { # this StatefulSet pod's ordinal, from POD_INDEX or POD_NAME (see the usage above)
  by_name=""
  case "${POD_NAME:-}" in *-*) by_name=${POD_NAME##*-} ;; esac
  case "$by_name" in '' | *[!0-9]*) by_name="" ;; esac
  case "${POD_INDEX:-}" in
    '')
      [ -n "$by_name" ] || { log "no pod ordinal: POD_INDEX unset, POD_NAME not <statefulset>-<i>"; return 1; }
      echo "$by_name"
      ;;
    *[!0-9]*) log "POD_INDEX '$POD_INDEX' is not an ordinal"; return 1 ;;
    *)
      if [ -n "$by_name" ] && [ "$by_name" != "$POD_INDEX" ]; then
        log "POD_INDEX $POD_INDEX and POD_NAME ${POD_NAME} disagree on the pod's ordinal"; return 1
      fi
      echo "$POD_INDEX"
      ;;
  esac
}

usage="sync-artifacts.sh index DEST VERSION [ROOT] | shard DEST VERSION ROOT | model DEST NAME VERSIONS | file DEST"
usage="$usage NAME"
kind=${1:?usage: $usage}
dest=${2:?destination folder missing}
case "$kind" in
  index)
    src="$store/${4:-index}"
    version=$(resolve "$src" "" "${3:-}")
    log "index $version: $src/$version -> $dest/$version"
    copy "$src/$version" "$dest/$version"
    ;;
  shard)
    root=${4:?sharded index root missing}
    ordinal=$(pod_ordinal)
    src="$store/$root/shard-$ordinal"
    version=$(resolve "$src" "" "${3:-}")
    log "shard $ordinal, index $version: $src/$version -> $dest/$version"
    copy "$src/$version" "$dest/$version"
    ;;
  model)
    name=${3:?model name missing}
    src="$store/model_repository/$name"
    versions=${4:-}
    [ -n "$versions" ] || versions=$(resolve "$src" "-n" "")
    rclone copy --checksum --include "/config.pbtxt" --include "/configs/**" "$src" "$dest/$name"
    [ -f "$dest/$name/config.pbtxt" ] || { log "$src/config.pbtxt missing"; exit 1; }
    for requested in $versions; do
      version=$(resolve "$src" "-n" "$requested")
      log "model $name version $version: $src/$version -> $dest/$name/$version"
      copy "$src/$version" "$dest/$name/$version"
    done
    ;;
  file)
    name=${3:?file name missing}
    waited=0
    until present "$store" "$name"; do
      if [ "$waited" -ge "$wait_s" ]; then log "$store/$name not found after ${waited}s"; exit 1; fi
      sleep 10; waited=$((waited + 10))
      log "waiting for $store/$name (${waited}s of ${wait_s}s)"
    done
    log "$store/$name -> $dest/$name"
    rclone copy --checksum --include "/$name" "$store" "$dest"
    [ -f "$dest/$name" ] || { log "$dest/$name missing after the copy"; exit 1; }
    ;;
  *)
    log "unknown kind '$kind' (index, shard, model or file)"; exit 2
    ;;
esac
log "done"
