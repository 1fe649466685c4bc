"""The overlap misalignment split by what the predicted token is: where in a repeated-span text do
the long and the short view disagree? (docs/design.md, "The misalignment metric", overlap variant.)

Same pairs as `misalignment.measure_misalignment(..., "overlap")`: window i (sample i, one window
per sample), long view w[:L], short view w[E:L] with E = `draw_overlap_shift(seed, i, L)`, long
position t paired with short position t - E for t in [E, L - 1], SCE and symmetric KL from
`misalignment.divergences`. Position t predicts token t + 1, and each pair is classed by that
token (`repeat_docs.labelled_windows` says which tokens are copies and of what):

- cut: a copy whose source lies in w[0:E]: the long view sees it, the truncation removed it from
  the short view. Alignment asks the short view to predict it as well as the long one does.
- shared: a copy whose source lies in w[E:t + 1], seen by both views.
- unseen: a copy whose source lies before the window: neither view sees it.
- plain: not a copy.

The four classes partition the pairs. Windows are the units, as in the unsplit metric (its
per-window mean, then the mean over windows): the pairs of one window share its text and shift,
so they are not independent draws. For class c and window w let f_wc be the class's fraction of
the window's L - E pairs and x_wc the sum of the class's divergences over L - E (the class's part
of the window's mean, so sum_c x_wc is that mean). Reported per class: the mean
sum_w x_wc / sum_w f_wc (the class's pairs weighted as the unsplit metric weights them) with a 95%
percentile bootstrap interval over windows (`stats.bootstrap_ci`: it stays inside the values'
range, so SKL's interval never goes below 0), the share mean_w f_wc and the number of pairs. So
sum_c share_c × mean_c equals the unsplit per-window mean exactly (`MisalignSplit.sce`, `.skl`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from lsa_ds.eval.forward import LogitsFn, hf_logits_fn
from lsa_ds.eval.misalignment import divergences, draw_overlap_shift
from lsa_ds.eval.stats import BootCI, bootstrap_ci

CLASSES: tuple[str, ...] = ("cut", "shared", "unseen", "plain")
_PAIR_CHUNK = 512  # pairs per divergence call: fp32 temporaries stay [512, V] whatever L is


@dataclass(frozen=True)
class ClassSplit:
    """One class of predicted token: its pairs' SCE and symmetric KL."""

    name: str
    pairs: int
    """Pairs (long position t <-> short t - E) whose predicted token is of this class, all windows."""
    windows: int
    """Windows with at least one such pair (the bootstrap's units that carry the class)."""
    share: float
    """Mean over windows of the class's fraction of the window's pairs (the weight in the unsplit mean)."""
    sce: BootCI
    skl: BootCI

    def to_dict(self) -> dict:
        return {"name": self.name, "pairs": self.pairs, "windows": self.windows, "share": self.share,
                "sce": self.sce.to_dict(), "skl": self.skl.to_dict()}


@dataclass(frozen=True)
class MisalignSplit:
    """The split for one model: every class, and the unsplit per-window means they add up to."""

    seq_len: int
    seed: int
    samples: int
    classes: tuple[ClassSplit, ...]
    sce: float
    """Unsplit overlap SCE: the per-window mean over windows (= measure_misalignment's mean)."""
    skl: float
    per_window: dict[str, np.ndarray] = field(default_factory=dict, compare=False)
    """Class -> float64 [N, 3]: (x_wc for SCE, x_wc for SKL, f_wc) of each window, for paired
    comparisons between models scored on the same windows and seed."""

    def by_name(self, name: str) -> ClassSplit:
        return next(c for c in self.classes if c.name == name)

    def to_dict(self) -> dict:
        return {"variant": "overlap", "seq_len": self.seq_len, "seed": self.seed, "samples": self.samples,
                "interval": "95% percentile bootstrap over windows of the class's pair-weighted mean",
                "sce": self.sce, "skl": self.skl, "classes": [c.to_dict() for c in self.classes]}

    def text(self) -> str:
        rows = [f"{c.name:<7} share {c.share:.3f}  pairs {c.pairs:>6}  SCE {c.sce.text('.3f')}  SKL {c.skl.text('.3f')}"
                for c in self.classes]
        return "\n".join(rows + [f"all     SCE {self.sce:.3f}  SKL {self.skl:.3f}  ({self.samples} windows)"])


def pair_classes(copy_distance: np.ndarray, seq_len: int, shift: int) -> np.ndarray:
    """Class index (into CLASSES) of each pair t in [E, L-1] of one window, from the label of the
    token it predicts, t + 1. copy_distance: [>= L + 1] (`repeat_docs.labelled_windows`)."""
    t = np.arange(shift, seq_len)
    d = np.asarray(copy_distance)[t + 1]
    src = t + 1 - d
    return np.select([d == 0, src < 0, src < shift], [3, 2, 0], default=1)


