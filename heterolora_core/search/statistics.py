"""Scoring statistics: what the gradient proxies need of each candidate, gathered in backward passes.

Every gradient proxy is a function of one matrix per candidate,

    G = Σ_b G_b,   G_b = δ_bᵀ x_b = Σ_n δ_n x_nᵀ          (d_out, d_in)

the gradient of the loss with respect to the candidate's implied full update ΔW (x: its inputs,
δ: the gradients where its output is added, one row per token of batch b). Holding G costs as
much as the adapted weight itself, and forming G_b costs a weight-gradient matrix product at every
step: exactly the work LoRA avoids. :class:`SketchStatistics` never forms it. It keeps three
linear sketches of G, with fixed Gaussian matrices Ω, Φ (d_in × k) and Ψ (d_out × l), l = 2k + 1,
one per width (seeded, so every step and every process uses the same ones; candidates reading the
same input share Ω, Φ and the product x [Ω | Φ]):

    Y = G Ω = Σ_b δ_bᵀ (x_b Ω)      Z = G Φ = Σ_b δ_bᵀ (x_b Φ)      (d_out × k)
    W = Ψᵀ G = Σ_b (δ_b Ψ)ᵀ x_b                                      (l × d_in)

* grad_norm ``‖G‖_F``: the mean of two estimates of ‖G‖², both unbiased, built on a one-pass
  low-rank reconstruction Ĝ = Q X of G (Q = orth(Y), X = (ΨᵀQ)⁺ W; Tropp et al. 2017): the
  Hutchinson estimate ``‖Z‖²/k`` with Ĝ's as its control variate (Ĝ's exact value ‖X‖² is
  known), and ‖X‖² corrected by the energy outside Q, which both Z and W's least-squares residual
  measure (:meth:`SketchStatistics.grad_norm`). Plain Hutchinson's relative standard deviation on
  ‖G‖² is ``sqrt(2 Σσ_i⁴ / k) / Σσ_i²`` over G's singular values σ_i: at most ``sqrt(2/k)`` (rank
  1), ``sqrt(2/(k·ρ))`` for ρ equal ones. Ours stays at or below that bound and removes most of it
  when the energy sits in the top k directions, as gradient matrices' does: on known 192 × 256
  matrices of 160 singular values, k = 16, 200 draws: σ_i = 1/i 2.6% (plain 24%), 1/√i 4.9%
  (8.8%), flat 2.3% (2.7%), rank 1 exact (``tests/test_statistics.py`` checks bias and bound).
* the rank allocator's spectrum: the singular values of X (those of Ĝ), largest first.
* fisher ``Σ_b ‖G_b‖²_F``: each batch exactly as ``Σ_{n,m} (δ_n·δ_m)(x_n·x_m)`` from the two token
  Gram matrices when it has at most 4k tokens with a gradient (then no dearer than the sketches),
  else ``(‖G_b Ω‖² + ‖G_b Φ‖²) / 2k`` (unbiased; relative std ≤ sqrt(1/k) on ‖G_b‖²).
* snip's factor gradients, exactly: ``P = Σ_b G_b A_bᵀ = Σ_b δ_bᵀ (x_b A_bᵀ)`` (d_out × r) and
  ``Q = Σ_b B̃_bᵀ G_b = Σ_b (δ_b B̃_b)ᵀ x_b`` (r × d_in), with each batch's own A and B (or B's probe
  B̃ while B = 0): equal to G Aᵀ and B̃ᵀ G whenever the factors do not move within the window
  (extra scoring passes, disabled modules), and the factor gradients training actually saw otherwise.

Memory per candidate: (2k·d_out + (2k + 1)·d_in) floats (snip adds r·(d_out + d_in)); work per
batch of N tokens with a gradient about 4k·N·(d_in + d_out) multiply-adds against the N·d_in·d_out
of forming G_b. Tokens without a gradient (padding; in a classifier's last layer every token but
the pooled one) are dropped before the products when they are the majority.

``--scoring`` chooses the collector (:func:`make_statistics`): ``auto`` (the default) sketches each
candidate with the largest k ≤ ``--sketch-rank`` that keeps its statistics under
:data:`MEMORY_FRACTION` of its weight, and keeps the exact G of candidates too small for k ≥
:data:`MIN_SKETCH_RANK` (there the full G is small and cheap); ``sketch`` sketches every candidate
with k = ``--sketch-rank``; ``exact`` keeps the full G of every candidate, for checking.

Statistics are fp32 whatever the training precision (bf16 inputs are cast before the products).
"""
from __future__ import annotations

