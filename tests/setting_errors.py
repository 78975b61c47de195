"""The settings model's refusals (vs_uav.settings), in one table: the model's own test
(test_settings) and each front end (the Python filter, the native plugin, the pipeline call,
preset files, the CLI) check what they add (a prefix, their own value types) against these
rows, so that a changed message is changed here once."""

from __future__ import annotations

# (keyword arguments, what the one-line refusal says after the front end's prefix)
BAD_SETTINGS: list[tuple[dict, str]] = [
    (dict(steps=0), "steps=0; accepted: an integer in [1, 1000]"),
    (dict(noise_level=400), "noise_level=400; accepted: an integer in [0, 350]"),
    (dict(noise_level=-3), "noise_level=-3; accepted: an integer in [0, 350]"),
    (dict(vae="4d"), "vae='4d'; accepted: '3d', 'video'"),
    (dict(guidance_scale=float("inf")), "guidance_scale=inf; accepted: a number in [0, 50]"),
    (dict(propagation_steps=[30]), "propagation_steps=[30]; accepted: distinct step indices in [0, 29]"),
    (dict(propagation_steps=[3, 3]), "propagation_steps=[3, 3]; accepted: distinct step indices in [0, 29]"),
    (dict(steps=8, propagation_steps=[1, 1]), "propagation_steps=[1, 1]; accepted: distinct step indices in [0, 7]"),
    (dict(propagation_steps=[2.5]), "propagation_steps=[2.5]; accepted: distinct step indices in [0, 29]"),
    (dict(steps="30"), "steps='30'; accepted: an integer"),
    (dict(steps=2.7), "steps=2.7; accepted: an integer in [1, 1000]"),
    (dict(seed=1.9), "seed=1.9; accepted: an integer in [0, 9223372036854775807]"),
    (dict(seed=2**63), "seed=9223372036854775808; accepted: an integer in [0, 9223372036854775807]"),
    (dict(seed=-1), "seed=-1; accepted: an integer in [0, 9223372036854775807]"),
    (dict(seed=True), "seed=True; accepted: an integer"),
    (dict(scene_change=0.5), "scene_change=0.5; accepted: True or False"),
    (dict(tile_size=100), "tile_size=100; accepted: 0 (automatic) or a multiple of 8 >= 32"),
    (dict(tile_size=64, tile_overlap=40), "tile_overlap=40; accepted: 0..32"),
    (dict(device="gpu"), "device='gpu'; accepted: 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (dict(chunk_size=4), "chunk_size=4; accepted: an integer in [8, 4096]"),
    (dict(chunk_size=8.5), "chunk_size=8.5; accepted: an integer in [8, 4096]"),
    (dict(color_fix="sepia"), "color_fix='sepia'; accepted: 'none', 'adain', 'wavelet'"),
    (dict(stepz=3), "unknown parameter 'stepz'; accepted: prompt, prompt_suffix, "),
]


def row_id(row: tuple[dict, str]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in row[0].items())


def row(**kwargs) -> tuple[dict, str]:
    """The table's row for exactly these keyword arguments (a front end's sample of it)."""
    return next(r for r in BAD_SETTINGS if r[0] == kwargs)
