"""prune_lowest_sharded: each rank's piece of the single-process masks, bitwise (ranks run as threads here)."""

from __future__ import annotations

import threading
from typing import Callable

import pytest
import torch
from torch import Tensor

from torch_lottery.distributed import ProcessGroupCollective
from torch_lottery.selection import _prune_lowest_reference, prune_lowest
from torch_lottery.sharded_selection import prune_lowest_sharded


class ThreadCollective:
    """``world_size`` ranks as threads of one process: sums and gathers through a shared table and a barrier."""

    def __init__(self, rank: int, shared: dict, barrier: threading.Barrier, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self._shared, self._barrier = shared, barrier
        self.calls: list[tuple[str, int]] = []  # (operation, bytes sent)

    def _exchange(self, tensor: Tensor) -> list[Tensor]:
        self._barrier.wait()
        self._shared[self.rank] = tensor.clone()
        self._barrier.wait()
        out = [self._shared[r] for r in range(self.world_size)]
        self._barrier.wait()
        return out

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        self.calls.append(("all_reduce", tensor.numel() * tensor.element_size()))
        return torch.stack(self._exchange(tensor)).sum(0)

    def all_gather(self, tensor: Tensor) -> Tensor:
        self.calls.append(("all_gather", tensor.numel() * tensor.element_size()))
        return torch.stack(self._exchange(tensor))


def run_ranks(world: int, fn: Callable[[ThreadCollective], object]) -> list[object]:
    """Run ``fn(comm)`` on ``world`` thread ranks; return the results in rank order (re-raising a rank's error)."""
    barrier, shared = threading.Barrier(world), {}
    results: list[object] = [None] * world
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadCollective(rank, shared, barrier, world))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def shard_rows(t: Tensor, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s Shard(0) piece, as fully_shard cuts it (torch.chunk; trailing ranks may be empty)."""
    per = -(-t.shape[0] // world)
    start = min(rank * per, t.shape[0])
    return t[start : min(start + per, t.shape[0])]


def sharded_run(scores: dict, masks: dict, n: int, world: int, *, replicated=frozenset(), chunk: int = 1 << 18) -> dict:
    """The full masks put back together from every rank's prune_lowest_sharded result."""

    def body(comm: ThreadCollective) -> dict:
        local_s = {k: v if k in replicated else shard_rows(v, comm.rank, world) for k, v in scores.items()}
        local_m = {k: v if k in replicated else shard_rows(v, comm.rank, world) for k, v in masks.items()}
        return prune_lowest_sharded(local_s, local_m, n, comm=comm, replicated=replicated, chunk=chunk)

    pieces = run_ranks(world, body)
    out = {}
    for k in scores:
        if k in replicated:
            for p in pieces:  # every rank computes the whole replicated mask, the same
                assert torch.equal(p[k], pieces[0][k])
            out[k] = pieces[0][k]
        else:
            out[k] = torch.cat([p[k] for p in pieces])
    return out


def test_hand_computed_ties_across_ranks() -> None:
    # rows [1,1], [1,0], [0,1] over 2 ranks: rank 0 holds rows 0-1, rank 1 row 2. Scores have 4 ties at 1.0
    scores = {"w": torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.5, 1.0]])}
    masks = {"w": torch.ones(3, 2, dtype=torch.bool)}
    # prune 4: 0.0 and 0.5 first, then the first two 1.0s in flat order: (0,0) and (0,1), both on rank 0
    got = sharded_run(scores, masks, 4, 2)
    assert got["w"].tolist() == [[False, False], [True, False], [False, True]]
    # prune 5: the third tie (1,0) is on rank 0 too; 6 prunes the last tie, (2,1), on rank 1
    assert sharded_run(scores, masks, 5, 2)["w"].tolist() == [[False, False], [False, False], [False, True]]
    assert sharded_run(scores, masks, 6, 2)["w"].sum() == 0


def test_ties_continue_from_one_tensor_to_the_next_rank_by_rank() -> None:
    # every score ties: the first n entries in the global order (a's rank 0, a's rank 1, b's rank 0, ...) go
    scores = {"a": torch.zeros(3, 1), "b": torch.zeros(4)}
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}
    got = sharded_run(scores, masks, 5, 2)
    assert got["a"].flatten().tolist() == [False, False, False]
    assert got["b"].tolist() == [False, False, True, True]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_equals_single_process_on_random_cases(world: int) -> None:
    g = torch.Generator().manual_seed(world)
    for case in range(12):
        shapes = [(int(torch.randint(1, 9, (1,), generator=g)), 3), (5,), (int(torch.randint(1, 4, (1,), generator=g)), 2, 2)]
        scores, masks = {}, {}
        for i, shape in enumerate(shapes):
            s = torch.randint(-3, 4, shape, generator=g).float()  # many ties
            if case % 3 == 0:
                s.view(-1)[0] = float("nan")
                s.view(-1)[-1] = -0.0
            if case % 4 == 1:
                s = s.double() / 7
            scores[f"t{i}"] = s
            masks[f"t{i}"] = torch.rand(shape, generator=g) > 0.3
        survivors = sum(int(m.sum()) for m in masks.values())
        for n in sorted({0, 1, survivors // 3, survivors // 2, survivors - 1, survivors}):
            if n < 0:
                continue
            expected = _prune_lowest_reference(scores, masks, n)
            got = sharded_run(scores, masks, n, world, chunk=4)  # tiny chunks: ties split across chunks too
            for k in scores:
                assert torch.equal(got[k], expected[k]), (case, n, k)


def test_replicated_tensors_count_once() -> None:
    g = torch.Generator().manual_seed(3)
    scores = {"a": torch.randint(0, 3, (5, 2), generator=g).float(), "r": torch.randint(0, 3, (4,), generator=g).float(),
              "b": torch.randint(0, 3, (3,), generator=g).float()}
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}
    for n in [*range(0, 17, 3), 17]:
        expected = prune_lowest(scores, masks, n)
        got = sharded_run(scores, masks, n, 3, replicated={"r"})
        for k in scores:
            assert torch.equal(got[k], expected[k]), (n, k)


def test_communication_per_call() -> None:
    scores = {"a": torch.randn(40, 3), "b": torch.randn(7)}
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}

    def body(comm: ThreadCollective) -> list:
        prune_lowest_sharded({k: shard_rows(v, comm.rank, 2) for k, v in scores.items()},
                             {k: shard_rows(v, comm.rank, 2) for k, v in masks.items()}, 50, comm=comm)
        return comm.calls

    calls = run_ranks(2, body)[0]
    # survivor counts, one 65,536-bin int64 histogram per 16-bit digit of a float32 key, the tie counts
    assert calls == [("all_reduce", 16), ("all_reduce", 65536 * 8), ("all_reduce", 65536 * 8), ("all_gather", 16)]


def test_errors_are_the_same_on_every_rank() -> None:
    scores = {"a": torch.randn(4)}
    masks = {"a": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"n=5 is outside \[0, 4\]"):
        sharded_run(scores, masks, 5, 2)
    with pytest.raises(TypeError, match="n=1.5 is not an integer"):
        prune_lowest_sharded(scores, masks, 1.5, comm=ProcessGroupCollective())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different keys"):
        prune_lowest_sharded(scores, {"b": masks["a"]}, 1, comm=ProcessGroupCollective())
    with pytest.raises(ValueError, match="replicated=\\['z'\\] names no scored tensor"):
        prune_lowest_sharded(scores, masks, 1, comm=ProcessGroupCollective(), replicated={"z"})