import math
import weakref
from abc import ABC, abstractmethod

import torch

from heterolora_core.adapters.modules import AdapterModule
from heterolora_core.vocab import DEFAULT_SKETCH_RANK, Scoring, choose

#: ``auto`` scoring keeps a candidate's statistics under this share of its weight's size ...
MEMORY_FRACTION = 0.04
#: ... and keeps the exact G of candidates that would get a sketch narrower than this.
MIN_SKETCH_RANK = 8


class ScoringStatistics(ABC):
    """Per-candidate statistics of the backward passes since the last :meth:`reset` (a
    :class:`~heterolora_core.adapters.modules.GradientSink`). ``calls[name]`` counts the batches
    a candidate saw."""

    def __init__(self, factors: bool = False, absolute: bool = False):
        self.factors = factors  # also gather snip's factor gradients
        self.absolute = absolute  # synflow: factors taken by absolute value
        self.calls: dict[str, int] = {}

    @abstractmethod
    def add(self, module: AdapterModule, grad: torch.Tensor, x: torch.Tensor) -> None:
        """One batch: grad (N, d_out) at the candidate's output, x (N, d_in) its inputs."""

    @abstractmethod
    def grad_norm(self, name: str) -> float:
        """‖G‖_F (estimated by the sketch)."""

    @abstractmethod
    def fisher(self, name: str) -> float:
        """Σ_b ‖G_b‖²_F."""

    @abstractmethod
    def factor_products(self, module: AdapterModule) -> tuple[torch.Tensor, torch.Tensor]:
        """(G Aᵀ, B̃ᵀ G): snip's factor gradients divided by the scaling s."""

    @abstractmethod
    def spectrum(self, name: str) -> torch.Tensor:
        """G's leading singular values, largest first (estimated by the sketch)."""

    @abstractmethod
    def directions(self, name: str, r: int) -> torch.Tensor:
        """G's top ``r`` right singular vectors (r × d_in, orthonormal rows; estimated by the sketch)."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor held, by a descriptive key (memory accounting, tests)."""

    def __len__(self) -> int:
        return len(self.calls)

    def __contains__(self, name: object) -> bool:
        return name in self.calls

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def reset(self) -> None:
        self.calls.clear()

    def _factors_of(self, module: AdapterModule, device) -> tuple[torch.Tensor, torch.Tensor]:
        A = module.lora_A.detach().float().to(device)
        B = module.effective_B().detach().float().to(device)
        return (A.abs(), B.abs()) if self.absolute else (A, B)


