"""``uav selftest``: the whole stack end to end, without downloads.

A tiny model with random weights is written in the official folder layout, a synthetic
clip made by VapourSynth alone goes through ``core.uav.Upscale`` under vspipe into
ffmpeg (the script written by :func:`vs_uav.media.script.make_script` and rendered by
:func:`vs_uav.media.render.render`, as for ``uav upscale``), and the encoded file is checked
with ffprobe and a full decode. The weights are random, so the pictures are meaningless:
this tests the installation, not quality.

Library code here never writes to stdout: steps go to ``logging`` and to the ``log``
callback (the CLI prints it on stderr).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

from vs_uav.errors import UavError
from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.output import ffmpeg_options, shell_command
from vs_uav.media.probe import ffprobe_json
from vs_uav.media.render import RenderError, RenderJob, render
from vs_uav.media.script import make_script
from vs_uav.settings import UpscaleSettings

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = ("the model's weights are random, so the pictures are meaningless: "
                       "this tests the installation, not quality.")
HINT = "run `uav doctor`"

# The synthetic clip and what the filter must make of it (4x in both directions).
CLIP_WIDTH, CLIP_HEIGHT, CLIP_FRAMES = 32, 24, 8
SCALE = 4

# The tiny model's configs ship as package data in the official layout
# (vs_uav/data/selftest/): official keys, sizes as small as the code allows (32-group norms
# need multiples of 32 channels, the rotary embedding a head dimension >= 32).
CONFIG_DATA = ("data", "selftest")


def _data_files() -> dict[str, Any]:
    """Every shipped file of the tiny model's folder: relative path -> resource."""
    root = resources.files("vs_uav").joinpath(*CONFIG_DATA)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            else:
                out[rel] = child
    walk(root, "")
    return out


BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "!"


