"""The ladder's grid search (`engine.model.ladder.find`) against NumPy's `searchsorted`.

The search must give the exact first position where the test fails, for any key: below, above
and between a group's keys and exactly on them, on clustered and tied keys, from any floor and
up to any ceiling; and where more than `WINDOW` candidates lie in its cells it must say so
rather than guess.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.model import ladder


def grid_ladder(groups: list[np.ndarray], cells: int) -> ladder.Ladder:
    """A ladder of one asset holding only what `find` reads: groups of sorted keys (float32)."""
    u = np.concatenate(groups).astype(np.float32)
    sizes = np.array([len(g) for g in groups])
    end = np.cumsum(sizes).astype(np.int32)
    start = (end - sizes).astype(np.int32)
    grid, u_lo, per_usd = jax.jit(ladder._grid, static_argnums=3)(jnp.asarray(u), start, end, cells)
    fields = dict.fromkeys(ladder.Ladder._fields)
    fields.update(
        u=u[None], grid=grid[None], u_lo=u_lo[None], per_usd=per_usd[None], start=start[None], end=end[None]
    )
    return ladder.Ladder(**fields)


def search(lad: ladder.Ladder, x: np.ndarray, floor: np.ndarray, ceiling: np.ndarray):
    """`find` of the test `u <= x` per group, for a batch of keys x `[n, groups]`."""
    one = lambda x, f, c: ladder.find(lad, lambda u: u <= x[..., None], x, f, c)
    return jax.jit(jax.vmap(one))(x[:, None, :], floor[:, None, :], ceiling[:, None, :])


def keys_around(groups, rng, n: int) -> np.ndarray:
    """n keys per group `[n, groups]`: exactly on the group's keys, next to them in the last
    place, between them, and beyond both ends."""
    cols = []
    for g in groups:
        g32 = g.astype(np.float32)
        on = rng.choice(g32, n // 4)
        nudged = np.nextafter(rng.choice(g32, n // 4), rng.choice([-np.inf, np.inf], n // 4)).astype(
            np.float32
        )
        inside = rng.uniform(g32[0], g32[-1], n // 4).astype(np.float32)
        outside = np.concatenate(
            [g32[0] - rng.uniform(0, 100, n // 8), g32[-1] + rng.uniform(0, 100, n - 7 * (n // 8))]
        )
        cols.append(np.concatenate([on, nudged, inside, outside.astype(np.float32)]))
    return np.stack(cols, -1)


def test_find_is_exact_on_a_lognormal_book():
    """Keys like a book's liquidation prices (dense near the price, sparse in the tails): every
    search is sure and equals `searchsorted`, from any floor."""
    rng = np.random.default_rng(5)
    groups = [np.sort(-1e5 * np.exp(rng.normal(0, 0.1, n))).astype(np.float32) for n in (3000, 700, 1)]
    lad = grid_ladder(groups, cells=2 ** int(np.ceil(np.log2(8 * 3000))))
    x = keys_around(groups, rng, 4000)
    start, end = lad.start[0], lad.end[0]
    floor = (start + rng.integers(0, end - start + 1, x.shape)).astype(np.int32)
    pos, unsure = search(lad, x, floor, np.broadcast_to(end, x.shape).astype(np.int32))
    want = np.stack(
        [s + np.searchsorted(g, x[:, i], side="right") for i, (s, g) in enumerate(zip(start, groups))], -1
    )
    assert not np.any(unsure)
    np.testing.assert_array_equal(np.asarray(pos)[:, 0], np.maximum(want, floor))


@pytest.mark.parametrize("ties", [5, 40])
def test_find_flags_crowded_cells_and_nothing_else(ties):
    """A group with `ties` equal keys among spread ones: searches far from the tie are sure and
    exact; searches at the tie are exact when it fits the window and flagged when it does not;
    a flagged answer is never used where it matters (a ceiling below the tie hides it)."""
    rng = np.random.default_rng(ties)
    spread = np.sort(rng.uniform(0.0, 1000.0, 200))
    group = np.sort(np.concatenate([spread, np.full(ties, 500.0)])).astype(np.float32)
    lad = grid_ladder([group], cells=2 ** int(np.ceil(np.log2(8 * len(group)))))
    x = keys_around([group], rng, 2000)
    x[:50, 0] = 500.0
    floor = np.zeros(x.shape, np.int32)
    ceiling = np.full(x.shape, len(group), np.int32)
    pos, unsure = search(lad, x, floor, ceiling)
    pos, unsure = np.asarray(pos)[:, 0, 0], np.asarray(unsure)[:, 0, 0]
    want = np.searchsorted(group, x[:, 0], side="right")
    near_tie = np.abs(x[:, 0] - 500.0) < 20.0
    np.testing.assert_array_equal(pos[~unsure], want[~unsure])
    assert not np.any(unsure[~near_tie])
    assert np.all(unsure[:50]) == (ties > ladder.WINDOW)
    # below the tie the flag does not matter: a ceiling at the tie's start clears it
    tie_start = np.searchsorted(group, 500.0, side="left")
    below = np.full(x.shape, tie_start - 3, np.int32)
    pos_b, unsure_b = search(lad, x, floor, below)
    assert not np.any(np.asarray(unsure_b)[:50])
    np.testing.assert_array_equal(np.asarray(pos_b)[:50, 0, 0], tie_start - 3)