class ExactStatistics(ScoringStatistics):
    """The full G per candidate (``--scoring exact``): fisher adds each batch's ‖G_b‖²; snip
    multiplies G with the factors at scoring time."""

    def __init__(self, factors: bool = False, absolute: bool = False):
        super().__init__(factors, absolute)
        self.G: dict[str, torch.Tensor] = {}
        self._fisher: dict[str, float] = {}

    def add(self, module: AdapterModule, grad: torch.Tensor, x: torch.Tensor) -> None:
        with torch.no_grad():
            g_b = grad.float().transpose(0, 1) @ x.float()
            name = module.name
            self.G[name] = self.G[name] + g_b if name in self.G else g_b
            self._fisher[name] = self._fisher.get(name, 0.0) + float(g_b.pow(2).sum())
            self.calls[name] = self.calls.get(name, 0) + 1

    def grad_norm(self, name: str) -> float:
        return float(torch.linalg.matrix_norm(self.G[name]))

    def fisher(self, name: str) -> float:
        return self._fisher[name]

    def factor_products(self, module: AdapterModule) -> tuple[torch.Tensor, torch.Tensor]:
        G = self.G[module.name]
        A, B = self._factors_of(module, G.device)
        return G @ A.transpose(0, 1), B.transpose(0, 1) @ G

    def spectrum(self, name: str) -> torch.Tensor:
        return torch.linalg.svdvals(self.G[name])

    def directions(self, name: str, r: int) -> torch.Tensor:
        return torch.linalg.svd(self.G[name], full_matrices=False).Vh[:r]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"G:{name}": G for name, G in self.G.items()}

    def reset(self) -> None:
        super().reset()
        self.G.clear()
        self._fisher.clear()


