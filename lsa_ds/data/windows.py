"""Windows: fixed-length token windows over the blended document stream, in a resumable order.

Per source, documents (filtered by length, long ones repeated) are laid end to end in an order
shuffled once from the seed, and the stream is cut into windows of `L + E_max + 1` tokens
(docs/design.md, "The method"). Sources are blended by weight with Megatron's greedy index; each source's windows
are reshuffled every epoch. The *global* order is a pure function of (seed, weights, data), never of
the number of ranks: rank r takes samples r, r+W, ... of each global batch. The only state is the
number of samples consumed, so a loader rebuilt from a checkpoint yields exactly the same batches.
"""

from __future__ import annotations

import numpy as np

from lsa_ds.data.shards import SplitStore
from lsa_ds.errors import UserError


class SourceWindows:
    """One source's token stream cut into windows of `window` tokens."""

    def __init__(self, store: SplitStore, window: int, seed: int, *, min_doc_tokens: int = 1,
                 long_doc_tokens: int | None = None, long_doc_repeat: int = 1, shuffle_docs: bool = True,
                 name: str = "source"):
        self.store, self.window, self.name = store, window, name
        docs = np.flatnonzero(store.lengths >= min_doc_tokens)
        if long_doc_tokens is not None and long_doc_repeat > 1:
            is_long = store.lengths[docs] >= long_doc_tokens
            docs = np.concatenate([docs] + [docs[is_long]] * (long_doc_repeat - 1))
        if shuffle_docs:
            docs = np.random.default_rng([seed, 0x5EED]).permutation(docs)
        else:
            docs = np.sort(docs, kind="stable")
        self.docs = docs
        self.ends = np.cumsum(store.lengths[docs])  # stream offset where each listed doc ends
        total = int(self.ends[-1]) if len(docs) else 0
        self.num_windows = total // window
        if self.num_windows == 0:
            raise UserError(f"source '{name}': {total} tokens after filtering, fewer than one window of "
                            f"{window} tokens (train.seq_len + shift_max + 1); add data or shorten the window")

    def get(self, k: int) -> np.ndarray:
        """Window k: stream tokens [k*window, (k+1)*window) as int64."""
        lo, hi = k * self.window, (k + 1) * self.window
        out = np.empty(self.window, dtype=np.int64)
        i = int(np.searchsorted(self.ends, lo, side="right"))
        pos, filled = lo, 0
        while filled < self.window:
            doc_start = int(self.ends[i - 1]) if i else 0
            take = min(int(self.ends[i]), hi) - pos
            piece = self.store.tokens(int(self.docs[i]), pos - doc_start, pos - doc_start + take)
            out[filled:filled + take] = piece
            filled += take
            pos += take
            i += 1
        return out


class BlendedWindows:
    """The global, infinite, epoch-shuffled sequence of windows over weighted sources."""

    def __init__(self, sources: list[SourceWindows], weights: list[float], seed: int, shuffle: bool = True):
        if len(sources) != len(weights):
            raise ValueError("one weight per source")
        self.sources, self.seed, self.shuffle = sources, seed, shuffle
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self._src = np.zeros(0, dtype=np.int32)  # source of global sample i
        self._pos = np.zeros(0, dtype=np.int64)  # index of sample i within its source's sequence
        self._counts = [0] * len(sources)
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _extend_blend(self, n: int) -> None:
        """Megatron's greedy blend: sample i goes to the source furthest below its share."""
        start = len(self._src)
        if n <= start:
            return
        n = max(n, 2 * start, 4096)
        src = np.empty(n - start, dtype=np.int32)
        pos = np.empty(n - start, dtype=np.int64)
        counts, w, S = self._counts, self.weights.tolist(), len(self.sources)
        for j, i in enumerate(range(start, n)):
            s = 0 if S == 1 else max(range(S), key=lambda t: w[t] * (i + 1) - counts[t])
            src[j], pos[j] = s, counts[s]
            counts[s] += 1
        self._src = np.concatenate([self._src, src])
        self._pos = np.concatenate([self._pos, pos])

    def _perm(self, s: int, epoch: int) -> np.ndarray:
        key = (s, epoch)
        if key not in self._perm_cache:
            n = self.sources[s].num_windows
            perm = np.random.default_rng([self.seed, s, epoch]).permutation(n) if self.shuffle else np.arange(n)
            if len(self._perm_cache) > 2 * len(self.sources):
                self._perm_cache.clear()
            self._perm_cache[key] = perm
        return self._perm_cache[key]

    def locate(self, i: int) -> tuple[int, int, int]:
        """(source, epoch, window index in the source) of global sample i."""
        self._extend_blend(i + 1)
        s, j = int(self._src[i]), int(self._pos[i])
        n = self.sources[s].num_windows
        return s, j // n, int(self._perm(s, j // n)[j % n])

    def __getitem__(self, i: int) -> np.ndarray:
        s, _, k = self.locate(i)
        return self.sources[s].get(k)


class WindowLoader:
    """Per-rank micro-batches of one optimizer step; state is the global consumed-sample count.

    A global batch is `micro_batch * grad_accum * world` consecutive samples of the global order;
    rank r takes samples r, r+world, ... of it and splits them into `grad_accum` micro-batches.
    """

    def __init__(self, windows: BlendedWindows, micro_batch: int, grad_accum: int, rank: int = 0,
                 world: int = 1, consumed_samples: int = 0):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world {world}")
        self.windows, self.micro_batch, self.grad_accum = windows, micro_batch, grad_accum
        self.rank, self.world = rank, world
        self.consumed_samples = consumed_samples

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world

    def sample_ids(self, consumed: int | None = None) -> list[list[int]]:
        """Global sample ids of this rank's micro-batches for the step starting at `consumed`."""
        base = self.consumed_samples if consumed is None else consumed
        mine = [base + self.rank + k * self.world for k in range(self.micro_batch * self.grad_accum)]
        return [mine[m * self.micro_batch:(m + 1) * self.micro_batch] for m in range(self.grad_accum)]

    def next_step(self) -> list[tuple[list[int], np.ndarray]]:
        """This rank's `grad_accum` micro-batches (sample ids, windows [micro_batch, W]); advances."""
        out = [(ids, np.stack([self.windows[i] for i in ids])) for ids in self.sample_ids()]
        self.consumed_samples += self.global_batch
        return out

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = int(state["consumed_samples"])
