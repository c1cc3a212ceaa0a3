#!/usr/bin/env bash
# Install a real Label Studio server into its own virtualenv (cached between runs).
#
# Label Studio pins Django, pandas, numpy, pydantic, ... at versions that conflict with the
# project's, so it lives in a dedicated venv and never in the project's environment.
#
# Environment (all optional):
#   SPACESQL_LS_CACHE    cache root                      (default: $HOME/.cache/spacesql)
#   SPACESQL_LS_VENV     the dedicated virtualenv        (default: $SPACESQL_LS_CACHE/labelstudio-venv)
#   SPACESQL_LS_VERSION  pip version spec for label-studio, used as ==SPEC (default: 1.23.*)
#   SPACESQL_LS_PYTHON   interpreter that creates the venv (default: python3)
#
# Idempotent: when the venv already holds a label-studio matching the spec, nothing is downloaded.
# Prints progress on stderr and, on stdout, one line: LABEL_STUDIO_VENV=<path>.
set -euo pipefail

cache_root="${SPACESQL_LS_CACHE:-${HOME}/.cache/spacesql}"
venv="${SPACESQL_LS_VENV:-${cache_root}/labelstudio-venv}"
spec="${SPACESQL_LS_VERSION:-1.23.*}"
python="${SPACESQL_LS_PYTHON:-python3}"
marker="${venv}/.spacesql-labelstudio-installed"

log() { printf 'labelstudio/install: %s\n' "$*" >&2; }

now() {
  # Seconds since the epoch with sub-second precision where the shell offers it (bash >= 5).
  if [[ -n "${EPOCHREALTIME:-}" ]]; then printf '%s\n' "${EPOCHREALTIME/,/.}"; else printf '%s\n' "${SECONDS}"; fi
}

elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Prints the installed label-studio version if it satisfies "==$spec", else nothing; exit 0 either way.
installed_version() {
  [[ -x "${venv}/bin/python" && -f "${marker}" ]] || return 0
  "${venv}/bin/python" - "${spec}" <<'PY' 2>/dev/null || true
import sys
from importlib import metadata

try:
    from packaging.specifiers import SpecifierSet
except ImportError:  # pip always vendors packaging
    from pip._vendor.packaging.specifiers import SpecifierSet

try:
    version = metadata.version("label-studio")
except metadata.PackageNotFoundError:
    sys.exit(0)
if version in SpecifierSet("==" + sys.argv[1]):
    print(version)
PY
}

start="$(now)"
mkdir -p "$(dirname "${venv}")"

# Serialise concurrent installs into the same venv (two CI jobs, or a developer running two shells).
if command -v flock >/dev/null 2>&1; then
  exec 9>"${venv}.lock"
  flock 9
fi

version="$(installed_version)"
if [[ -n "${version}" ]]; then
  log "label-studio ${version} already installed in ${venv} (cached; $(elapsed "${start}") s)"
  printf 'LABEL_STUDIO_VENV=%s\n' "${venv}"
  exit 0
fi

if [[ ! -x "${venv}/bin/python" ]]; then
  log "creating virtualenv ${venv} with $(command -v "${python}")"
  rm -rf "${venv}"
  "${python}" -m venv "${venv}"
fi

rm -f "${marker}"
log "pip install label-studio==${spec} into ${venv} (about 1 GB; takes about a minute)"
"${venv}/bin/python" -m pip install --disable-pip-version-check --quiet "label-studio==${spec}"

version="$("${venv}/bin/python" -c 'from importlib.metadata import version; print(version("label-studio"))')"
printf '%s\n' "${version}" >"${marker}"
[[ -n "$(installed_version)" ]] || {
  rm -f "${marker}"
  log "installed label-studio ${version} does not match ==${spec}"
  exit 1
}
log "label-studio ${version} installed in ${venv} in $(elapsed "${start}") s"
printf 'LABEL_STUDIO_VENV=%s\n' "${venv}"