class SketchStatistics(ScoringStatistics):
    """O((d_in + d_out)·k) statistics per candidate (see the module docstring).

    Args:
        rank: k, the sketches' width (capped at min(d_in, d_out) per candidate).
        seed: seeds Ω, Φ (one per d_in) and Ψ (one per d_out), per k and device.
        factors, absolute: as :class:`ScoringStatistics`.
    """

    def __init__(self, rank: int = DEFAULT_SKETCH_RANK, seed: int = 0, factors: bool = False, absolute: bool = False):
        super().__init__(factors, absolute)
        self.rank = int(rank)
        self.seed = int(seed)
        self.YZ: dict[str, torch.Tensor] = {}  # [Y | Z]ᵀ = [Ω | Φ]ᵀ Gᵀ, (2k, d_out)
        self.W: dict[str, torch.Tensor] = {}  # (l, d_in)
        self.P: dict[str, torch.Tensor] = {}
        self.Q: dict[str, torch.Tensor] = {}
        self._fisher: dict[str, float] = {}
        self._tests: dict[tuple[str, int, int, str], torch.Tensor] = {}
        self._shape_of: dict[str, tuple[int, int, str]] = {}  # candidate -> (d_in, d_out, device)
        self._last_input: tuple[tuple, weakref.ref, torch.Tensor] | None = None  # (key, owner of x, x [Ω | Φ])

    def width(self, module: AdapterModule) -> int:
        """k for this candidate: ``rank`` capped at min(d_in, d_out)."""
        return max(1, min(self.rank, module.d_in, module.d_out))

    def test_matrix(self, side: str, dim: int, k: int, device) -> torch.Tensor:
        """[Ω | Φ] (dim × 2k) for ``side="in"``, Ψ (dim × (2k + 1)) for ``"out"``: N(0, 1), fp32,
        one per (side, dim, k), so candidates that read the same input (q, k and v; gate and up)
        share Ω and Φ, and with them the product x [Ω | Φ]."""
        key = (side, dim, k, str(device))
        if key not in self._tests:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + dim * 7919 + k * 31 + (side == "out")) & 0x7FFFFFFF)
            cols = 2 * k + (side == "out")
            self._tests[key] = torch.randn(dim, cols, generator=gen).to(device)
        return self._tests[key]

    def test_matrices(self, module: AdapterModule, device) -> tuple[torch.Tensor, torch.Tensor]:
        """([Ω | Φ] (d_in × 2k), Ψ (d_out × (2k + 1))) of a candidate."""
        k = self.width(module)
        self._shape_of[module.name] = (module.d_in, module.d_out, str(device))
        return self.test_matrix("in", module.d_in, k, device), self.test_matrix("out", module.d_out, k, device)

    def _sketched_input(self, x: torch.Tensor, omega_phi: torch.Tensor) -> torch.Tensor:
        """x [Ω | Φ] (N × 2k) in fp32, reused while consecutive candidates hand over the same input
        (the backward pass reaches q, k and v, and gate and up, one after another). Only a weak
        reference to x's storage owner is kept (no activation outlives its backward pass); while
        that owner lives its memory cannot be reused, and ``_version`` catches in-place writes."""
        owner = x._base if x._base is not None else x
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x._version, omega_phi.data_ptr())
        cached = self._last_input
        if cached is not None and cached[0] == key and cached[1]() is owner:
            return cached[2]
        product = x.float() @ omega_phi
        self._last_input = (key, weakref.ref(owner), product)
        return product

    def add(self, module: AdapterModule, grad: torch.Tensor, x: torch.Tensor) -> None:
        with torch.no_grad():
            g, xf = grad.float(), x.float()
            omega_phi, psi = self.test_matrices(module, g.device)
            g_psi = g @ psi  # (N, l)
            x_sketch = self._sketched_input(x, omega_phi)  # (N, 2k) = x [Ω | Φ]
            # Tokens without a gradient (padding; in a classifier's last layer every token but the
            # pooled one) are zero rows of g and add nothing to any statistic. A zero row of g Ψ
            # marks them: a nonzero row of g meets Gaussian Ψ in a zero row with probability 0.
            live = g_psi.any(dim=1)
            n_live = int(live.sum())
            if 2 * n_live <= g.shape[0]:  # mostly dead: the products run on the live rows alone
                g, xf, g_psi, x_sketch = g[live], xf[live], g_psi[live], x_sketch[live]
            # (2k, d_out) = (G_b [Ω | Φ])ᵀ; G_b never formed. This orientation reads g row by row,
            # about twice as fast on the CPU as g.T @ x [Ω | Φ].
            yz_b = x_sketch.transpose(0, 1) @ g
            w_b = g_psi.transpose(0, 1) @ xf  # (l, d_in) = Ψᵀ G_b
            name = module.name
            _accumulate(self.YZ, name, yz_b)
            _accumulate(self.W, name, w_b)
            self._fisher[name] = self._fisher.get(name, 0.0) + self._batch_fisher(g, xf, live, n_live, yz_b)
            if self.factors:
                A, B = self._factors_of(module, g.device)
                _accumulate(self.P, name, g.transpose(0, 1) @ (xf @ A.transpose(0, 1)))
                _accumulate(self.Q, name, (g @ B).transpose(0, 1) @ xf)
            self.calls[name] = self.calls.get(name, 0) + 1

    @staticmethod
    def _batch_fisher(g: torch.Tensor, x: torch.Tensor, live: torch.Tensor, n_live: int, yz_b: torch.Tensor) -> float:
        """‖G_b‖²: exact from the Gram matrices of the ``n_live`` tokens with a gradient when there
        are at most 4k of them (then no dearer than the sketches), else the sketches' estimate
        ‖G_b [Ω | Φ]‖² / 2k. ``g`` and ``x`` hold either every row or the live ones alone."""
        if n_live <= 2 * yz_b.shape[0]:
            if g.shape[0] != n_live:
                g, x = g[live], x[live]
            return float(gram_fisher(g, x))
        return float(torch.linalg.vector_norm(yz_b)) ** 2 / yz_b.shape[0]

    def _solve(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, A, X, Z, Φ): Q = orth(Y) (d_out × k), A = ΨᵀQ (l × k), X = A⁺W (k × d_in; Ĝ = Q X is
        never formed), Z = G Φ (d_out × k) and Φ."""
        YZ = self.YZ[name].transpose(0, 1)  # (d_out, 2k) = [Y | Z]
        k = YZ.shape[1] // 2
        d_in, d_out, device = self._shape_of[name]
        omega_phi, psi = self._tests[("in", d_in, k, device)], self._tests[("out", d_out, k, device)]
        Q, _ = torch.linalg.qr(YZ[:, :k])
        A = psi.transpose(0, 1) @ Q
        X = torch.linalg.lstsq(A, self.W[name]).solution
        return Q, A, X, YZ[:, k:], omega_phi[:, k:]

    def reconstruction(self, name: str) -> torch.Tensor:
        """X (k × d_in): Ĝ = Q X, G's one-pass rank-k reconstruction (Tropp et al. 2017)."""
        return self._solve(name)[2]

    def grad_norm(self, name: str) -> float:
        """sqrt of the mean of two estimates of ‖G‖², each unbiased given Q (Φ and Ψ are
        independent of Ω, so of Q):

        * control variate: ``mean_i a_i − β (mean_i b_i − ‖X‖²)`` with a_i = ‖G φ_i‖², b_i =
          ‖Ĝ φ_i‖² over Φ's k columns: plain Hutchinson with Ĝ's as its control variate, β the
          sample-optimal weight clamped to [0, 1];
        * co-range: ``‖X‖² + (1 − ‖A⁺‖²_F) r`` with r the residual energy ‖(I − QQᵀ) G‖², pooled from
          ‖(I − QQᵀ) Z‖² (k degrees of freedom) and the least-squares residual ‖W − A X‖²
          (l − k): X = QᵀG + A⁺Ψᵀ(I − QQᵀ)G, whose second term adds ‖A⁺‖²_F r on average.

        Averaged, they use both sketches' probes of the part of G outside Q: on the embedded
        model's MRPC windows the median relative error of ‖G‖ falls from 0.48% (control variate
        alone) to 0.34%, the largest from 5.8% to 3.8% (k = 32, 5 draws)."""
        Q, A, X, Z, phi = self._solve(name)
        a, b = Z.pow(2).sum(0), (X @ phi).pow(2).sum(0)
        var_b = float(b.var()) if b.numel() > 1 else 0.0
        cov = float(((a - a.mean()) * (b - b.mean())).sum()) / max(1, a.numel() - 1)
        beta = min(1.0, max(0.0, cov / var_b)) if var_b > 0 else 1.0
        x_energy = float(X.pow(2).sum())
        controlled = float(a.mean()) - beta * (float(b.mean()) - x_energy)
        residual_z = float((Z - Q @ (Q.transpose(0, 1) @ Z)).pow(2).sum())
        residual_w = float((self.W[name] - A @ X).pow(2).sum())
        residual = (residual_z + residual_w) / A.shape[0]  # k + (l − k) = l degrees of freedom
        co_range = x_energy + (1.0 - float(torch.linalg.svdvals(A).pow(-2).sum())) * residual
        return math.sqrt(max(0.5 * (controlled + co_range), 0.0))

    def fisher(self, name: str) -> float:
        return self._fisher[name]

    def factor_products(self, module: AdapterModule) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.factors:
            raise ValueError("these statistics were gathered without snip's factor gradients")
        return self.P[module.name], self.Q[module.name]

    def spectrum(self, name: str) -> torch.Tensor:
        return torch.linalg.svdvals(self.reconstruction(name))

    def directions(self, name: str, r: int) -> torch.Tensor:
        return torch.linalg.svd(self.reconstruction(name), full_matrices=False).Vh[:r]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"YZ:{n}": t for n, t in self.YZ.items()}
        out.update({f"W:{n}": t for n, t in self.W.items()})
        out.update({f"P:{n}": t for n, t in self.P.items()})
        out.update({f"Q:{n}": t for n, t in self.Q.items()})
        for (side, dim, k, dev), matrix in self._tests.items():
            out[f"{'omega_phi' if side == 'in' else 'psi'}:{dim}:k{k}:{dev}"] = matrix
        return out

    def reset(self) -> None:
        super().reset()
        self._last_input = None
        for stats in (self.YZ, self.W, self.P, self.Q, self._fisher):
            stats.clear()


