"""Limited-memory BFGS inverse-Hessian products for a batch of independent problems.

The two-loop recursion (Nocedal and Wright, Numerical Optimization, Algorithm 7.4), run on every
problem of the batch at once: one batched vector operation per stored pair and step of each loop.
The initial inverse Hessian is γ·diag(h): h shared by the batch (the solver's metric, diagonal in
its basis), γ per problem, the usual sᵀy / yᵀhy of the newest pair.

A pair that fails the curvature test (sᵀy not clearly positive: a problem that did not move, or
rounding) gets ρ = 0, which makes it inert, so every problem of the batch shares one memory.

(The compact representation of Byrd, Nocedal and Schnabel does the same with a few batched
matrix products on the stacked pairs; with torch's batched products on (batch, 8, d) operands it
measured 2–7 times slower than this recursion on CPU, so it is not used.)
"""

from __future__ import annotations

import torch


class BatchedLBFGS:
    """Curvature pairs of ``batch`` problems in dimension d; ``inverse_metric`` (d,) is h."""

    def __init__(self, inverse_metric: torch.Tensor, batch: int, memory: int):
        self.h = inverse_metric
        self.memory = memory
        self.gamma = torch.ones(batch, dtype=inverse_metric.dtype, device=inverse_metric.device)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, ρ = 1/sᵀy), oldest first

    def reset(self) -> None:
        """Forget every pair (H = diag(h))."""
        self.gamma.fill_(1.0)
        self.pairs.clear()

    def select(self, keep: torch.Tensor) -> None:
        """Keep the problems at positions ``keep`` (the others are done)."""
        self.gamma = self.gamma[keep]
        self.pairs = [(s[keep], y[keep], rho[keep]) for s, y, rho in self.pairs]

    def update(self, s: torch.Tensor, y: torch.Tensor) -> None:
        """Store the newest pair (B, d) of every problem, dropping the oldest beyond ``memory``."""
        if not self.memory:
            return
        sy = torch.linalg.vecdot(s, y)
        ok = sy > 1e-12 * s.norm(dim=1) * y.norm(dim=1)
        rho = torch.where(ok, 1.0 / sy, torch.zeros_like(sy))
        self.pairs.append((s, y, rho))
        del self.pairs[:-self.memory]
        yhy = torch.linalg.vecdot(y, y * self.h)
        self.gamma = torch.where(ok & (yhy > 0), sy / yhy, self.gamma)

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """H·g (B, d) for every problem."""
        q, coefs = g.clone(), []
        for s, y, rho in reversed(self.pairs):
            a = rho * torch.linalg.vecdot(s, q)
            q.addcmul_(a[:, None], y, value=-1.0)
            coefs.append(a)
        r = q.mul_(self.h).mul_(self.gamma[:, None])
        for (s, y, rho), a in zip(self.pairs, reversed(coefs)):
            r.addcmul_(s, (a - rho * torch.linalg.vecdot(y, r))[:, None])
        return r
