#!/usr/bin/env bash
# The LiteRT converter environment: a venv with litert-torch, kept out of the project's venv
# (litert-torch pins typing_extensions 4.12.2 and pulls in jax, transformers and kagglehub).
#
#   bash .ci/litert-env.sh [ENV_DIR]        (default: $EDGEPROBE_LITERT_ENV, else ${XDG_CACHE_HOME:-~/.cache}/edgeprobe/litert-env,
#                                          where edgeprobe looks when EDGEPROBE_LITERT_PYTHON is unset)
#   export EDGEPROBE_LITERT_PYTHON=ENV_DIR/bin/python
#
# torch is borrowed, not installed: torch 2.14.1's Linux wheel drags in ~4.5 GB of CUDA wheels
# (nvidia-*, triton), so the converter env links the project venv's torch, its CUDA libraries and
# triton into its own site-packages (the project's python, `python` on PATH or $PROJECT_PYTHON,
# must have torch 2.14.1). Everything else comes pinned from .ci/litert-constraints.txt.
# Idempotent: an env made from the same pins and the same project venv is kept; any other is made anew.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dir="${1:-${EDGEPROBE_LITERT_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeprobe/litert-env}}"
project_py="${PROJECT_PYTHON:-python}"
litert_torch_version=0.10.0

read -r base_py site <<<"$("$project_py" -c '
import importlib.metadata as md, sys
v = md.version("torch")
assert v.split("+")[0] == "2.14.1", f"the project python ({sys.executable}) has torch {v}, not 2.14.1"
print(sys._base_executable, md.distribution("torch").locate_file(""))')"
# what the env was made from: its pins, the litert-torch version and the venv its torch is linked from
stamp="$(cat "$here/litert-constraints.txt" | sha256sum | cut -c1-16) litert-torch==$litert_torch_version $site"
if [ -x "$env_dir/bin/python" ] && [ "$(cat "$env_dir/.edgeprobe-litert-env" 2>/dev/null)" = "$stamp" ] \
   && "$env_dir/bin/python" -I -c 'import importlib.metadata as md; md.version("torch"); md.version("litert-torch")' 2>/dev/null; then
  echo "litert-env: $env_dir is ready (litert-torch $litert_torch_version, torch from $site)"
  exit 0
fi

if [ -e "$env_dir" ]; then  # replaced only when it is a venv (a stale converter env), never another directory
  if [ ! -f "$env_dir/pyvenv.cfg" ]; then
    echo "litert-env: $env_dir exists and is not a venv; name a new directory" >&2
    exit 1
  fi
  rm -rf "$env_dir"
fi
"$base_py" -m venv "$env_dir"
target="$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# torch and what its wheel depends on that is large: the packages themselves and their dist-info,
# so pip sees torch 2.14.1 and its CUDA requirements as installed and leaves them alone
shopt -s nullglob
for p in "$site"/torch "$site"/torch-2.14.1*.dist-info "$site"/torchgen "$site"/functorch \
         "$site"/nvidia "$site"/nvidia_*.dist-info "$site"/cuda "$site"/cuda_*.dist-info \
         "$site"/triton "$site"/triton-*.dist-info; do
  ln -s "$p" "$target/"
done
"$env_dir/bin/pip" install -q --disable-pip-version-check -c "$here/litert-constraints.txt" \
  "litert-torch==$litert_torch_version"
"$env_dir/bin/python" -I -c 'import litert_torch, torch; print("litert-env: litert-torch", __import__("importlib.metadata").metadata.version("litert-torch"), "torch", torch.__version__)' 2>/dev/null
echo "$stamp" > "$env_dir/.edgeprobe-litert-env"  # last: marks it complete
