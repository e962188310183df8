"""Non-learned baselines: Pop (same list for everyone) and Transition (first-order item -> item floor)."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import islice

from tsrec.baselines.trainer import Recommender


class Pop(Recommender):
    """Popularity = number of train interactions of each item (``SeqData.popularity``); ties by smaller item id.

    Interactions are the train sequences' items once each: every (prefix -> next) pair's target, plus the
    first item of each sequence (the context of its length-1 pair). Same list for every row; no learning.
    """

    deterministic = True

    def fit(self):
        self.counts = self.data.popularity
        self.order = sorted(self.data.item_ids, key=lambda i: (-self.counts.get(i, 0), i))
        return None

    def recommend(self, histories, k):
        return [self.order[:k] for _ in histories]


class Transition(Recommender):
    """First-order transition floor: count(a -> b) over train, a = last item of the context, b = its next item.

    Counted over the train (prefix -> next) pairs (``SeqData.pairs``; on the reconstructed split these are the
    train rows: last history item -> target). A row with last item ``a`` gets the items seen after ``a`` by
    descending count, ties by train popularity, then smaller item id; the list is filled up from the Pop order
    (items not already listed) when ``a`` was never followed by anything in train or has fewer than k
    successors (popularity back-off). No learning, no randomness.
    """

    deterministic = True

    def fit(self):
        pop = self.data.popularity
        counts: dict[int, Counter] = defaultdict(Counter)
        for ctx, nxt in self.data.pairs:
            counts[ctx[-1]][nxt] += 1
        self.counts = dict(counts)
        self.successors = {a: sorted(c, key=lambda b, c=c: (-c[b], -pop.get(b, 0), b)) for a, c in counts.items()}
        self.pop_order = sorted(self.data.item_ids, key=lambda i: (-pop.get(i, 0), i))
        return None

    def recommend(self, histories, k):
        out = []
        for hist in histories:
            head = self.successors.get(hist[-1], [])[:k]
            listed = set(head)
            out.append(head + list(islice((i for i in self.pop_order if i not in listed), k - len(head))))
        return out
