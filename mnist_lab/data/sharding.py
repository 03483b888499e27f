"""How a distributed job splits each global batch between its ranks (engine/distributed.py)."""


def rank_slice(start: int, stop: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous part of the global batch [start, stop): sizes differ by at most
    one, lower ranks take the extra items (as torch.tensor_split does)."""
    base, extra = divmod(stop - start, world_size)
    low = start + rank * base + min(rank, extra)
    return slice(low, low + base + (1 if rank < extra else 0))


def sharded_batches(n: int, batch_size: int, world_size: int) -> int:
    """Global batches in an epoch of `n` items when every rank needs at least one item of each:
    a last batch smaller than the world size is dropped (at most world_size - 1 items)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world_size else 0)
