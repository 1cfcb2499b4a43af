"""Multi-task merging of DTVG (Zhang et al. 2025, §3.3, eq. 6).

``P_mix = P_init + α_t ⊙ T_t + Σ_{s∈S'} α_s ⊙ T_s``

with token-level scales ``α ∈ R^r`` (one number per prompt token, broadcast over the hidden size d,
initialised to ones). In stage 2 the target TPV ``T_t``, its scale ``α_t`` and the source scales ``α_s``
are trained; the source TPVs ``T_s`` and ``P_init`` stay frozen. The similarities of the grouping step use
the rescaled, detached vectors ``α ⊙ T`` (end of §3.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def rescaled(tpv: Tensor, scale: Tensor) -> Tensor:
    """``α ⊙ T``: token-level scale ``α [r]`` times the TPV ``T [r, d]``, broadcast over d (eq. 6)."""
    return scale[:, None] * tpv


def merged_prompt(
    p_init: Tensor,
    target_tpv: Tensor,
    target_scale: Tensor,
    source_tpvs: Sequence[Tensor],
    source_scales: Sequence[Tensor],
) -> Tensor:
    """Eq. 6: ``P_mix = P_init + α_t ⊙ T_t + Σ_s α_s ⊙ T_s``, differentiable in every T and α."""
    if len(source_tpvs) != len(source_scales):
        raise ValueError(f"{len(source_tpvs)} source TPVs but {len(source_scales)} source scales")
    p_mix = p_init + rescaled(target_tpv, target_scale)
    for tpv, scale in zip(source_tpvs, source_scales, strict=True):
        p_mix = p_mix + rescaled(tpv, scale)
    return p_mix


class ScaledTaskVectors(nn.Module):
    """The trainable state of DTVG stage 2, and eq. 6 for any chosen group.

    Frozen buffers: ``p_init [r, d]``, ``source_tpvs [n, r, d]`` (names in ``source_names``).
    Parameters: ``target [r, d]`` (the target TPV T_t; zeros unless a stage-1 target TPV is given, i.e. the
    target starts from P_init), ``target_scale [r]`` and ``source_scales [n, r]`` (ones).
    """

    def __init__(
        self,
        p_init: Tensor,
        sources: dict[str, Tensor],
        target_name: str,
        target_init: Tensor | None = None,
    ) -> None:
        super().__init__()
        if target_name in sources:
            raise ValueError(f"target task {target_name!r} is also listed as a source")
        r, d = p_init.shape
        for name, tpv in sources.items():
            if tuple(tpv.shape) != (r, d):
                raise ValueError(f"source TPV {name!r} has shape {tuple(tpv.shape)}, expected {(r, d)}")
        if target_init is not None and tuple(target_init.shape) != (r, d):
            raise ValueError(f"target TPV has shape {tuple(target_init.shape)}, expected {(r, d)}")

        self.target_name = target_name
        self.source_names = list(sources)
        self._index = {name: i for i, name in enumerate(self.source_names)}
        dtype = p_init.dtype
        stacked = torch.stack([t.detach().to(dtype) for t in sources.values()]) if sources else None
        self.register_buffer("p_init", p_init.detach().clone())
        self.register_buffer("source_tpvs", stacked if stacked is not None else p_init.new_zeros(0, r, d))
        start = torch.zeros_like(p_init) if target_init is None else target_init.detach().to(dtype).clone()
        self.target = nn.Parameter(start)
        self.target_scale = nn.Parameter(p_init.new_ones(r))
        self.source_scales = nn.Parameter(p_init.new_ones(len(self.source_names), r))

    def forward(self, selected: Sequence[str]) -> Tensor:
        """``P_mix [r, d]`` of eq. 6 for the group ``selected`` (source names); gradients reach only the
        target, its scale and the selected sources' scales."""
        idx = [self._source_index(name) for name in selected]
        return merged_prompt(
            self.p_init,
            self.target,
            self.target_scale,
            [self.source_tpvs[i] for i in idx],
            [self.source_scales[i] for i in idx],
        )

    @torch.no_grad()
    def rescaled_sources(self) -> dict[str, Tensor]:
        """Detached ``α_s ⊙ T_s`` per source name: what the grouping step compares (end of §3.3)."""
        return {
            name: rescaled(self.source_tpvs[i], self.source_scales[i]).detach()
            for i, name in enumerate(self.source_names)
        }

    @torch.no_grad()
    def rescaled_target(self) -> Tensor:
        """Detached ``α_t ⊙ T_t``."""
        return rescaled(self.target, self.target_scale).detach()

    def param_groups(self, lr: float, source_scale_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups for the paper's two learning rates: ``target`` (T_t and α_t) at ``lr`` and
        ``source_scales`` (α_s) at ``source_scale_lr``. The ``name`` key labels each group's lr in events."""
        target_params = [self.target, self.target_scale]
        groups = [{"name": "target", "params": target_params, "lr": lr, "weight_decay": weight_decay}]
        if self.source_names:
            groups.append(
                {
                    "name": "source_scales",
                    "params": [self.source_scales],
                    "lr": source_scale_lr,
                    "weight_decay": weight_decay,
                }
            )
        return groups

    @torch.no_grad()
    def mean_scales(self) -> dict[str, float]:
        """Mean token scale per task, the target under its own name (``scales`` of a group event)."""
        scales = {self.target_name: float(self.target_scale.mean())}
        for i, name in enumerate(self.source_names):
            scales[name] = float(self.source_scales[i].mean())
        return scales

    def _source_index(self, name: str) -> int:
        if name not in self._index:
            known = ", ".join(self.source_names) or "none"
            raise KeyError(f"unknown source task {name!r}; sources are {known}")
        return self._index[name]
