"""A shard: this process's part of a streamed scan (static sharding by chunk number)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from memlens.core.errors import InputError


@dataclass(frozen=True)
class Shard:
    """Part ``rank`` of ``world``: the chunks whose number is ``rank`` modulo ``world``."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise InputError(f"shard {self.rank}/{self.world}: need 0 <= k < N (e.g. --shard 0/4)")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"k/N"``, or ``"auto"``: the rank and world size of torchrun (``RANK``,
        ``WORLD_SIZE``) or SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``)."""
        if text == "auto":
            found = cls.from_env()
            if found is None:
                raise InputError("--shard auto: no RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS (SLURM) in "
                                 "the environment; give --shard k/N")
            return found
        try:
            k, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise InputError(f"--shard {text!r}: write k/N (this process's part k of N, from 0), or auto") from None
        return cls(k, n)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Shard | None":
        """The shard torchrun or SLURM gives this process, or None outside them."""
        env = dict(os.environ) if env is None else env
        for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
            if rank in env and world in env:
                try:
                    k, n = int(env[rank]), int(env[world])
                except ValueError:
                    raise InputError(f"{rank}={env[rank]!r}, {world}={env[world]!r}: not integers") from None
                if n < 1 or not 0 <= k < n:
                    raise InputError(f"{rank}={k}, {world}={n}: the rank must be from 0 to {world} - 1; check the "
                                     "launcher's environment (or give --shard k/N)")
                return cls(k, n)
        return None

    def owns(self, chunk: int) -> bool:
        return chunk % self.world == self.rank

    @property
    def tag(self) -> str:
        return f"shard-{self.rank}-of-{self.world}"

    def output_path(self, out: Path) -> Path:
        """``scan.parquet`` -> ``scan.shard-1-of-4.parquet`` (unchanged for a single shard or a
        name that already says which shard it is)."""
        if self.world == 1 or self.tag in out.name:
            return out
        return out.with_name(f"{out.stem}.{self.tag}{out.suffix}")
