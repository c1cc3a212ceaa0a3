#!/usr/bin/env bash
# Stop the Label Studio server started by start.sh, by its pid file.
#
# Usage: scripts/labelstudio/stop.sh [--purge]
#
#   --purge   also delete the data dir (only if it looks like a Label Studio data dir), so that
#             the next start.sh begins from the template again
#
# Environment (all optional, same defaults as start.sh):
#   SPACESQL_LS_RUN_DIR        (default: ${TMPDIR:-/tmp}/spacesql-labelstudio-$UID)
#   SPACESQL_LS_DATA_DIR       (default: $SPACESQL_LS_RUN_DIR/data)
#   SPACESQL_LS_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default: 20)
#
# Exits 0 when no server is running (nothing to do).
set -euo pipefail

run_dir="${SPACESQL_LS_RUN_DIR:-${TMPDIR:-/tmp}/spacesql-labelstudio-$(id -u)}"
data_dir="${SPACESQL_LS_DATA_DIR:-${run_dir}/data}"
timeout="${SPACESQL_LS_STOP_TIMEOUT:-20}"
pid_file="${run_dir}/server.pid"
env_file="${run_dir}/server.env"
purge=0

log() { printf 'labelstudio/stop: %s\n' "$*" >&2; }

while (($#)); do
  case "$1" in
    --purge) purge=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
      exit 0
      ;;
    *)
      log "ERROR: unknown argument: $1"
      exit 1
      ;;
  esac
  shift
done

alive() { kill -0 "$1" 2>/dev/null; }

# Signal the server's process group (start.sh makes the server a group leader); fall back to the pid.
signal() { kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true; }

pid=''
if [[ -f "${pid_file}" ]]; then
  pid="$(cat "${pid_file}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || {
    log "ERROR: ${pid_file} does not hold a pid: ${pid}"
    exit 1
  }
fi

if [[ -n "${pid}" ]] && alive "${pid}"; then
  # Never signal a recycled pid that is not ours.
  cmd="$(ps -o command= -p "${pid}" 2>/dev/null || true)"
  if [[ "${cmd}" != *label-studio* ]]; then
    log "pid ${pid} is not label-studio (${cmd:-gone}); removing the stale pid file"
  else
    signal TERM "${pid}"
    deadline=$((SECONDS + timeout))
    while alive "${pid}" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "${pid}"; then
      log "pid ${pid} still alive after ${timeout} s; sending SIGKILL"
      signal KILL "${pid}"
      sleep 0.5
    fi
    log "stopped label-studio (pid ${pid})"
  fi
else
  log "not running (no live pid in ${pid_file})"
fi
rm -f "${pid_file}" "${env_file}"

if [[ "${purge}" == 1 && -e "${data_dir}" ]]; then
  if [[ -n "$(ls -A "${data_dir}")" && ! -f "${data_dir}/label_studio.sqlite3" ]]; then
    log "ERROR: --purge: ${data_dir} holds no label_studio.sqlite3; refusing to delete it"
    exit 1
  fi
  rm -rf "${data_dir}"
  log "deleted ${data_dir}"
fi
