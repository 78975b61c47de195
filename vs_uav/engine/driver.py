"""The chunk driver: a clip of any length through bounded memory, chunk by chunk.

A clip is denoised chunk by chunk, each chunk in lockstep over all diffusion steps; what one
chunk hands to the next is :class:`vs_uav.engine.state.ChunkState`. The driver works on any
:class:`~vs_uav.engine.state.ChunkEngine` (the pipeline is one).

:class:`ChunkDriver` is the one chunk loop of vs-uav: ``UpscalePipeline.stream``, the
VapourSynth filter and the cluster's segment workers all drive chunks through it. It owns
the chunk bounds, the scene-cut pieces, the state hand-over, the fingerprint, the seek
policy and the disk cache; callers bring frames in and take frames out.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import torch

from vs_uav.core.tiling import DECODE_GROUP, chunk_bounds
from vs_uav.engine.state import (
    LATENTS_FILE,
    STATE_FILE,
    CacheError,
    ChunkEngine,
    ChunkState,
    UpscaleOutput,
    check_writable,
    fingerprint,
    load_tensors,
    save_tensors,
    source_digest,
)

if TYPE_CHECKING:
    from vs_uav.settings import UpscaleSettings

logger = logging.getLogger(__name__)

# Decoded chunks kept in memory: the one being served and its neighbour.
MEMORY_CHUNKS = 2
# Boundary states kept in memory (each is steps x 2 frames of latents); older ones live on disk.
MEMORY_STATES = 4

# source(a, b): frames a..b-1 as (1, 3, b-a, H, W) in [-1, 1], the frames in [a, b) that
# start a new scene (nothing is carried into them) and, optionally, a third item: the prompts
# set on frames in [a, b) ({frame: prompt}, e.g. from UAVPrompt props); frames without one use
# settings.prompt. A frame whose prompt differs from the one before it starts a new piece, as
# at a cut: a piece is denoised with one prompt.
Source = Callable[[int, int], tuple]
# (steps done, steps total) within the current chunk, then (chunk index, chunk count). A chunk
# split by scene cuts into P pieces counts its steps over them: steps total is P x the steps.
ProgressCallback = Callable[[int, int, int, int], None]
# What the driver logs for a chunk read from the disk cache (vs_uav.media.render parses it: a resumed
# render's progress says which chunks came from the cache and leaves them out of its rate).
# What the filter logs for each denoising step (vs_uav.media.render parses it for its bar).
STEP_PROGRESS = "progress chunk {chunk}/{chunks} step {step}/{steps}"
CACHED_CHUNK = "chunk {chunk}/{chunks} (frames {first}-{last}) read from {folder}"


@dataclass(frozen=True)
class _Chunk:
    """A chunk ready to decode: its source from frame ``lo`` (decode context and look-ahead
    included), its final latents from its first frame on (look-ahead included), the previous
    chunk's last final latents (``prefix``) and its scene pieces."""

    video: torch.Tensor
    lo: int
    latents: torch.Tensor
    prefix: Optional[torch.Tensor]
    pieces: list[tuple[int, int, int, int]]


@dataclass(frozen=True)
class _Seen:
    """What the driver remembers of a chunk's source without keeping its frames."""

    digest: str
    cuts: tuple[int, ...]
    prompts: dict[int, str]  # each piece's first frame -> its prompt (frames from the chunk's first on)