class AutoStatistics(ScoringStatistics):
    """Per candidate, the sketch with the largest k <= ``rank`` whose statistics stay under
    :data:`MEMORY_FRACTION` of the candidate's weight, or the exact G when that k would be below
    :data:`MIN_SKETCH_RANK` (a small weight: its full G is small and cheap)."""

    def __init__(self, rank: int = DEFAULT_SKETCH_RANK, seed: int = 0, factors: bool = False, absolute: bool = False):
        super().__init__(factors, absolute)
        self.rank = int(rank)
        self.exact = ExactStatistics(factors, absolute)
        self.sketches: dict[int, SketchStatistics] = {}
        self.seed = seed
        self._route: dict[str, ScoringStatistics] = {}

    def collector_for(self, module: AdapterModule) -> ScoringStatistics:
        if module.name not in self._route:
            k = auto_sketch_rank(module.d_in, module.d_out, self.rank)
            if k is None:
                self._route[module.name] = self.exact
            else:
                if k not in self.sketches:
                    self.sketches[k] = SketchStatistics(k, self.seed, self.factors, self.absolute)
                self._route[module.name] = self.sketches[k]
        return self._route[module.name]

    def add(self, module: AdapterModule, grad: torch.Tensor, x: torch.Tensor) -> None:
        self.collector_for(module).add(module, grad, x)
        self.calls[module.name] = self.calls.get(module.name, 0) + 1

    def grad_norm(self, name: str) -> float:
        return self._route[name].grad_norm(name)

    def fisher(self, name: str) -> float:
        return self._route[name].fisher(name)

    def factor_products(self, module: AdapterModule) -> tuple[torch.Tensor, torch.Tensor]:
        return self._route[module.name].factor_products(module)

    def spectrum(self, name: str) -> torch.Tensor:
        return self._route[name].spectrum(name)

    def directions(self, name: str, r: int) -> torch.Tensor:
        return self._route[name].directions(name, r)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = dict(self.exact.tensors())
        for sketch in self.sketches.values():
            out.update(sketch.tensors())
        return out

    def reset(self) -> None:
        super().reset()
        self.exact.reset()
        for sketch in self.sketches.values():
            sketch.reset()


