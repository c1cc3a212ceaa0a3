#!/usr/bin/env bash
# Start a real Label Studio server on loopback for tests and development.
#
# Usage:
#   scripts/labelstudio/start.sh [--fresh]
#   set -a; eval "$(scripts/labelstudio/start.sh)"; set +a     # export LABEL_STUDIO_URL/_API_KEY
#   scripts/labelstudio/start.sh >> "$GITHUB_ENV"              # CI: KEY=VALUE lines
#
# On success stdout holds only KEY=VALUE lines (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
# SPACESQL_LS_RUN_DIR); everything else goes to stderr. The same lines are written to
# $SPACESQL_LS_RUN_DIR/server.env. If the server of this run dir is already up, its lines are
# printed again and nothing is started.
#
#   --fresh   delete the data dir first (only if it looks like a Label Studio data dir)
#
# Environment (all optional):
#   SPACESQL_LS_CACHE     cache root (default: $HOME/.cache/spacesql)
#   SPACESQL_LS_VENV      venv made by install.sh (default: $SPACESQL_LS_CACHE/labelstudio-venv);
#                         install.sh is run first, which is a no-op when it is installed already
#   SPACESQL_LS_RUN_DIR   pid file, log, env file (default: ${TMPDIR:-/tmp}/spacesql-labelstudio-$UID)
#   SPACESQL_LS_DATA_DIR  sqlite db, media, exports (default: $SPACESQL_LS_RUN_DIR/data); kept
#                         between starts unless --fresh or SPACESQL_LS_FRESH=1
#   SPACESQL_LS_FILES_ROOT  LOCAL_FILES_DOCUMENT_ROOT (default: $SPACESQL_LS_RUN_DIR/files)
#   SPACESQL_LS_PORT      port on 127.0.0.1 (default: 8089; when unset and 8089 is busy, a free
#                         port is picked; when set and busy, start fails)
#   SPACESQL_LS_USERNAME, SPACESQL_LS_PASSWORD, SPACESQL_LS_TOKEN
#                         admin user and its legacy API token (defaults: admin@example.com,
#                         admin12345, 0123456789abcdef0123456789abcdef01234567); they are applied
#                         only when the data dir is initialised
#   SPACESQL_LS_TEMPLATE  1 (default): initialise an empty data dir by copying a pre-migrated
#                         template kept in the cache (built once with `label-studio init`, keyed
#                         on version and credentials); 0: let the server migrate (~25 s)
#   SPACESQL_LS_START_TIMEOUT  seconds to wait for /health (default: 180)
#   SPACESQL_LS_FRESH     1 = same as --fresh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${SPACESQL_LS_CACHE:-${HOME}/.cache/spacesql}"
venv="${SPACESQL_LS_VENV:-${cache_root}/labelstudio-venv}"
run_dir="${SPACESQL_LS_RUN_DIR:-${TMPDIR:-/tmp}/spacesql-labelstudio-$(id -u)}"
data_dir="${SPACESQL_LS_DATA_DIR:-${run_dir}/data}"
files_root="${SPACESQL_LS_FILES_ROOT:-${run_dir}/files}"
username="${SPACESQL_LS_USERNAME:-admin@example.com}"
password="${SPACESQL_LS_PASSWORD:-admin12345}"
token="${SPACESQL_LS_TOKEN:-0123456789abcdef0123456789abcdef01234567}"
use_template="${SPACESQL_LS_TEMPLATE:-1}"
timeout="${SPACESQL_LS_START_TIMEOUT:-180}"
fresh="${SPACESQL_LS_FRESH:-0}"

pid_file="${run_dir}/server.pid"
log_file="${run_dir}/server.log"
env_file="${run_dir}/server.env"

log() { printf 'labelstudio/start: %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

now() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then printf '%s\n' "${EPOCHREALTIME/,/.}"; else printf '%s\n' "${SECONDS}"; fi
}

elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; }

