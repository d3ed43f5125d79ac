"""A trial's training steps: gather the batch, augment it, take the family's step; on CUDA, replayed as one graph."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainables.augment import AugmentConfig, diff_augment
from trainables.evaluation import as_float

if TYPE_CHECKING:
    from trainables.family import Family


def augmented_batch(family: "Family", images: torch.Tensor, maps: torch.Tensor, index: torch.Tensor,
                    augment: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch as a step takes it: gathered, as floats, augmented (from the global random stream), laid out
    as the family's networks expect; ``(image, maps, valid)``."""
    image, vms, valid = diff_augment(as_float(images[index]), as_float(maps[index]), augment)
    return family.fast.input(image), family.fast.input(vms), valid


class TrainSteps:
    """A trial's training steps: gather the batch, augment it, and take the family's step.

    On CUDA (run setting ``cuda_graphs``, on by default there) the whole step, from the batch
    indices to the optimizer update, is captured once as a CUDA graph and replayed for every
    later batch of the same size: a few thousand kernel launches from Python become one, which
    is what bounds these small models on a GPU (benchmarks/README.md, section 10). The first
    steps run eagerly, as PyTorch's recipe asks (they are real steps of the epoch), then one
    is captured. Replays draw from the same CUDA random stream as eager steps, so a trial
    trains the same way, and resumes the same way, with or without graphs. A step that cannot
    be captured (a host synchronisation inside it) falls back to eager steps, with a notice.
    fp16 with its loss scaler reads the scale on the host, so it runs eagerly.
    """

    WARMUP = 3

    def __init__(self, family: "Family", images: torch.Tensor, maps: torch.Tensor, augment: AugmentConfig,
                 graphs: bool) -> None:
        self.family, self.images, self.maps, self.augment = family, images, maps, augment
        self.graphs = graphs and images.is_cuda and not family.precision.needs_scaling
        self.graph: Any = None
        self.index: torch.Tensor | None = None  # the graph's static input: the batch's indices
        self.outputs: dict[str, torch.Tensor] = {}
        self.warm = 0
        self.notice: str | None = None

    def reset(self) -> None:
        """Capture the step again at the next batch: the hyperparameters it was captured with have changed."""
        self.graph, self.index, self.outputs, self.warm = None, None, {}, 0

    def _step(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.family.train_step(*augmented_batch(self.family, self.images, self.maps, index, self.augment))

    def __call__(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.graphs:
            return self._step(index)
        if self.index is None:
            self.index = torch.empty_like(index)
            self.side = torch.cuda.Stream(self.images.device)
        if index.shape != self.index.shape:  # a last, smaller batch: eagerly
            return self._step(index)
        self.index.copy_(index)
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        if self.warm < self.WARMUP:  # eager steps on a side stream before the capture (PyTorch's recipe)
            self.warm += 1
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                outputs = self._step(self.index)
            torch.cuda.current_stream().wait_stream(self.side)
            return outputs
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self._step(self.index)
        except Exception as err:  # noqa: BLE001 - anything that cannot be captured: eager from here on
            self.graphs = False
            self.notice = f"training steps run eagerly: the step could not be captured as a CUDA graph ({str(err)[:160]})"
            torch.cuda.synchronize(self.images.device)
            return self._step(index)
        self.graph, self.outputs = graph, outputs
        graph.replay()
        return outputs
