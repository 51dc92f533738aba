"""One forward of the student for all enabled tasks, plus the EMA teacher that gives MIM targets.

The task heads are called inside `PretrainObjective.forward` (not around it) so that DDP sees a
single forward per step and its gradient hooks cover every head, and so that `torch.compile`
captures the whole step as one graph.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vlpipe.train.masking import ap_loss, mim_infonce, mlm_loss


def _gather_tokens(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, N, H), positions (B, k) -> (B, k, H)."""
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


class EMATeacher:
    """A frozen copy of the model whose weights follow the student as an exponential moving average.

    It only runs `encode_image` (image stream alone, unmasked) and its own MIM head, under
    `no_grad`: the stop-gradient target of contrastive MIM. It is kept outside the trained module so
    DDP neither broadcasts nor reduces it; every rank updates it from identical student weights, so
    the copies stay identical.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self._pairs = [
            (t, s) for t, s in zip(self.module.parameters(), model.parameters(), strict=True)
            if t.dtype.is_floating_point
        ]

    @torch.no_grad()
    def update(self) -> None:
        """teacher <- decay * teacher + (1 - decay) * student, in one fused call."""
        teacher_params = [t for t, _ in self._pairs]
        student_params = [s.detach() for _, s in self._pairs]
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - self.decay)

    @torch.no_grad()
    def targets(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Teacher MIM features (B, k, D) of the patches at `positions`, from the unmasked image.

        The teacher gets the same uint8 patches as the student, normalized by the model itself, so
        both see exactly the same geometry and pixel statistics.
        """
        encoded = self.module.encode_image(images)[:, 1:]
        return self.module.mim_head(_gather_tokens(encoded, positions))


class PretrainObjective(nn.Module):
    """Wraps the model: inputs from `tasks.prepare_batch` in, weighted loss and metric counts out."""

    def __init__(self, model: nn.Module, weights: dict[str, float], tau: float) -> None:
        super().__init__()
        self.model = model
        self.weights = dict(weights)
        self.tau = tau

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        aligned: torch.Tensor,
        mlm_positions: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        mim_positions: torch.Tensor | None = None,
        mim_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns `loss` (weighted sum) and per task `<task>_loss`, `<task>_correct`, `<task>_count`."""
        out = self.model(images, input_ids, attention_mask, patch_mask=patch_mask)
        results: dict[str, torch.Tensor] = {}
        total = images.new_zeros((), dtype=torch.float32)
        if "mlm" in self.weights and mlm_positions is not None and mlm_labels is not None:
            logits = self.model.mlm_head(_gather_tokens(out.text, mlm_positions))
            results["mlm_loss"], results["mlm_correct"], results["mlm_count"] = mlm_loss(logits, mlm_labels)
            total = total + self.weights["mlm"] * results["mlm_loss"]
        if "ap" in self.weights:
            logits = self.model.align_head(out.pooled_text, out.pooled_image)
            results["ap_loss"], results["ap_correct"], results["ap_count"] = ap_loss(logits, aligned)
            total = total + self.weights["ap"] * results["ap_loss"]
        if "mim" in self.weights and mim_positions is not None and mim_targets is not None:
            student = self.model.mim_head(_gather_tokens(out.image[:, 1:], mim_positions))
            results["mim_loss"], results["mim_correct"], results["mim_count"] = mim_infonce(
                student, mim_targets, aligned, self.tau
            )
            total = total + self.weights["mim"] * results["mim_loss"]
        results["loss"] = total
        return results