while (($#)); do
  case "$1" in
    --fresh) fresh=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage
      die "unknown argument: $1"
      ;;
  esac
  shift
done

[[ ${#token} -gt 5 ]] || die "SPACESQL_LS_TOKEN must be longer than 5 characters (Label Studio ignores shorter ones)"

# Seconds since start, for the final message.
t0="$(now)"

"${here}/install.sh" >/dev/null
py="${venv}/bin/python"
ls_bin="${venv}/bin/label-studio"
version="$(cat "${venv}/.spacesql-labelstudio-installed")"

# GET a URL; exit 0 on a 2xx answer. $2 is an optional "Authorization" header value.
probe() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --noproxy '*' --max-time 2 ${2:+-H "Authorization: $2"} "$1" 2>/dev/null
    return
  fi
  "${py}" - "$@" <<'PY'
import sys
import urllib.request

request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
try:
    with opener.open(request, timeout=2) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception:  # connection refused, timeout, HTTP error
    sys.exit(1)
PY
}

# Exit 0 if 127.0.0.1:$1 can be bound now.
port_free() {
  "${py}" - "$1" <<'PY'
import socket
import sys

with socket.socket() as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
    try:
        sock.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
PY
}

free_port() {
  "${py}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# True if the pid in $pid_file is alive.
running_pid() {
  [[ -f "${pid_file}" ]] || return 1
  local pid
  pid="$(cat "${pid_file}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] && kill -0 "${pid}" 2>/dev/null && printf '%s\n' "${pid}"
}

mkdir -p "${run_dir}"

# Already running for this run dir: print its coordinates again.
if pid="$(running_pid)"; then
  if [[ -f "${env_file}" ]] && url="$(sed -n 's/^LABEL_STUDIO_URL=//p' "${env_file}")" &&
    probe "${url}/health"; then
    log "already running (pid ${pid}) at ${url}; stop it with scripts/labelstudio/stop.sh"
    cat "${env_file}"
    exit 0
  fi
  die "pid ${pid} from ${pid_file} is alive but not answering; run scripts/labelstudio/stop.sh first"
fi
rm -f "${pid_file}" "${env_file}"

# --- port -----------------------------------------------------------------------------------
if [[ -n "${SPACESQL_LS_PORT:-}" ]]; then
  port="${SPACESQL_LS_PORT}"
  port_free "${port}" || die "port ${port} (SPACESQL_LS_PORT) is in use"
else
  port=8089
  if ! port_free "${port}"; then
    port="$(free_port)"
    log "port 8089 is in use; using free port ${port}"
  fi
fi
url="http://127.0.0.1:${port}"

# --- data dir -------------------------------------------------------------------------------
if [[ "${fresh}" == 1 && -e "${data_dir}" ]]; then
  if [[ -n "$(ls -A "${data_dir}")" && ! -f "${data_dir}/label_studio.sqlite3" ]]; then
    die "--fresh: ${data_dir} is not empty and holds no label_studio.sqlite3; refusing to delete it"
  fi
  log "--fresh: deleting ${data_dir}"
  rm -rf "${data_dir}"
fi
mkdir -p "${data_dir}" "${files_root}"

# Environment of every label-studio command below (see NOTES.md of the Label Studio fixtures).
export LABEL_STUDIO_BASE_DATA_DIR="${data_dir}"
export LABEL_STUDIO_USERNAME="${username}"
export LABEL_STUDIO_PASSWORD="${password}"
export LABEL_STUDIO_USER_TOKEN="${token}"
export LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true
export LABEL_STUDIO_HOST="${url}"
export SSRF_PROTECTION_ENABLED=false # webhooks to 127.0.0.1 are refused (403) otherwise
export LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SENTRY_DSN='' FRONTEND_SENTRY_DSN=''
export LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="${files_root}"
export DJANGO_DB=sqlite DEBUG=false PYTHONUNBUFFERED=1
# Webhook deliveries use `requests`, which honours HTTP(S)_PROXY: keep loopback direct.
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,${NO_PROXY}}"
export no_proxy="${NO_PROXY}"
unset LABEL_STUDIO_DATABASE_NAME HEARTEX_DATABASE_NAME DATABASE_NAME DJANGO_SETTINGS_MODULE
# The caller's Python settings must not reach the server's interpreter: PYTHONWARNINGS=error makes
# it die at import (RemovedInDjango60Warning), PYTHONPATH could shadow its pinned packages.
unset PYTHONWARNINGS PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONSAFEPATH

# A pre-migrated data dir with the admin user and token, built once per version and credentials.
ensure_template() {
  local key template tmp
  key="$("${py}" -c 'import hashlib, sys; print(hashlib.sha256("\0".join(sys.argv[1:]).encode()).hexdigest()[:12])' \
    "${version}" "${username}" "${password}" "${token}")"
  template="${cache_root}/labelstudio-template/${version}-${key}"
  if [[ ! -f "${template}/label_studio.sqlite3" ]]; then
    mkdir -p "$(dirname "${template}")"
    if command -v flock >/dev/null 2>&1; then
      exec 8>"${template}.lock"
      flock 8
    fi
    if [[ ! -f "${template}/label_studio.sqlite3" ]]; then
      local t
      t="$(now)"
      tmp="${template}.tmp.$$"
      rm -rf "${tmp}"
      mkdir -p "${tmp}"
      log "building data-dir template ${template} (migrations, ~25 s, once)"
      if ! LABEL_STUDIO_BASE_DATA_DIR="${tmp}" "${ls_bin}" init --quiet --no-browser \
        --username "${username}" --password "${password}" --user-token "${token}" \
        --enable-legacy-api-token >"${tmp}.log" 2>&1; then
        tail -n 40 "${tmp}.log" >&2
        rm -rf "${tmp}"
        die "label-studio init failed (log above)"
      fi
      rm -f "${tmp}.log"
      rm -rf "${template}"
      mv "${tmp}" "${template}"
      log "template built in $(elapsed "${t}") s"
    fi
  fi
  printf '%s\n' "${template}"
}

if [[ -z "$(ls -A "${data_dir}")" ]]; then
  if [[ "${use_template}" == 1 ]]; then
    template="$(ensure_template)"
    cp -R "${template}/." "${data_dir}/"
    log "data dir ${data_dir} initialised from template"
  else
    log "data dir ${data_dir} is empty: the server migrates it (~25 s)"
  fi
else
  log "reusing data dir ${data_dir}"
fi

# --- launch ---------------------------------------------------------------------------------
# Bind with --internal-host: --host is only the public URL (a bare --host 127.0.0.1 is ignored and
# the server listens on 0.0.0.0). The server runs in its own session/process group so that
# stop.sh can signal the whole group and a closing terminal does not hang it up.
pid=''
started=0
cleanup() {
  if [[ "${started}" == 0 && -n "${pid}" ]]; then
    kill -TERM -- "-${pid}" 2>/dev/null || kill -TERM "${pid}" 2>/dev/null || true
    rm -f "${pid_file}" "${env_file}"
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

launcher=()
if command -v setsid >/dev/null 2>&1; then launcher=(setsid); else set -m; fi
${launcher[@]+"${launcher[@]}"} "${ls_bin}" start --host "${url}" --internal-host 127.0.0.1 \
  --port "${port}" --no-browser --enable-legacy-api-token </dev/null >"${log_file}" 2>&1 &
pid=$!
set +m
printf '%s\n' "${pid}" >"${pid_file}"

fail() {
  log "ERROR: $*"
  log "last lines of ${log_file}:"
  tail -n 40 "${log_file}" >&2 || true
  exit 1
}

deadline=$((SECONDS + timeout))
until probe "${url}/health"; do
  kill -0 "${pid}" 2>/dev/null || fail "label-studio (pid ${pid}) exited before answering ${url}/health"
  # Label Studio silently moves to port+1 when its port is taken; we told it a fixed --host.
  if grep -q "is in use" "${log_file}"; then fail "port ${port} was taken before the server bound it"; fi
  ((SECONDS < deadline)) || fail "no answer from ${url}/health after ${timeout} s"
  sleep 0.25
done

if ! probe "${url}/api/current-user/whoami" "Token ${token}"; then
  fail "the server is up but rejects the API token; ${data_dir} was probably initialised with other
credentials (SPACESQL_LS_USERNAME/PASSWORD/TOKEN). Start with --fresh to re-create it."
fi

{
  printf 'LABEL_STUDIO_URL=%s\n' "${url}"
  printf 'LABEL_STUDIO_API_KEY=%s\n' "${token}"
  printf 'SPACESQL_LS_RUN_DIR=%s\n' "${run_dir}"
} >"${env_file}"
started=1
log "label-studio ${version} up at ${url} (pid ${pid}, log ${log_file}) in $(elapsed "${t0}") s"
cat "${env_file}"