def tiny_vocab() -> dict[str, int]:
    """The smallest valid CLIP BPE vocabulary: every byte symbol, alone and word-final, plus BOS/EOS.

    The symbols are CLIP's (GPT-2's) reversible byte table, transformers' own, in its order."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _randomise_zero_init(module: Any, generator: Any, std: float = 0.02) -> None:
    """Give zero-initialised tensors small random values so that every path contributes."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def _save(state: dict[str, Any], path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def build_tiny_model(folder: Path, seed: int = 0, verify: bool = True) -> Path:
    """Write a complete tiny model with random weights in the official layout into ``folder``.

    With ``verify`` the folder is then loaded with
    :meth:`vs_uav.engine.pipeline.UpscalePipeline.from_pretrained`, which checks every key and shape
    strictly: this proves the layout. Returns ``folder``.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel
    from vs_uav.core.models.vae_video import AutoencoderKLVideo, VAEVideoConfig
    from vs_uav.weights.folder import LAYOUT, TOKENIZER_DIR

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for rel, resource in _data_files().items():  # configs and tokenizer settings, as shipped
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(resource.read_bytes())
    # The vocabulary (every byte symbol) is generated: 514 entries, no need to ship it.
    _write_json(folder / TOKENIZER_DIR / "vocab.json", tiny_vocab())

    def official_bin(name: str) -> Path:
        return folder / next(w for w in LAYOUT[name].weights if w.endswith((".bin", ".pth")))

    # The tiny CLIP's token ids follow the generated vocabulary: BOS and EOS are its last two.
    vocab_size = len(tiny_vocab())
    te_path = folder / LAYOUT["text_encoder"].config
    te_cfg = CLIPTextConfig.from_json_file(str(te_path))
    te_cfg.vocab_size, te_cfg.bos_token_id, te_cfg.eos_token_id = vocab_size, vocab_size - 2, vocab_size - 1
    te_cfg.to_json_file(str(te_path))
    vae_configs = {name: VAEVideoConfig.from_json_file(folder / LAYOUT[name].config) for name in ("vae_3d", "vae_video")}

    # One generator for the perturbations, the global seed for the classes' own initialisers:
    # the same seed gives the same tensors.
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetVideoModel(UNetVideoConfig.from_json_file(folder / LAYOUT["unet"].config))
        _randomise_zero_init(unet, gen)
        _save(unet.state_dict(), official_bin("unet"))
        del unet
        for name, cfg in vae_configs.items():
            vae = AutoencoderKLVideo(cfg)
            _randomise_zero_init(vae, gen)
            _save(vae.state_dict(), official_bin(name))
        text_model = CLIPTextModel(te_cfg)
        # The official checkpoint's keys carry "text_model."; transformers 5 dropped the prefix.
        state = {(k if k.startswith("text_model.") else "text_model." + k): v
                 for k, v in text_model.state_dict().items()}
        _save(state, official_bin("text_encoder"))
    logger.info("tiny random model written to %s (seed %d)", folder, seed)
    if verify:
        from vs_uav.engine.pipeline import UpscalePipeline

        # Strict: a ModelLoadError names the file on any missing, unexpected or misshapen key.
        for vae in ("3d", "video"):  # a pipeline reads one VAE: load both
            UpscalePipeline.from_pretrained(folder, vae=vae, flow="dis")
    return folder


# --- the end-to-end run ---


class SelftestError(UavError, RuntimeError):
    """One step of the selftest failed; the message is one line naming the step."""

    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step = step


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class SelftestResult:
    ok: bool
    steps: list[Step] = field(default_factory=list)
    error: Optional[str] = None  # one line: the failed step, what happened, the hint
    output: Optional[Path] = None  # the encoded file; only kept with a work_dir
    seconds: float = 0.0

    @property
    def failed_step(self) -> Optional[str]:
        return next((s.name for s in self.steps if not s.ok), None)


def _resolve_tool(name: str, given: Optional[str]) -> str:
    """The executable for ``name``: ``given`` (a name or path), else (vspipe: next to this Python, then) PATH."""
    from vs_uav.media.render import find_vspipe

    if given:
        found = shutil.which(given)
    else:
        found = find_vspipe() if name == "vspipe" else shutil.which(name)
    if not found:
        where = f" at {given}" if given and given != name else " on PATH"
        raise SelftestError("tools", f"{name} not found{where}; install it or {HINT}")
    return found


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " | ".join(lines[-2:]) if lines else "no message"


# Script lines that make the synthetic clip with VapourSynth alone (plain core filters, no source
# file): the writer's prepare lines, in place of reading a source.
SYNTHETIC_CLIP: tuple[str, ...] = tuple(f"""\
# A synthetic clip: four coloured pixels stretched into a smooth gradient; each frame shifted and brighter.
def tile(color):
    return core.std.BlankClip(width=1, height=1, length=1, format=vs.YUV444P8, color=color)


tiles = core.std.StackVertical([core.std.StackHorizontal([tile([30, 100, 160]), tile([200, 140, 90])]),
                                core.std.StackHorizontal([tile([120, 60, 200]), tile([220, 160, 128])])])
frames = [core.std.Expr(core.resize.Bilinear(tiles, {CLIP_WIDTH}, {CLIP_HEIGHT}, format=vs.YUV420P8,
                                             src_left=0.1 * i - 0.35), [f"x {{4 * i}} +", ""])
          for i in range({CLIP_FRAMES})]