def _direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class ChunkDriver:
    """Renders frames ``start .. stop`` of a clip chunk by chunk; thread-safe.

    Chunks are computed on demand, once each, in dependency order. With ``seek='exact'``
    a request far ahead first computes the chunks before it (identical frames in any
    request order); with ``'fast'`` it starts cold. Scene cuts split a chunk into pieces
    that carry nothing across the cut. With ``settings.cache_dir`` the final latents and
    boundary state of every finished chunk go to disk under the render's fingerprint;
    a damaged file is moved aside and the chunk recomputed.

    ``run(fn, *args)`` runs model calls (e.g. on a device's worker thread); ``start`` is
    always a cold start, so a segment starting at a scene cut renders exactly the frames
    a whole-clip render gives there.
    """

    def __init__(self, pipeline: ChunkEngine, settings: "UpscaleSettings", num_frames: int,
                 source: Source, *, start: int = 0, stop: Optional[int] = None,
                 run: Callable[..., Any] = _direct, inputs: Optional[Callable[[int, int], dict[str, Any]]] = None,
                 progress: Optional[ProgressCallback] = None, log: Optional[Callable[[str], None]] = None):
        settings.check_model(*pipeline.limits())
        stop = num_frames if stop is None else stop
        if not 0 <= start < stop <= num_frames:
            raise ValueError(f"frames {start}..{stop}; accepted: 0 <= start < stop <= {num_frames}")
        pipeline.configure(settings)  # fp8 weights, offload, compile: applied once, as the settings ask
        self.pipeline, self.settings, self.source = pipeline, settings, source
        self.run, self.inputs, self.progress = run, inputs, progress
        self.log = log or logger.info
        # Bounds come from the whole clip, so a segment's chunks are the whole render's chunks.
        self.first, self.stop = start, stop
        self.bounds = [(max(a, start), min(b, stop)) for a, b in chunk_bounds(num_frames, settings.chunk_size)
                       if a < stop and b > start]
        self._starts = [a for a, _ in self.bounds]
        self.fingerprint = fingerprint(settings, pipeline.model_id, pipeline.dtype)
        self.cache: Optional[Path] = None
        if settings.cache_dir:
            check_writable(Path(settings.cache_dir).expanduser())
            self.cache = Path(settings.cache_dir).expanduser() / self.fingerprint
        self.lock = threading.RLock()  # one chunk computation at a time per clip
        self._seen: dict[int, _Seen] = {}
        self._prompt_settings: dict[str, "UpscaleSettings"] = {}
        self._last: Optional[tuple[int, torch.Tensor]] = None  # the last chunk read
        self._states: OrderedDict[int, ChunkState] = OrderedDict()
        self._outputs: OrderedDict[int, UpscaleOutput] = OrderedDict()
        self.started = time.monotonic()
        # On CUDA chunk k decodes on a side stream while chunk k+1's U-Net runs (see _render). Off
        # under a memory budget or offloading: both models at once would not fit what they promise.
        self.overlap = (pipeline.device.type == "cuda" and not settings.max_memory and not settings.offload)
        self._decoding: dict[int, Future] = {}  # chunk -> its decode, running on the side stream
        self._side: Optional[tuple[ThreadPoolExecutor, Any]] = None  # (thread, torch.cuda.Stream)

    def chunk_of(self, n: int) -> int:
        """The index of the chunk holding frame n."""
        k = bisect.bisect_right(self._starts, n) - 1
        if k < 0 or n >= self.bounds[k][1]:
            raise IndexError(f"frame {n} is outside frames {self.bounds[0][0]}..{self.bounds[-1][1]}")
        return k

    def output(self, k: int) -> UpscaleOutput:
        """Chunk k's decoded frames and final latents (kept for the last few chunks asked for)."""
        with self.lock:  # other threads wait here: a chunk is never computed twice
            if k not in self._outputs:
                self._outputs[k] = self._render(k)
                while len(self._outputs) > MEMORY_CHUNKS:
                    self._outputs.popitem(last=False)
            self._outputs.move_to_end(k)
            return self._outputs[k]

    def __iter__(self) -> Iterator[tuple[int, UpscaleOutput]]:
        """``(first frame, output)`` of every chunk, in order."""
        for k, (a, _) in enumerate(self.bounds):
            yield a, self.output(k)

    # -- dependencies ------------------------------------------------------------------------

    def _render(self, k: int) -> UpscaleOutput:
        if not self.overlap:
            return self._decode(k, self._compute(k), self.run)
        # The GPU overlap: chunk k decodes on the side stream while this thread runs the U-Net
        # of chunk k+1 (when the chunks are read in order), whose decode then overlaps k+2's.
        pending = self._decoding.pop(k, None) or self._decode_later(k, self._compute(k))
        nxt, in_order = k + 1, k == 0 or k - 1 in self._outputs
        if in_order and nxt < len(self.bounds) and nxt not in self._decoding and nxt not in self._outputs:
            try:
                self._decoding[nxt] = self._decode_later(nxt, self._latents(nxt))
            except Exception:  # speculative: chunk k+1 is computed again, and fails visibly, when asked for
                logger.debug("chunk %d ahead of time failed", nxt + 1, exc_info=True)
        return pending.result()

    def _compute(self, k: int) -> "_Chunk":
        """Chunk k's latents, after those of the chunks it depends on."""
        first = k
        if self.settings.seek == "exact":  # walk back to the nearest known state or cold start
            while first > 0 and self._needs_state(first) and self._state_before(first) is None:
                first -= 1
        for j in range(first, k):
            self._latents(j)
        return self._latents(k)

    def _decode_later(self, k: int, chunk: "_Chunk") -> Future:
        """Chunk k's decode on the side thread and its own CUDA stream. The stream first waits
        for what this thread queued so far (the latents may still be in flight); ``chunk`` keeps
        every input alive until the decode is done, and the decode returns host tensors
        (synchronised), so nothing crosses the streams unfinished. (Off CUDA, where overlap is
        only ever switched on by tests, the same thread runs without a stream.)"""
        device = self.pipeline.device
        if self._side is None:
            self._side = (ThreadPoolExecutor(1, thread_name_prefix="uav-decode"),
                          torch.cuda.Stream(device) if device.type == "cuda" else None)
        pool, stream = self._side
        ready = None
        if stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(device))

        def work() -> UpscaleOutput:
            if stream is None:
                return self._decode(k, chunk, _direct)
            with torch.cuda.stream(stream):  # the current stream is per thread
                stream.wait_event(ready)
                return self._decode(k, chunk, _direct)

        return pool.submit(work)

    def _decode(self, k: int, chunk: "_Chunk", run: Callable[..., Any]) -> UpscaleOutput:
        """Chunk k's frames from its latents, piece by piece."""
        a, b = self.bounds[k]
        parts = []
        for s, e, stop, anchor in chunk.pieces:
            # Decode groups are laid from the scene's first frame, as in one long chunk: a group
            # reaching back before the chunk takes the previous chunk's final latents, one
            # reaching past it the look-ahead's; only the chunk's own frames are kept.
            g0 = s - (s - anchor) % DECODE_GROUP
            g1 = min(e - 1 - (e - 1 - anchor) % DECODE_GROUP + DECODE_GROUP, stop)
            latents = chunk.latents[:, :, s - a:g1 - a]
            if g0 < s:
                latents = torch.cat([chunk.prefix[:, :, chunk.prefix.shape[2] - (s - g0):], latents], dim=2)
            video = chunk.video[:, :, g0 - chunk.lo:g1 - chunk.lo]
            parts.append(run(self.pipeline.decode, latents, video, self.settings)[:, :, s - g0:e - g0])
        return UpscaleOutput(torch.cat(parts, dim=2), chunk.latents[:, :, :b - a])

    def _read(self, k: int) -> tuple[torch.Tensor, int, tuple[int, ...]]:
        """Chunk k's source frames with what its decode reaches back to and its look-ahead:
        (frames, first frame's index, scene cuts among frames from the chunk's first on)."""
        a, b = self.bounds[k]
        lo = max(self.first, a - (DECODE_GROUP - 1))
        if self._last is not None and self._last[0] == k:  # read for its cuts, now computed
            return self._last[1], lo, self._seen[k].cuts
        hi = min(self.stop, b + self.settings.lookahead)
        video, cuts, *given = self.source(lo, hi)
        self.pipeline.check_video(video)
        cuts = {c for c in cuts if a <= c < hi} if self.settings.scene_change else set()
        prompts = [(given[0].get(i) if given else None) or self.settings.prompt for i in range(lo, hi)]
        cuts = tuple(sorted(cuts | {i for i in range(max(a, lo + 1), hi) if prompts[i - lo] != prompts[i - lo - 1]}))
        starts = {s: prompts[s - lo] for s in (a, *cuts)}
        # The cache folder is named by the frames, the cuts among them and the pieces' prompts
        # when they are not all the settings' one: other cuts (another scene threshold, a cut
        # list) or another caption make other chunks.
        digest = source_digest(video) + "".join(f"-{c}" for c in cuts) if self.cache is not None else ""
        if digest and any(p != self.settings.prompt for p in starts.values()):
            digest += "".join(f"|{s}:{p}" for s, p in sorted(starts.items()))
        seen = _Seen(hashlib.sha256(digest.encode()).hexdigest()[:16] if digest else "", cuts, starts)
        self._seen[k] = seen
        self._last = (k, video)
        return video, lo, seen.cuts

    def _needs_state(self, k: int) -> bool:
        """Whether chunk k continues the one before it (not the first, not at a scene cut)."""
        if k == 0:
            return False
        if k not in self._seen:
            self._read(k)
        return self.bounds[k][0] not in self._seen[k].cuts

    def _state_before(self, k: int) -> Optional[ChunkState]:
        """The state leaving chunk k-1, from memory or the disk cache; None if not known."""
        if k - 1 in self._states:
            return self._states[k - 1]
        if self.cache is None:
            return None
        if k - 1 not in self._seen:  # its folder is named by its frames: read them once
            self._read(k - 1)
        found = self._load(k - 1, latents=False)
        return found[1] if found else None

    def _remember(self, k: int, state: ChunkState) -> None:
        self._states[k] = state
        self._states.move_to_end(k)
        while len(self._states) > MEMORY_STATES:
            self._states.popitem(last=False)

    # -- one chunk ---------------------------------------------------------------------------

    def _latents(self, k: int) -> "_Chunk":
        """Chunk k's final latents (with look-ahead) and what decoding them needs: from the
        cache or computed."""
        a, b = self.bounds[k]
        video, lo, cuts = self._read(k)
        label = f"chunk {k + 1}/{len(self.bounds)} (frames {a}-{b - 1})"
        found = self._load(k) if self.cache is not None else None
        if found is not None:
            latents, state, prefix, anchor = found
            self.log(CACHED_CHUNK.format(chunk=k + 1, chunks=len(self.bounds), first=a, last=b - 1,
                                         folder=self._folder(k)))
        else:
            state = self._state_before(k) if self._needs_state(k) else None
            anchor = state.anchor if state is not None else a
            prefix = state.final if state is not None else None
            parts, pieces = [], self._pieces(k, cuts, anchor)
            for p, (s, e, stop, _) in enumerate(pieces):
                extra = self.inputs(s, stop) if self.inputs else {}
                callback = self._step_callback(k, p, len(pieces))
                settings = self._prompted(self._seen[k].prompts[s])
                out, state = self.run(self.pipeline.upscale_chunk, video[:, :, s - lo:stop - lo], s, settings,
                                      state if s == a else None, decode=False, callback=callback, end=e, **extra)
                parts.append(out.latents)
            latents = torch.cat(parts, dim=2)
            state.fingerprint = self.fingerprint
            if self.cache is not None:
                self._save(k, latents, state, prefix, anchor)
            self.log(f"{label} done, {time.monotonic() - self.started:.0f} s elapsed")
        self._remember(k, state)
        self._last = None
        return _Chunk(video, lo, latents, prefix, self._pieces(k, cuts, anchor))

    def _prompted(self, prompt: str) -> "UpscaleSettings":
        """The settings a piece is denoised with: the render's, with the piece's prompt."""
        if prompt == self.settings.prompt:
            return self.settings
        if prompt not in self._prompt_settings:
            self._prompt_settings[prompt] = self.settings.replace(prompt=prompt)
        return self._prompt_settings[prompt]

    def _step_callback(self, k: int, piece: int, pieces: int) -> Optional[Callable[[int, int], None]]:
        """Piece ``piece``'s step callback: steps counted over the chunk's pieces, so that the
        count never restarts within a chunk (step 5 of piece 2 of 2, 30 steps: step 35/60)."""
        if self.progress is None:
            return None
        progress, chunks = self.progress, len(self.bounds)
        return lambda done, steps: progress(piece * steps + done, pieces * steps, k, chunks)

    def _pieces(self, k: int, cuts: Sequence[int], anchor: int) -> list[tuple[int, int, int, int]]:
        """(first, end, look-ahead end, scene anchor) of each piece of chunk k between scene
        cuts: nothing is carried into a piece that starts at a cut, and only the last piece
        looks ahead, up to the next cut or the end."""
        a, b = self.bounds[k]
        starts = [a, *[c for c in cuts if a < c < b]]
        ends = [*starts[1:], b]
        ahead = min([self.stop, b + self.settings.lookahead, *[c for c in cuts if c >= b]])
        stops = [*ends[:-1], ahead]
        anchors = [anchor, *starts[1:]]
        return list(zip(starts, ends, stops, anchors))

    # -- the disk cache ----------------------------------------------------------------------

    def _folder(self, k: int) -> Path:
        assert self.cache is not None
        a, b = self.bounds[k]
        return self.cache / f"chunk{a:07d}-{b:07d}-{self._seen[k].digest}"

    def _save(self, k: int, latents: torch.Tensor, state: ChunkState, prefix: Optional[torch.Tensor],
              anchor: int) -> None:
        folder = self._folder(k)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"latents": latents, **({"prefix": prefix} if prefix is not None else {})}
        # Latents first, state last: a state file means a finished chunk.
        save_tensors(folder / LATENTS_FILE, tensors, {"fingerprint": self.fingerprint, "anchor": str(anchor)})
        state.save(folder / STATE_FILE)

    def _load(self, k: int, latents: bool = True):
        """Chunk k's cached (latents, state, prefix, anchor), or None when absent; a damaged one
        is moved aside. With ``latents=False`` only the state is read."""
        folder = self._folder(k)
        if not (folder / STATE_FILE).is_file():
            return None
        a, b = self.bounds[k]
        try:
            state = ChunkState.load(folder / STATE_FILE, self.fingerprint)
            if state.end != b:
                raise CacheError(f"{folder / STATE_FILE}: ends at frame {state.end}, not {b}")
            if not latents:
                return None, state, None, None
            tensors, meta = load_tensors(folder / LATENTS_FILE, self.fingerprint)
            lat, anchor = tensors.get("latents"), int(meta.get("anchor", -1))
            stop = self._pieces(k, self._seen[k].cuts, anchor)[-1][2]
            if lat is None or lat.ndim != 5 or lat.shape[2] != stop - a or not 0 <= anchor <= a:
                raise CacheError(f"{folder / LATENTS_FILE}: not the latents of frames {a}-{stop - 1}")
        except CacheError as e:
            self._discard(folder, e)
            return None
        return lat, state, tensors.get("prefix"), anchor

    def _discard(self, folder: Path, reason: Exception) -> None:
        aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            folder.replace(aside)
            where = f"moved aside to {aside}"
        except OSError:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            where = "removed"
        logger.warning("%s; %s, the chunk is computed again", reason, where)
