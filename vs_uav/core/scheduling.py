"""Noise schedules: the DDIM sampler with the official ``step_v0`` / ``step_vt`` split,
and the DDPM schedule that noises the low-res input by ``noise_level``.

Configs are the diffusers ``scheduler_config.json`` files of the model folder; the
arithmetic follows diffusers 0.16 (what the official weights were run with) in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import torch

from vs_uav.core.models.config import JsonConfig, config_kwargs

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class SchedulerConfig(JsonConfig):
    """The keys of a diffusers DDIM / DDPM ``scheduler_config.json`` that matter here."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[tuple[float, ...]] = None
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    # DDPM-only keys, read so that a low-res scheduler config parses; unused by add_noise.
    variance_type: str = "fixed_small"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SchedulerConfig":
        kwargs = config_kwargs(cls, d)
        if kwargs.get("trained_betas") is not None:
            kwargs["trained_betas"] = tuple(kwargs["trained_betas"])  # frozen: hashable
        cfg = cls(**kwargs)
        if cfg.trained_betas is None and cfg.beta_schedule not in _BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule={cfg.beta_schedule!r} is not supported; accepted: {', '.join(_BETA_SCHEDULES)}"
            )
        if cfg.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type={cfg.prediction_type!r} is not supported; accepted: {', '.join(_PREDICTION_TYPES)}"
            )
        if cfg.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps={cfg.num_train_timesteps} must be >= 1")
        return cfg


def make_betas(cfg: SchedulerConfig) -> torch.Tensor:
    n = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        return torch.tensor(cfg.trained_betas, dtype=torch.float32)
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float32)
    if cfg.beta_schedule == "scaled_linear":
        # Latent-diffusion schedule: linear in sqrt(beta).
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=torch.float32) ** 2
    # Glide cosine schedule.
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


class _Schedule:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.betas = make_betas(config)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def _acp(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        acp = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        return acp[t]


class LowResScheduler(_Schedule):
    """Noise augmentation of the low-res input (the x4 upscaler's DDPM schedule)."""

    @property
    def max_timestep(self) -> int:
        return self.config.num_train_timesteps - 1

    def add_noise(self, image: torch.Tensor, noise: torch.Tensor, noise_level: int | torch.Tensor) -> torch.Tensor:
        level = torch.as_tensor(noise_level, dtype=torch.long, device=image.device).reshape(-1)
        acp = self._acp(level, image)
        shape = (-1,) + (1,) * (image.ndim - 1)
        return acp.sqrt().reshape(shape) * image + (1 - acp).sqrt().reshape(shape) * noise


class DDIMScheduler(_Schedule):
    """DDIM with the prediction split in two, as Upscale-A-Video needs it.

    ``step_v0`` predicts x0 from the model output; the caller may then alter x0
    (latent propagation) before ``step_vt`` takes the step. ``step_vt`` derives the
    noise direction from the model output and the current sample, not from the
    altered x0, exactly as the official sampler does.
    """

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.final_alpha_cumprod = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps: Optional[int] = None
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1, dtype=torch.long)

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        n_train = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= n_train:
            raise ValueError(f"num_inference_steps={num_inference_steps} is out of range; accepted: 1..{n_train}")
        self.num_inference_steps = num_inference_steps
        ratio = n_train // num_inference_steps
        # "leading" spacing, as in diffusers 0.16.
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long) * ratio + self.config.steps_offset
        return self.timesteps

    def _prev_timestep(self, timestep: int) -> int:
        if self.num_inference_steps is None:
            raise RuntimeError("DDIMScheduler: call set_timesteps() before stepping")
        return int(timestep) - self.config.num_train_timesteps // self.num_inference_steps

    def _alpha_prev(self, prev_t: int, like: torch.Tensor) -> torch.Tensor:
        if prev_t >= 0:
            return self._acp(prev_t, like)
        return self.final_alpha_cumprod.to(device=like.device, dtype=like.dtype)

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.thresholding:
            return self._threshold(x0)
        if cfg.clip_sample:
            return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return x0

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        # Dynamic thresholding (Imagen): per sample, clamp to a percentile s >= 1 and rescale.
        dtype = x0.dtype
        flat = x0.float().reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1, max=self.config.sample_max_value).unsqueeze(1)
        return (flat.clamp(-s, s) / s).reshape(x0.shape).to(dtype)

    def step_v0(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor) -> torch.Tensor:
        """Predicted original sample x0 at ``timestep``."""
        self._prev_timestep(timestep)
        a_t = self._acp(int(timestep), sample)
        b_t = 1 - a_t
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
        elif kind == "v_prediction":
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
        else:
            x0 = model_output
        return self._clip(x0)

    def step_vt(
        self,
        x0: torch.Tensor,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        variance_noise: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The sample at the previous timestep, from a (possibly altered) x0."""
        prev_t = self._prev_timestep(timestep)
        a_t = self._acp(int(timestep), sample)
        a_prev = self._alpha_prev(prev_t, sample)
        b_t = 1 - a_t
        kind = self.config.prediction_type
        if kind == "epsilon":
            eps = model_output
        elif kind == "v_prediction":
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        else:
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        x0 = self._clip(x0)
        std = 0.0
        if eta > 0:
            variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
            std = eta * variance**0.5
        prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            if variance_noise is None:
                raise ValueError("step_vt: eta > 0 needs variance_noise (draw it from the frame-indexed generator)")
            prev = prev + std * variance_noise
        return prev
