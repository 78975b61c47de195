"""Converting a verified model folder's weights to safetensors (optionally float16).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

from vs_uav.weights.folder import LAYOUT, read_state_dict
from vs_uav.weights.verify import (
    OPTIONAL_PARTS,
    Manifest,
    PathLike,
    WeightsError,
    weight_files,
    parts_wanted,
    verify_folder,
)

logger = logging.getLogger(__name__)


def convert(folder: PathLike, fp16: bool = False, *, manifests: Optional[Mapping[str, Manifest]] = None,
            parts: Optional[Iterable[str]] = None, log: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Write a ``.safetensors`` next to every official weight file of a verified folder.

    The loaders prefer safetensors (faster, no pickled code). ``fp16`` halves floating-point
    tensors. Each file is read back and compared before it takes its final name.
    """
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(folder).expanduser()
    parts = tuple(p for p in (parts or parts_wanted()) if LAYOUT[p].weights)
    present = tuple(p for p in parts if weight_files(folder, p) or p not in OPTIONAL_PARTS)
    verify_folder(folder, manifests, present)
    written = []
    for part in present:
        target, official = (folder / LAYOUT[part].weights[0]), (folder / LAYOUT[part].weights[-1])
        if not official.is_file() or target == official:
            continue
        sd = read_state_dict(official)
        # safetensors refuses shared storage (the official rotary freqs are one tensor
        # under many names): give every name its own contiguous copy.
        out = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous().clone() for k, v in sd.items()}
        tmp = target.with_name(target.name + ".part")
        save_file(out, str(tmp), metadata={"format": "pt", "converted_from": official.name})
        back = load_file(str(tmp))
        if back.keys() != out.keys() or any(not torch.equal(back[k], out[k]) for k in out):
            tmp.unlink()
            raise WeightsError(f"{target}: read-back differs from {official}; disk or memory fault, try again")
        os.replace(tmp, target)
        written.append(target)
        if log:
            log(f"wrote {target.relative_to(folder)}{' (fp16)' if fp16 else ''}")
    return written
