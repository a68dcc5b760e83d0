"""Counters of what the cache really did: transformer calls, skipped blocks, delta memory.

Kept apart from the per-generation cache state on purpose: diffusers pipelines reset stateful hooks at
the end of every call, and the statistics must survive that so a front end can report them afterwards.
They accumulate until `reset()` (the handle's `reset_stats()`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class _BranchCounters:
    calls: int = 0
    total_block_evals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped_block_evals: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class DeltaCacheStats:
    def __init__(self, block_list_depths: dict[str, int]):
        self._depths = dict(block_list_depths)
        self.reset()

    @property
    def block_list_depths(self) -> dict[str, int]:
        return dict(self._depths)

    def reset(self) -> None:
        self._branches: dict[str, _BranchCounters] = {}
        self.delta_bytes_peak = 0

    def record_call(self, branch: str) -> None:
        """One transformer forward in `branch`: every block of every list is due once."""
        counters = self._branches.setdefault(branch, _BranchCounters())
        counters.calls += 1
        for list_name, depth in self._depths.items():
            counters.total_block_evals[list_name] += depth

    def record_skip(self, branch: str, list_name: str) -> None:
        """A block hook returned without running its block."""
        self._branches[branch].skipped_block_evals[list_name] += 1

    def record_delta_bytes(self, nbytes: int) -> None:
        self.delta_bytes_peak = max(self.delta_bytes_peak, nbytes)

    def as_dict(self) -> dict:
        branches = {}
        for name, c in self._branches.items():
            total = sum(c.total_block_evals.values())
            computed = total - sum(c.skipped_block_evals.values())
            branches[name] = {
                "calls": c.calls,
                "computed_block_evals": computed,
                "total_block_evals": total,
                "block_lists": {
                    list_name: {
                        "computed_block_evals": c.total_block_evals[list_name] - c.skipped_block_evals[list_name],
                        "total_block_evals": c.total_block_evals[list_name],
                    }
                    for list_name in self._depths
                },
            }
        computed = sum(b["computed_block_evals"] for b in branches.values())
        total = sum(b["total_block_evals"] for b in branches.values())
        return {
            "computed_block_evals": computed,
            "total_block_evals": total,
            "ideal_speedup": (total / computed) if computed else 1.0,
            "delta_memory_bytes": self.delta_bytes_peak,
            "branches": branches,
        }
