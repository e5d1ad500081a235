"""Which rows share a batch: `random`, or `families` (the two sides of a minimal pair together).

A contrastive loss learns from the other rows of the batch as much as from a row's own
negative. foil's text negatives often turn a caption into another caption of the dataset
("man: light skin tone" into "man: dark skin tone", "red apple" into "green apple"); the real
image of that caption is then the hardest negative the data holds, and a random batch of 64
out of thousands of rows almost never contains it.

`families` links a row to every row whose caption is its negative caption, compared as token
rows (the tokenizer already lowercased them and cleaned their whitespace), joins the links
into families (union-find, at most `MAX_FAMILY` rows each, so that one long chain of edits
cannot fill a batch), and fills each batch with whole families taken in a random order; a
family that does not fit the room left waits for the next batch while smaller ones fill it
(split only when more than a batch's worth of families wait, or at the end of the epoch).
A batch holds each caption once (CLIP's loss would otherwise count a row's twin as its
negative), so a family with a repeated caption, or one that shares a caption with the batch,
is split or waits likewise. An epoch visits every row at most once; what is left when no full
batch can be made is dropped, as `random` drops its last partial batch.

Both work on decoded arrays (`training.data.BatchDecoder`'s `text` and `negative_text`), so the
in-process loop and Ray Train's workers batch the same way.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from training.config import BATCHING

MAX_FAMILY = 16  # rows per family at most: a quarter of foil-tiny-vit's batch of 64


def families(arrays: dict[str, np.ndarray], max_family: int = MAX_FAMILY) -> list[np.ndarray]:
    """Row indices of decoded `arrays` grouped into families: rows linked when one's negative
    caption is the other's caption (`text`, `negative_text`: [N, ctx] token ids; `has_negative`: [N])."""
    text, negative_text, has_negative = arrays["text"], arrays["negative_text"], arrays["has_negative"]
    n = len(text)
    parent = np.arange(n)
    size = np.ones(n, dtype=np.int64)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[bytes, int] = {}
    for i in range(n):
        first.setdefault(text[i].tobytes(), i)
    for i in np.flatnonzero(has_negative):
        j = first.get(negative_text[i].tobytes())
        if j is None:
            continue
        a, b = root(int(i)), root(j)
        if a != b and size[a] + size[b] <= max_family:
            parent[b] = a
            size[a] += size[b]
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [np.array(g) for g in groups.values()]


def _units(keys: list[bytes], group: np.ndarray, batch_size: int) -> list[list[int]]:
    """A family's rows as units that can share one batch: a caption once each (a repeated
    caption starts another unit), at most `batch_size` rows. `keys`: each row's caption tokens."""
    units: list[list[int]] = []
    for i in group.tolist():
        home = next((u for u in units if len(u) < batch_size and all(keys[j] != keys[i] for j in u)), None)
        if home is None:
            units.append([i])
        else:
            home.append(i)
    return units


def family_batches(text: np.ndarray, groups: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch of `batch_size` row indices each: families in a random order, a family that
    does not fit the batch being filled (or shares a caption with it) held for the next one.
    When more than `batch_size` families wait, or none are left to come, the waiting ones are
    split to fill the room."""
    keys = [row.tobytes() for row in text]  # a row's caption, compared as its tokens
    batch: list[int] = []
    seen: set[bytes] = set()
    held: list[list[int]] = []

    def place(unit: list[int], hold: bool = True) -> bool:
        if len(batch) + len(unit) > batch_size or any(keys[i] in seen for i in unit):
            if hold:
                held.append(unit)
            return False
        batch.extend(unit)
        seen.update(keys[i] for i in unit)
        return True

    def squeeze() -> None:
        nonlocal held
        waiting, held = held, []
        for unit in waiting:
            rest = [i for i in unit if not place([i], hold=False)]
            if rest:
                held.append(rest)

    def full() -> Iterator[np.ndarray]:
        nonlocal batch, seen, held
        while len(batch) == batch_size:
            yield np.array(batch)
            batch, seen, waiting, held = [], set(), held, []
            for unit in waiting:  # what was held starts the next batch
                place(unit)

    for g in rng.permutation(len(groups)):
        members = groups[g][rng.permutation(len(groups[g]))]
        for unit in _units(keys, members, batch_size):
            place(unit)
            if len(held) > batch_size:
                squeeze()
            yield from full()
    while held:
        squeeze()
        if len(batch) < batch_size:
            return
        yield from full()


def epoch_batches(arrays: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator, batching: str,
                  groups: list[np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """One epoch over decoded `arrays` as index arrays of `batch_size` rows. `groups`: the
    arrays' families when already computed (they do not change between epochs)."""
    n = len(arrays["text"])
    if batching == "random":
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
        return
    if batching != "families":
        raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
    if groups is None:
        groups = families(arrays)
    yield from family_batches(arrays["text"], groups, batch_size, rng)