clip = core.std.AssumeFPS(core.std.Splice(frames), fpsnum=25, fpsden=1)
clip = core.std.SetFrameProps(clip, _Matrix=1, _Primaries=1, _Transfer=1, _Range=1)""".splitlines())

# Lossless and without audio: the check compares what it decodes with what the filter made.
ENCODER = EncoderSettings(codec="ffv1", audio="none")


def selftest_script(model: Path, device: str, command: str) -> str:
    """The .vpy: the synthetic clip through core.uav.Upscale with the tiny model, written by
    the one .vpy writer (:func:`vs_uav.media.script.make_script`)."""
    settings = UpscaleSettings(model=str(model), prompt="selftest", steps=2, chunk_size=CLIP_FRAMES, device=device)
    title = textwrap.wrap("uav selftest: a synthetic clip through core.uav.Upscale with a tiny RANDOM model; "
                          + RANDOM_WEIGHTS_NOTE, 86)
    return make_script(None, settings, command=command, title=title, prepare=SYNTHETIC_CLIP)


class _Timed:
    """Times one step, records it in ``result`` and reports it; a failure ends the run."""

    def __init__(self, result: SelftestResult, report: Callable[[str], None], name: str, what: str):
        self.result, self.report = result, report
        self.name, self.what, self.detail = name, what, ""

    def __enter__(self) -> "_Timed":
        self.t0 = time.monotonic()
        self.report(f"{self.name}: {self.what} ...")
        return self

    def __exit__(self, kind: Optional[type], exc: Optional[BaseException], tb: Any) -> bool:
        seconds = time.monotonic() - self.t0
        ok = exc is None
        self.result.steps.append(Step(self.name, seconds, ok, self.detail if ok else str(exc)))
        if ok:
            self.report(f"{self.name}: ok ({seconds:.1f} s){': ' + self.detail if self.detail else ''}")
        else:
            self.report(f"{self.name}: FAILED after {seconds:.1f} s")
        return False


def run_selftest(
    work_dir: Optional[Path] = None,
    log: Callable[[str], None] = lambda message: None,
    *,
    device: str = "cpu",
    vspipe: Optional[str] = None,
    ffmpeg: Optional[str] = None,
    seed: int = 0,
    timeout: float = 600.0,
) -> SelftestResult:
    """Build a tiny random model, render a synthetic clip under vspipe into ffmpeg, check the file.

    ``work_dir`` keeps the model, script, logs and output there (default: a temporary
    folder, removed afterwards). ``vspipe``/``ffmpeg`` override the executables (default:
    vspipe next to this Python, then PATH); ffprobe is the one on PATH, which
    :mod:`vs_uav.media.probe` reads the output with.
    Never raises for a failed step: the result says which step failed and why.
    """
    started = time.monotonic()
    result = SelftestResult(ok=False)

    def report(message: str) -> None:
        logger.info(message)
        log(message)

    def run_in(folder: Path) -> None:
        try:
            _run_steps(folder, result, report, device=device, vspipe=vspipe, ffmpeg=ffmpeg, seed=seed,
                       timeout=timeout)
            result.ok = True
        except SelftestError as e:
            result.error = str(e)
        except Exception as e:  # an unexpected bug still names its step
            step = result.failed_step or "selftest"
            result.error = f"{step}: {type(e).__name__}: {_one_line(e)}; {HINT}"
            logger.debug("selftest failed", exc_info=True)

    if work_dir is not None:
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        run_in(work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="uav-selftest-") as tmp:
            run_in(Path(tmp))
        result.output = None  # removed with the temporary folder
    result.seconds = time.monotonic() - started
    if result.error:  # the caller reports it; logged for those who only watch the log
        logger.info("selftest failed: %s", result.error)
    return result


def _run_steps(folder: Path, result: SelftestResult, report: Callable[[str], None], *, device: str,
               vspipe: Optional[str], ffmpeg: Optional[str], seed: int, timeout: float) -> None:
    """The four steps in ``folder``, each timed and recorded in ``result``; the first failure raises."""
    env = {k: v for k, v in os.environ.items() if k != "UAV_BRIDGE_IMPL"}  # the real filter, no test hook
    with _Timed(result, report, "tools", "finding vspipe, ffmpeg and ffprobe") as step:
        vspipe_exe = _resolve_tool("vspipe", vspipe)
        ffmpeg_exe = _resolve_tool("ffmpeg", ffmpeg)
        _resolve_tool("ffprobe", None)
        step.detail = f"vspipe={vspipe_exe}, ffmpeg={ffmpeg_exe}"
    model = folder / "model"
    with _Timed(result, report, "model", "writing a tiny RANDOM model in the official layout and loading it "
                                         "strictly") as step:
        try:
            build_tiny_model(model, seed=seed)
        except Exception as e:  # the loader's errors are one line naming the file
            raise SelftestError("model", f"{type(e).__name__}: {_one_line(e)}; {HINT}") from None
        step.detail = str(model)
    script, out = folder / "selftest.vpy", folder / "selftest.mkv"
    with _Timed(result, report, "render", f"{CLIP_FRAMES} frames {CLIP_WIDTH}x{CLIP_HEIGHT} through "
                                          "core.uav.Upscale (vspipe -c y4m | ffmpeg -c:v ffv1)") as step:
        script.write_text(selftest_script(model, device, shell_command(script, None, out, ENCODER)),
                          encoding="utf-8")
        out.unlink(missing_ok=True)  # a kept folder's earlier output proves nothing
        # Logs (selftest.vspipe.log, selftest.ffmpeg.log) stay next to the output.
        job = RenderJob(script, out, ffmpeg_options(None, ENCODER), env=env, timeout=timeout, log_dir=folder,
                        vspipe=vspipe_exe, ffmpeg=ffmpeg_exe)
        try:
            render(job)
        except RenderError as e:
            raise SelftestError("render", f"{e}; {HINT}") from None
        step.detail = f"{out.stat().st_size} bytes"
    with _Timed(result, report, "check", "ffprobe and a full decode of the output") as step:
        step.detail = _check_output(ffmpeg_exe, out)
        result.output = out


def _ffprobe_stream(path: Path) -> dict[str, Any]:
    """The first video stream's codec, size and decoded frame count, by :mod:`vs_uav.media.probe`'s ffprobe."""
    data, said = ffprobe_json(["-count_frames", "-select_streams", "v:0", "-show_entries",
                                "stream=codec_name,width,height,nb_read_frames"], path)
    if not data:
        raise SelftestError("check", f"ffprobe cannot read {path.name}: {said or 'no message'}; {HINT}")
    streams = data.get("streams") or []
    if not streams:
        raise SelftestError("check", f"{path.name} has no video stream; {HINT}")
    return streams[0]


def _check_output(ffmpeg: str, out: Path) -> str:
    """Codec, size and frame count by ffprobe, then every frame decoded to raw bytes."""
    width, height = CLIP_WIDTH * SCALE, CLIP_HEIGHT * SCALE
    info = _ffprobe_stream(out)
    found = (info.get("codec_name"), info.get("width"), info.get("height"), int(info.get("nb_read_frames", -1)))
    if found != ("ffv1", width, height, CLIP_FRAMES):
        raise SelftestError("check", f"expected ffv1 {width}x{height} with {CLIP_FRAMES} frames, found "
                                     f"{found[0]} {found[1]}x{found[2]} with {found[3]} frames; {HINT}")
    dec = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-i", str(out), "-f", "rawvideo", "-pix_fmt", "yuv420p",
                          "pipe:1"], capture_output=True, timeout=120)
    err = dec.stderr.decode(errors="replace").strip()
    if dec.returncode or err:
        why = err.splitlines()[-1] if err else f"exit status {dec.returncode}"
        raise SelftestError("check", f"ffmpeg cannot decode {out.name}: {why}; {HINT}")
    frame_bytes = width * height * 3 // 2
    if len(dec.stdout) != CLIP_FRAMES * frame_bytes:
        raise SelftestError("check", f"decoded {len(dec.stdout)} bytes, expected {CLIP_FRAMES} frames of "
                                     f"{frame_bytes}; {HINT}")
    # Random weights give arbitrary pictures, but not one flat value everywhere (e.g. NaNs turned black).
    luma = [dec.stdout[i * frame_bytes:i * frame_bytes + width * height] for i in range(CLIP_FRAMES)]
    if all(len(set(y)) == 1 for y in luma):
        raise SelftestError("check", f"every output frame is one flat value ({luma[0][0]}): the filter computed "
                                     f"nothing usable; {HINT}")
    return f"ffv1 {width}x{height}, {CLIP_FRAMES} frames decoded"
