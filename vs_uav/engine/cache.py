"""The one engine cache: loaded pipelines, and each device's worker thread.

The filter, the cluster's workers (their warm-up and the scripts they render) and the editor's
preview all get their pipeline here, so a process never holds two copies of one model and
never keeps models nobody uses: the cache keeps the ``capacity`` most recently used pipelines
(one by default: a model is the largest thing in memory), and a pipeline evicted while a live
filter still holds it is found again instead of being loaded twice. The VapourSynth filter
empties it when its core is destroyed.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vs_uav.settings import UpscaleSettings
from vs_uav.weights.folder import default_model_dir

if TYPE_CHECKING:
    from vs_uav.engine.pipeline import UpscalePipeline

logger = logging.getLogger(__name__)


class DeviceWorker:
    """The one thread that runs models on a device. VapourSynth calls filters from many
    threads; torch keeps per-thread resources (an OpenMP team, allocator arenas), so running
    every model call on one thread keeps speed and memory what the pipeline alone has."""

    def __init__(self, device: str):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"uav-{device}")

    def run(self, fn, *args: Any, **kwargs: Any) -> Any:
        return self._pool.submit(fn, *args, **kwargs).result()


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here (torch {torch.__version__}); "
                        "accepted: 'cpu' or 'auto'")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}; accepted: cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if device == "cpu" and dtype == "float16":
        raise ValueError("dtype='float16' is not supported on the CPU; accepted: 'float32', 'bfloat16'")
    if device.startswith("cuda") and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype='bfloat16' is not supported on {device}; accepted: 'float16', 'float32'")
    return device, dtype


@dataclass(frozen=True)
class EngineKey:
    """What makes two pipelines different. The accelerations (weights, offload, compile) are
    part of it: ``configure`` changes a pipeline's U-Net in place, so settings that differ in
    them never share one."""

    model_dir: str  # absolute
    vae: str
    device: str  # resolved: never "auto"
    dtype: str
    flow: str
    weights: str = "default"
    offload: bool = False
    compile: bool = False

    @classmethod
    def of(cls, settings: UpscaleSettings) -> "EngineKey":
        device, dtype = resolve_device(settings.device, settings.dtype)
        return cls(str(model_dir_of(settings).resolve()), settings.vae, device, dtype, settings.flow,
                   settings.weights, settings.offload, settings.compile)


class EngineCache:
    """Loaded pipelines by :class:`EngineKey`, bounded (see the module's docstring)."""

    def __init__(self, capacity: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity={capacity!r}; accepted: an integer >= 1")
        self.capacity = capacity
        self.loads = 0  # pipelines loaded so far (the editor's tests count them)
        self._kept: OrderedDict[EngineKey, UpscalePipeline] = OrderedDict()
        self._alive: weakref.WeakValueDictionary[EngineKey, UpscalePipeline] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, key: EngineKey) -> "UpscalePipeline":
        """The pipeline for ``key``, loaded on first use (a ModelLoadError or ValueError naming
        the file when the folder cannot be loaded)."""
        with self._lock:
            engine = self._kept.get(key) or self._alive.get(key)
            if engine is None:
                from vs_uav.engine.pipeline import UpscalePipeline

                self._evict(self.capacity - 1)  # free memory before loading the next model
                engine = UpscalePipeline.from_pretrained(key.model_dir, vae=key.vae, device=key.device,
                                                         dtype=key.dtype, flow=key.flow)
                self.loads += 1
                self._alive[key] = engine
            self._kept[key] = engine
            self._kept.move_to_end(key)
            self._evict(self.capacity)
            return engine

    def __contains__(self, key: EngineKey) -> bool:
        return key in self._kept or key in self._alive

    def keys(self) -> list[EngineKey]:
        """Every pipeline still in memory: kept here or held by a live filter."""
        return list(self._alive.keys())

    def clear(self) -> None:
        with self._lock:
            self._evict(0)

    def _evict(self, keep: int) -> None:
        if len(self._kept) <= keep:
            return
        while len(self._kept) > keep:
            key, _ = self._kept.popitem(last=False)
            logger.info("engine cache: %s released", key)
        gc.collect()  # a pipeline's modules hold reference cycles; free them now, not later
        _empty_device_caches()


def _empty_device_caches() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


ENGINES = EngineCache()
_WORKERS: dict[str, DeviceWorker] = {}
_WORKERS_LOCK = threading.Lock()


def worker_for(device: str) -> DeviceWorker:
    """The device's one worker thread (``cuda`` and ``cuda:0`` share one)."""
    name = f"{device}:0" if device == "cuda" else device
    with _WORKERS_LOCK:
        if name not in _WORKERS:
            _WORKERS[name] = DeviceWorker(name)
        return _WORKERS[name]


def get_engine(model_dir: Path, vae: str, device: str, dtype: str, flow: str,
               acceleration: tuple[str, bool, bool] = ("default", False, False)):
    """The cached pipeline for these arguments and its device's worker. ``device`` and
    ``dtype`` must be resolved (:func:`resolve_device`)."""
    key = EngineKey(str(Path(model_dir).resolve()), vae, device, dtype, flow, *acceleration)
    return ENGINES.get(key), worker_for(device)


def model_dir_of(settings: UpscaleSettings) -> Path:
    """The model folder ``settings`` name: ``model``, else $UAV_MODEL_DIR or the default."""
    return Path(settings.model).expanduser() if settings.model else default_model_dir()


def check_model_folder(model_dir: Path, settings: UpscaleSettings) -> None:
    """What loading the model would refuse, checked without reading a weight: the folder's
    layout, its configs, and the settings against the model's limits (a ModelLoadError or ValueError, one line)."""
    from vs_uav.core.models.text_encoder import clip_text_config
    from vs_uav.core.models.unet_video import UNetVideoConfig
    from vs_uav.core.models.vae_video import VAEVideoConfig
    from vs_uav.core.scheduling import SchedulerConfig
    from vs_uav.weights.folder import check_folder, max_noise_level, read_config

    folder = check_folder(model_dir, settings.vae)
    read_config(folder, "unet", UNetVideoConfig.from_dict)
    read_config(folder, f"vae_{settings.vae}", VAEVideoConfig.from_dict)
    read_config(folder, "text_encoder", clip_text_config)
    read_config(folder, "low_res_scheduler", SchedulerConfig.from_dict)
    scheduler = read_config(folder, "scheduler", SchedulerConfig.from_dict)
    # the limits ChunkDriver checks again once the model is loaded
    settings.check_model(max_noise_level(folder), scheduler.num_train_timesteps - scheduler.steps_offset)


def engine_for(settings: UpscaleSettings):
    """The cached pipeline for ``settings`` (model folder, VAE, device, dtype, flow and the
    accelerations, applied) and its device's worker: what ``uav.Upscale`` with them renders
    with."""
    key = EngineKey.of(settings)
    engine = ENGINES.get(key)
    engine.configure(settings)
    return engine, worker_for(key.device)
