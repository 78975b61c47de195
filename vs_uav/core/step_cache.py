"""Step caching: reuse of the U-Net's deep features between denoising steps (DeepCache).

Training-free (Ma et al., "DeepCache", CVPR 2024): neighbouring denoising steps give
nearly the same high-level features, so the deep part of the U-Net (every level below the
top one, the mid block included) runs only on *full* steps, every ``interval`` steps, and
the steps in between run the shallow path alone: ``conv_in``, down block 0's resnets, the
last up block with the stored deep feature, and the output layers. ``interval = 1`` never
skips anything and is exact.

A feature belongs to one U-Net call site: each window and each spatial tile of a chunk has
its own. The calls of every step come in the same order (windows, then tiles), so the k-th
call of a step continues the k-th call of the previous steps.
"""

from __future__ import annotations

from vs_uav.core.models.unet_video import DeepFeature

__all__ = ["DeepFeature", "StepCache"]


class StepCache:
    """The deep features of one chunk's U-Net calls, carried from step to step.

    Call :meth:`start_step` before each step, then :meth:`slot` once per U-Net call.
    """

    def __init__(self, interval: int):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"cache_interval={interval!r}; accepted: an integer >= 1")
        self.interval = interval
        self._slots: list[DeepFeature] = []
        self._next = 0
        self._reuse = False

    def start_step(self, index: int) -> None:
        """Begin step ``index`` (0-based): full when ``index % interval == 0``, shallow otherwise."""
        self._reuse = index % self.interval != 0
        self._next = 0

    @property
    def full_step(self) -> bool:
        """Whether the current step runs the whole U-Net."""
        return not self._reuse

    def slot(self) -> DeepFeature:
        """The next U-Net call's feature slot."""
        if self._next == len(self._slots):
            if self._reuse:
                raise RuntimeError("step cache: more U-Net calls than on the last full step")
            self._slots.append(DeepFeature())
        slot = self._slots[self._next]
        slot.reuse = self._reuse
        self._next += 1
        return slot