def auto_sketch_rank(d_in: int, d_out: int, rank: int = DEFAULT_SKETCH_RANK) -> int | None:
    """The k ``auto`` scoring sketches a d_in -> d_out candidate with: the largest k <= ``rank``
    with (2k·d_out + (2k + 1)·d_in) <= MEMORY_FRACTION · d_in·d_out; None (exact) below
    MIN_SKETCH_RANK."""
    k = int((MEMORY_FRACTION * d_in * d_out - d_in) // (2 * (d_in + d_out)))
    k = min(k, rank, d_in, d_out)
    return k if k >= MIN_SKETCH_RANK else None


def _accumulate(store: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    """``store[name] += value`` in place (the first value, a fresh product, is kept as it is)."""
    if name in store:
        store[name].add_(value)
    else:
        store[name] = value


def gram_fisher(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """‖δᵀx‖²_F = Σ_{n,m} (δ_n·δ_m)(x_n·x_m) from the (N, N) token Gram matrices: exact, and
    N²·(d_in + d_out) work instead of the N·d_in·d_out of forming δᵀx."""
    return ((grad @ grad.transpose(0, 1)) * (x @ x.transpose(0, 1))).sum()


def make_statistics(scoring: str = Scoring.AUTO, rank: int = DEFAULT_SKETCH_RANK, seed: int = 0,
                    factors: bool = False, absolute: bool = False) -> ScoringStatistics:
    """The collector ``scoring`` names: ``auto`` (default), ``sketch`` or ``exact``."""
    scoring = choose(Scoring, scoring, "scoring")
    if scoring is Scoring.EXACT:
        return ExactStatistics(factors, absolute)
    if scoring is Scoring.SKETCH:
        return SketchStatistics(rank, seed, factors, absolute)
    return AutoStatistics(rank, seed, factors, absolute)
