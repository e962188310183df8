"""Non-sequential baselines. Pop: every user gets the items most often interacted with in train."""

from __future__ import annotations

from collections import Counter

from tsrec.baselines.trainer import Recommender


class Pop(Recommender):
    """Popularity = number of train interactions of each item; ties broken by smaller item id.

    Interactions are the train sequences' items once each: every (prefix -> next) pair's target, plus the
    first item of each sequence (the context of its length-1 pair). Same list for every row; no learning.
    """

    def fit(self):
        counts: Counter[int] = Counter()
        for ctx, nxt in self.data.pairs:
            counts[nxt] += 1
            if len(ctx) == 1:
                counts[ctx[0]] += 1
        self.counts = counts
        self.order = sorted(self.data.item_ids, key=lambda i: (-counts.get(i, 0), i))
        return None

    def recommend(self, histories, k):
        return [self.order[:k] for _ in histories]
