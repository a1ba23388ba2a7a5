"""HeteroLoraConfig: what to attach (targets, shortcuts) and how (rank, scaling, dropout)."""
from __future__ import annotations

from dataclasses import dataclass

from heterolora_core.vocab import DEFAULT_TARGETS, LORA_TARGETS, SHORTCUT_KINDS


@dataclass(frozen=True)
class HeteroLoraConfig:
    """The HeteroLoRA search space.

    Args:
        rank: r of every candidate module (LoRA and shortcut).
        alpha: LoRA alpha. ``None`` keeps the scaling alpha/r = 2 at every rank (alpha = 2r), so a
            rank-32 module trains with the same step size as a rank-8 one; the authors' fixed
            ``alpha=16`` is one argument away.
        lora_targets: projections to adapt, a subset of ``LORA_TARGETS`` (paper: query, value).
        shortcuts: ``True`` for all four LoRA-adapted shortcut kinds, ``False`` for none, or a
            tuple of kinds from ``SHORTCUT_KINDS``.
        shortcut_alpha: alpha_s of the shortcuts. ``None`` keeps alpha_s/r = 0.5 at every rank
            (the authors' alpha_s = 4 at rank 8).
        dropout: dropout on the LoRA modules' input (paper: 0).
        init_seed: seed for the Kaiming-uniform init of the A factors (``None``: torch's RNG).
    """

    rank: int = 8
    alpha: float | None = None
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    shortcuts: bool | tuple[str, ...] = False
    shortcut_alpha: float | None = None
    dropout: float = 0.0
    init_seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        targets = tuple(self.lora_targets)
        unknown = [t for t in targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {', '.join(LORA_TARGETS)}")
        if len(set(targets)) != len(targets):
            raise ValueError(f"duplicate LoRA targets in {targets}")
        object.__setattr__(self, "lora_targets", tuple(t for t in LORA_TARGETS if t in targets))
        if not isinstance(self.shortcuts, bool):
            kinds = tuple(self.shortcuts)
            bad = [k for k in kinds if k not in SHORTCUT_KINDS]
            if bad:
                raise ValueError(f"unknown shortcut kind(s) {bad}; choose from {', '.join(SHORTCUT_KINDS)}")
            object.__setattr__(self, "shortcuts", tuple(k for k in SHORTCUT_KINDS if k in kinds))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not targets and not self.shortcut_kinds:
            raise ValueError("the search space is empty: give LoRA targets or shortcuts")

    @property
    def shortcut_kinds(self) -> tuple[str, ...]:
        if self.shortcuts is True:
            return SHORTCUT_KINDS
        if self.shortcuts is False:
            return ()
        return tuple(self.shortcuts)

    @property
    def lora_scaling(self) -> float:
        """alpha / r of the LoRA modules."""
        return 2.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def shortcut_scaling(self) -> float:
        """alpha_s / r of the shortcut modules."""
        return 0.5 if self.shortcut_alpha is None else float(self.shortcut_alpha) / self.rank
