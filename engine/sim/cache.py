"""Persistent compilation cache: the second run of the same shapes starts without compiling.

Compiled kernels are stored under a user cache directory:

- `LIQSTRESS_CACHE_DIR` when set (an empty value or `off` disables the cache),
- else `$XDG_CACHE_HOME/liqstress/jax-lru`, else `~/.cache/liqstress/jax-lru` (a directory of
  its own: entries written without the lock below, which liqstress up to 0.1 kept in
  `liqstress/jax`, lack the access times the size limit needs).

A kernel is keyed by JAX on its program, shapes, devices and compiler flags, so a new
configuration shape, device count or JAX version compiles (and stores) a new entry. The
minimum compile time and entry size are set to zero so that small kernels (tests, `--quick`
benchmarks) are cached too; the cache keeps at most `CACHE_MAX_BYTES`, and reads and writes hold
a file lock, so that processes sharing it (shards, test workers) never read an entry half-written. `enable()` is idempotent and leaves a cache directory that the
user set with `jax.config.update("jax_compilation_cache_dir", ...)` alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

# Most bytes the cache keeps; the least recently used entries go first.
CACHE_MAX_BYTES = 8 * 2**30

_enabled: Path | None = None
_done = False


def cache_dir() -> Path | None:
    """The directory liqstress uses, or None when disabled by `LIQSTRESS_CACHE_DIR`."""
    env = os.environ.get("LIQSTRESS_CACHE_DIR")
    if env is not None:
        return None if env.strip() in ("", "off", "0", "none") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "liqstress" / "jax-lru"


def enable() -> Path | None:
    """Turn the persistent cache on (once per process); returns the directory in use."""
    global _enabled, _done
    if _done:
        return _enabled
    _done = True
    user_dir = jax.config.jax_compilation_cache_dir
    if user_dir:
        _enabled = Path(user_dir)
        return _enabled
    d = cache_dir()
    if d is None:
        return None
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(d))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # A size limit turns on JAX's file lock around every read and write of an entry: without
    # it an entry is written in place, and another process (a shard, a test worker) reading it
    # half-written crashes in deserialisation (seen: a segfault in `get_executable_and_time`).
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    _enabled = d
    return d


def keep_off() -> None:
    """Keep this process off the persistent cache (`enable` then does nothing), leaving the
    processes it starts to theirs. The test suite's workers do so, each compiling in its own
    memory. (A worker that crashed while deserialising an entry, `get_executable_and_time`,
    had most likely run out of memory mappings for compiled code, as later ones did while
    compiling: `engine.sim.code_space`.)"""
    global _enabled, _done
    _enabled, _done = None, True
