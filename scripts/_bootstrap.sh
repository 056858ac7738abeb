# Sourced by scripts/kluis and scripts/test: builds .venv from uv.lock on first use.
# Needs only python3 (>= 3.11) and the PyPI registry; nothing is installed outside the checkout.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UV_VERSION=0.13.9
export UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT="$ROOT/.venv"
if [ ! -x "$ROOT/.tools/bin/uv" ]; then
  python3 -m venv "$ROOT/.tools" >&2
  "$ROOT/.tools/bin/pip" install --quiet "uv==$UV_VERSION" >&2
fi
# --frozen: install exactly what uv.lock pins; never re-resolve on a user's machine.
"$ROOT/.tools/bin/uv" sync --quiet --frozen --extra dev --project "$ROOT" >&2