def _ratio(x: np.ndarray, f: np.ndarray) -> float:
    den = f.sum()
    return float(x.sum() / den) if den > 0 else math.nan


def _window_pairs(logits_fn: LogitsFn, windows: np.ndarray, samples: list[int], L: int,
                  seed: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(E, SCE [L - E], SKL [L - E]) of each window's pairs, one right-padded forward."""
    shifts = [draw_overlap_shift(seed, i, L) for i in samples]
    ids = torch.zeros(2 * len(samples), L, dtype=torch.int64)  # id 0 pads the short rows: never read
    for r, (i, e) in enumerate(zip(samples, shifts)):
        ids[2 * r] = torch.as_tensor(windows[i][:L])
        ids[2 * r + 1, :L - e] = torch.as_tensor(windows[i][e:L])
    z = logits_fn(ids, L)
    out = []
    for r, e in enumerate(shifts):
        ends = [(t0, min(L, t0 + _PAIR_CHUNK)) for t0 in range(e, L, _PAIR_CHUNK)]
        parts = [divergences(z[2 * r, t0:t1], z[2 * r + 1, t0 - e:t1 - e]) for t0, t1 in ends]
        sce, skl = (torch.cat([p[k] for p in parts]).double().cpu() for k in (0, 1))
        out.append((e, sce, skl))
    return out


def measure_misalign_split(model: LogitsFn | torch.nn.Module, windows: np.ndarray, copy_distance: np.ndarray,
                           seq_len: int, seed: int = 0, *, batch_tokens: int = 8192, n_boot: int = 2000,
                           progress: bool = False) -> MisalignSplit:
    """The overlap misalignment of `model` split by the class of the predicted token (module doc).

    model: a `LogitsFn` or an HF causal LM. windows, copy_distance: [N, >= L + 1] from
    `repeat_docs.labelled_windows(docs, L + 1, N)` (position L - 1 predicts token L, so its class
    needs one token past the views). Sample i reads window i; the shifts are those of
    `measure_misalignment(logits_fn, windows, L, "overlap", samples=N, seed=seed)`, so both score
    the same pairs. Single process.
    """
    logits_fn = hf_logits_fn(model) if isinstance(model, torch.nn.Module) else model
    windows, copy_distance = np.asarray(windows), np.asarray(copy_distance)
    L, N = seq_len, len(windows)
    if L < 2 or windows.ndim != 2 or windows.shape[1] < L + 1 or copy_distance.shape != windows.shape or N == 0:
        raise ValueError(f"need windows and copy_distance of one shape [N >= 1, >= L + 1 = {L + 1}], "
                         f"got {windows.shape} and {copy_distance.shape}")
    parts = np.zeros((len(CLASSES), N, 3))  # [class, window, (SCE part, SKL part, fraction)]
    pairs = np.zeros((len(CLASSES), N), dtype=np.int64)
    per_batch = max(1, batch_tokens // (2 * L))
    for start in tqdm(range(0, N, per_batch), desc="misalignment split", leave=False, disable=not progress or None):
        samples = list(range(start, min(N, start + per_batch)))
        for i, (e, sce, skl) in zip(samples, _window_pairs(logits_fn, windows, samples, L, seed)):
            cls = pair_classes(copy_distance[i], L, e)
            for c in range(len(CLASSES)):
                sel = torch.from_numpy(cls == c)
                pairs[c, i] = int(sel.sum())
                parts[c, i] = (float(sce[sel].sum()) / (L - e), float(skl[sel].sum()) / (L - e), pairs[c, i] / (L - e))
    classes = []
    for c, name in enumerate(CLASSES):
        x_sce, x_skl, f = parts[c, :, 0], parts[c, :, 1], parts[c, :, 2]
        classes.append(ClassSplit(name, int(pairs[c].sum()), int((pairs[c] > 0).sum()), float(f.mean()),
                                  bootstrap_ci(x_sce, f, stat=_ratio, n_boot=n_boot, seed=seed),
                                  bootstrap_ci(x_skl, f, stat=_ratio, n_boot=n_boot, seed=seed)))
    totals = parts.sum(axis=0)  # per window: the unsplit mean of SCE and SKL, and fraction 1
    return MisalignSplit(L, seed, N, tuple(classes), float(totals[:, 0].mean()), float(totals[:, 1].mean()),
                         {name: parts[c] for c, name in enumerate(CLASSES)})
