"""Independent NumPy re-implementations of the layers, used as test oracles."""

import numpy as np

INVALID = -2.0


def cosine_topk(target, history, mask, k):
    """Float64 brute force: valid positions sorted by (cosine desc, position desc); pad to k."""
    target = np.asarray(target, np.float64)
    batch = target.shape[0]
    history = np.broadcast_to(np.asarray(history, np.float64), (batch,) + np.shape(history)[1:])
    mask = np.broadcast_to(mask, history.shape[:2])
    t_norm = np.linalg.norm(target, axis=-1)
    h_norm = np.linalg.norm(history, axis=-1)
    dots = np.einsum("bd,bld->bl", target, history)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(t_norm[:, None] > 0, dots / (t_norm[:, None] * h_norm), 0.0)
    usable = mask & (h_norm > 0)
    indices, scores, valid = [], [], []
    for b in range(batch):
        pos = np.flatnonzero(usable[b])
        pos = pos[np.lexsort((-pos, -cos[b, pos]))][:k]
        pad = k - len(pos)
        indices.append(list(pos) + [None] * pad)
        scores.append(list(cos[b, pos]) + [INVALID] * pad)
        valid.append([True] * len(pos) + [False] * pad)
    return indices, np.array(scores), np.array(valid)


def topk_by_score(scores, usable, k):
    """Usable positions sorted by (score desc, position desc), padded to k."""
    indices, top, valid = [], [], []
    for row, ok in zip(np.asarray(scores, np.float64), np.asarray(usable)):
        pos = np.flatnonzero(ok)
        pos = pos[np.lexsort((-pos, -row[pos]))][:k]
        pad = k - len(pos)
        indices.append(list(pos) + [None] * pad)
        top.append(list(row[pos]) + [INVALID] * pad)
        valid.append([True] * len(pos) + [False] * pad)
    return indices, np.array(top), np.array(valid)


def assert_search_matches(result, expected, atol=1e-5):
    """A (indices, scores, valid) search result equals ``cosine_topk``'s, position by position."""
    indices, scores, valid = (np.asarray(t) for t in result)
    exp_indices, exp_scores, exp_valid = expected
    np.testing.assert_array_equal(valid, exp_valid)
    for b, row in enumerate(exp_indices):
        for j, pos in enumerate(row):
            if pos is not None:
                assert indices[b, j] == pos, (b, j)
    np.testing.assert_allclose(scores, exp_scores, atol=atol)
    assert (indices >= 0).all()


def category_topk(target_category, history_categories, mask, k):
    """The k most recent positions whose category equals the target's."""
    batch = len(target_category)
    cats = np.broadcast_to(history_categories, (batch, np.shape(history_categories)[1]))
    mask = np.broadcast_to(mask, cats.shape)
    indices, valid = [], []
    for b in range(batch):
        hits = [p for p in range(cats.shape[1]) if mask[b, p] and cats[b, p] == target_category[b]]
        hits = hits[::-1][:k]
        indices.append(hits + [None] * (k - len(hits)))
        valid.append([True] * len(hits) + [False] * (k - len(hits)))
    return indices, np.array(valid)


def simtier(similarities, mask, eps, weights):
    """Loop over positions: tier = ceil(r / eps) + 1/eps for r clipped to [-1, 1] (float32
    product, as the layer), the last tier for r >= 1 - 1e-5 (identical vectors)."""
    per_unit = int(round(1 / eps))
    num_tiers = 2 * per_unit + 2
    sims = np.asarray(similarities, np.float32)
    mask = np.asarray(mask)
    out = np.zeros((sims.shape[0], num_tiers, weights.shape[1]))
    for b in range(sims.shape[0]):
        counts = np.zeros(num_tiers)
        for j in range(sims.shape[1]):
            if mask[b, j]:
                r = min(max(sims[b, j], np.float32(-1)), np.float32(1))
                tier = int(np.ceil(r * np.float32(per_unit))) + per_unit
                counts[num_tiers - 1 if sims[b, j] >= 1 - 1e-5 else tier] += 1
        out[b] = np.log1p(counts)[:, None] * weights
    return out.reshape(sims.shape[0], -1)


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax_masked(scores, mask):
    scores = np.where(mask, scores, -np.inf)
    out = np.zeros_like(scores, dtype=np.float64)
    for idx in np.ndindex(scores.shape[:-1]):
        row = scores[idx]
        if np.isfinite(row).any():
            e = np.exp(row - row[np.isfinite(row)].max())
            out[idx] = np.where(np.isfinite(row), e, 0.0) / e[np.isfinite(row)].sum()
    return out


def linear_target_attention(query, keys, mask, wq, bq, wk, bk):
    """The official short-term attention (``MultiHeadAtt``, one head), masked: q = W_q e + b_q,
    each key projected, softmax of k . q over the valid positions, sum of a_i k_i."""
    q = query.astype(np.float64) @ wq + bq
    k = keys.astype(np.float64) @ wk + bk
    weights = softmax_masked(np.einsum("bkd,bd->bk", k, q), mask)
    return np.einsum("bk,bkd->bd", weights, k)


