#!/usr/bin/env bash
# Fill bench/wheels/ (git-ignored) with what bench/device.sh may need on a GPU machine without
# internet: pytest and the model-loading stack (transformers' CLIP tokenizer and text model), the
# versions this checkout's .venv uses, for CPython 3.11-3.13 on x86-64 Linux. Not carried: torch
# and numpy (the device's own), OpenCV, VapourSynth and Ray (the tests skip without them).
# Run it here (it needs a package registry), before handing the tree to the device.
set -euo pipefail
cd "$(dirname "$0")"
PIP=${PIP:-../.venv/bin/pip}
PY=${PY:-../.venv/bin/python}
DEST=wheels
mkdir -p "$DEST"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# project==version, as the .venv has them (the code is tested with these).
PKGS=()
for p in transformers huggingface_hub tokenizers safetensors regex PyYAML tqdm packaging filelock fsspec \
         httpx2 httpcore2 h11 anyio idna certifi truststore click typer shellingham annotated_doc typing_extensions \
         pytest pluggy iniconfig pygments; do
    PKGS+=("$p==$(version "$p")")
done
for v in 3.11 3.12 3.13; do
    # --no-deps: exactly the list above (numpy, hf-xet, rich... are left out on purpose).
    "$PIP" download --quiet --no-deps --only-binary=:all: -d "$DEST" --implementation cp --python-version "$v" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        "${PKGS[@]}"
done
du -sh "$DEST"