def sata(query, keys, mask, sims, wq, bq, wk, bk, wv, bv, heads, gates=None, tau=None):
    """Semantic-aware target attention, per head, from explicit weights."""
    q = silu(query @ wq + bq)
    k = silu(keys @ wk + bk)
    v = silu(keys @ wv + bv)
    batch, length, units = k.shape
    d = units // heads
    out = np.zeros((batch, units))
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        a = np.einsum("bd,bkd->bk", q[:, sl], k[:, :, sl])
        if gates is not None:
            r = sims / tau
            a = gates[0] * a + gates[1] * r + gates[2] * a * r
        w = softmax_masked(a, mask)
        out[:, sl] = np.einsum("bk,bkd->bd", w, v[:, :, sl])
    return out


def dice(x, alpha, mean, var, eps):
    p = 1.0 / (1.0 + np.exp(-(x - mean) / np.sqrt(var + eps)))
    return p * x + (1 - p) * alpha * x


def group_auc_bruteforce(labels, scores, groups):
    """Pairwise count per group: P(score_pos > score_neg) + 0.5 P(tie), impressions-weighted."""
    total, weight = 0.0, 0
    for g in np.unique(groups):
        sel = groups == g
        pos = scores[sel][labels[sel] == 1]
        neg = scores[sel][labels[sel] == 0]
        if len(pos) == 0 or len(neg) == 0:
            continue
        wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
        total += sel.sum() * wins / (len(pos) * len(neg))
        weight += sel.sum()
    return total / weight if weight else float("nan")


class SparseAdam:
    """torch.optim.SparseAdam in float64: per step, repeated indices summed (torch's ``coalesce``),
    then only those rows' moments and values updated; a step counter per table. ``lr`` is a number
    or a function of the number of steps taken before this one (a schedule)."""

    def __init__(self, table, lr, beta_1=0.9, beta_2=0.999, eps=1e-8):
        self.table = np.array(table, np.float64)
        self.m = np.zeros_like(self.table)
        self.v = np.zeros_like(self.table)
        self.lr, self.beta_1, self.beta_2, self.eps = lr, beta_1, beta_2, eps
        self.step = 0

    def apply(self, indices, values):
        self.step += 1
        rows = np.unique(indices)
        grad = np.zeros((len(rows),) + self.table.shape[1:])
        np.add.at(grad, np.searchsorted(rows, indices), values)
        old_m, old_v = self.m[rows], self.v[rows]
        m_update = (grad - old_m) * (1 - self.beta_1)
        v_update = (grad**2 - old_v) * (1 - self.beta_2)
        self.m[rows] += m_update
        self.v[rows] += v_update
        numer = m_update + old_m
        denom = np.sqrt(v_update + old_v) + self.eps
        lr = self.lr(self.step - 1) if callable(self.lr) else self.lr
        step_size = lr * np.sqrt(1 - self.beta_2**self.step) / (1 - self.beta_1**self.step)
        self.table[rows] += -step_size * numer / denom


class Adam:
    """tf-keras's Adam (and AdamW) on dense weights, in float64: epsilon added to sqrt(v) (Kingma &
    Ba's epsilon hat), and with ``weight_decay`` the decoupled decay w <- w - lr wd w first."""

    def __init__(self, weights, lr, beta_1=0.9, beta_2=0.999, eps=1e-7, weight_decay=0.0):
        self.weights = [np.array(w, np.float64) for w in weights]
        self.m = [np.zeros_like(w) for w in self.weights]
        self.v = [np.zeros_like(w) for w in self.weights]
        self.lr, self.beta_1, self.beta_2, self.eps = lr, beta_1, beta_2, eps
        self.weight_decay = weight_decay
        self.step = 0

    def apply(self, gradients):
        self.step += 1
        step_size = self.lr * np.sqrt(1 - self.beta_2**self.step) / (1 - self.beta_1**self.step)
        for w, m, v, g in zip(self.weights, self.m, self.v, gradients):
            w -= self.lr * self.weight_decay * w
            m += (g - m) * (1 - self.beta_1)
            v += (g**2 - v) * (1 - self.beta_2)
            w -= step_size * m / (np.sqrt(v) + self.eps)


def warmup_cosine(peak, total_steps, warmup_fraction):
    """The learning rate after ``t`` steps: linear from 0 to ``peak`` over the first
    ``warmup_fraction`` of ``total_steps``, then half a cosine period down to 0 at the last."""
    warmup = int(warmup_fraction * total_steps)

    def rate(t):
        if t < warmup:
            return peak * t / warmup
        return peak * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (total_steps - warmup)))

    return rate
