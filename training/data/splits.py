"""Per-customer hold-out of the last baskets (leave-last-basket-out), and what it does and does not keep apart.

Purchases are grouped into baskets per user (the ``basket_id`` when the data has one, else purchases less than
``SESSION_GAP_S`` apart; for plain-text sequences every item is its own basket). For a user with at least
``MIN_BASKETS`` baskets the last basket is the test target and the one before it the validation target; everything
before the validation basket is training data. Users with fewer baskets (and anonymous sessions) contribute every
basket to training. No held-out basket, and no return after its customer's validation basket, reaches
:attr:`Split.train` or :attr:`Split.train_returns`, which every statistic a model or baseline uses comes from.

What this protocol leaks: the hold-out is per customer, not by date. Other customers' training baskets carry no
date limit, so the training part holds purchases made after a test (or validation) basket, and a statistic counted
over all of it (``Split.popularity()``, co-occurrence, return rates, the models' training data) has seen that
basket's future (Ji et al., "A Critical Study on Data Leakage in Recommender System Offline Evaluation", 2023).
The offline evaluation therefore counts the popularity a case sees as of the case's day
(``training.features.RecentSales.to_date``); docs/evaluation.md ("Protocol") lists what stays counted over the
whole training part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.schema import ITEM, KIND_CODES, PURCHASE, RETURN, Dataset, is_anonymous

MIN_BASKETS = 3
SESSION_GAP_S = 1800
#: Smoothing of item return rates towards the overall rate, in pseudo-purchases.
RETURN_RATE_PRIOR = 5.0


@dataclass(frozen=True)
class UserBaskets:
    user: int
    times: np.ndarray  # int64 start time of each basket
    baskets: list[np.ndarray]  # distinct item rows per basket, in order of first occurrence

    def flat(self) -> np.ndarray:
        return np.concatenate(self.baskets) if self.baskets else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class EvalCase:
    user: int
    history: np.ndarray  # item rows, oldest first: every basket before the target, flattened
    target: np.ndarray  # distinct item rows of the held-out basket
    time: int  # when the held-out basket was bought


@dataclass(frozen=True)
class Split:
    num_items: int
    train: list[UserBaskets]
    validation: list[EvalCase]
    test: list[EvalCase]
    #: Per user code: the user's own training data ends strictly before this time (int64 max for training-only
    #: users); other users' training baskets may be later.
    cutoff: np.ndarray
    #: Return events in the training window: columns user, item, time.
    train_returns: np.ndarray
    #: Whether event times are a clock shared by all users. Plain-text sequences (``granularity`` item) time each
    #: event by its position in its own line, so "sales before this day" means nothing across users: their
    #: popularity and recent sales are the whole training part's (:class:`training.features.RecentSales`).
    dated: bool = True

    def popularity(self) -> np.ndarray:
        """Training baskets holding each item (float64 [num_items]), over the whole training part: it includes
        other customers' baskets bought after a test case (see the module docstring), so the offline evaluation's
        popularity baseline and fills read :meth:`training.features.RecentSales.to_date` instead."""
        rows = [b for user in self.train for b in user.baskets]
        flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.num_items).astype(np.float64)

    def basket_count(self) -> int:
        """Training baskets (what novelty's p(i) divides by; ``popularity().sum()`` counts basket lines)."""
        return sum(len(user.baskets) for user in self.train)

    def return_rates(self) -> np.ndarray:
        """Returns per purchase in the training window, smoothed towards the overall rate, clipped to [0, 1]."""
        purchases = self.popularity()
        returns = np.bincount(self.train_returns[:, 1], minlength=self.num_items).astype(np.float64)
        overall = returns.sum() / max(purchases.sum(), 1.0)
        return np.clip((returns + RETURN_RATE_PRIOR * overall) / (purchases + RETURN_RATE_PRIOR), 0.0, 1.0)

    def summary(self) -> dict:
        return {
            "users_with_training_data": len(self.train),
            "training_baskets": self.basket_count(),
            "validation_users": len(self.validation),
            "test_users": len(self.test),
            "mean_test_basket": float(np.mean([len(c.target) for c in self.test])) if self.test else 0.0,
            "train_returns": len(self.train_returns),
        }


def purchase_baskets(dataset: Dataset) -> list[UserBaskets]:
    """Every user's purchase baskets in time order."""
    events = dataset.events
    purchase = np.flatnonzero(events.kind == KIND_CODES[PURCHASE])
    user, item = events.user[purchase], events.item[purchase].astype(np.int64)
    time, basket = events.timestamp[purchase], events.basket[purchase]
    order = np.lexsort((basket, time, user))  # stable: lines of one basket keep their file order
    user, item, time, basket = user[order], item[order], time[order], basket[order]
    if not len(user):
        return []
    if dataset.granularity == ITEM:
        new = np.ones(len(user), dtype=bool)
    else:
        new = np.ones(len(user), dtype=bool)
        same_user = user[1:] == user[:-1]
        both_known = (basket[1:] >= 0) & (basket[:-1] >= 0)
        same_basket = np.where(both_known, basket[1:] == basket[:-1], (time[1:] - time[:-1]) < SESSION_GAP_S)
        new[1:] = ~(same_user & same_basket)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(user))
    result: list[UserBaskets] = []
    current, times, baskets = -1, [], []
    for start, end in zip(starts, ends, strict=True):
        if user[start] != current:
            if baskets:
                result.append(UserBaskets(int(current), np.asarray(times, dtype=np.int64), baskets))
            current, times, baskets = user[start], [], []
        rows = item[start:end]
        _, first = np.unique(rows, return_index=True)
        baskets.append(rows[np.sort(first)])
        times.append(int(time[start]))
    result.append(UserBaskets(int(current), np.asarray(times, dtype=np.int64), baskets))
    return result


def split_dataset(dataset: Dataset, min_baskets: int = MIN_BASKETS) -> Split:
    """Last basket -> test, the one before -> validation, the rest -> training (see the module docstring)."""
    if min_baskets < 3:
        raise ValueError("min_baskets must be at least 3 (training, validation and test baskets)")
    events = dataset.events
    cutoff = np.full(len(events.users), np.iinfo(np.int64).max, dtype=np.int64)
    train, validation, test = [], [], []
    for user in purchase_baskets(dataset):
        count = len(user.baskets)
        # A guest's baskets are training data only: a session is not a customer whose next basket is known.
        if count < min_baskets or is_anonymous(events.users[user.user]):
            train.append(user)
            continue
        cutoff[user.user] = user.times[-2]
        kept = UserBaskets(user.user, user.times[:-2], user.baskets[:-2])
        train.append(kept)
        validation.append(EvalCase(user.user, kept.flat(), user.baskets[-2], int(user.times[-2])))
        test.append(EvalCase(user.user, np.concatenate(user.baskets[:-1]), user.baskets[-1], int(user.times[-1])))
    returns = np.flatnonzero((events.kind == KIND_CODES[RETURN]) & (events.item >= 0))
    in_window = events.timestamp[returns] < cutoff[events.user[returns]]
    returns = returns[in_window]
    train_returns = np.stack(
        [events.user[returns].astype(np.int64), events.item[returns].astype(np.int64), events.timestamp[returns]],
        axis=1,
    ).reshape(-1, 3)
    return Split(
        len(dataset.catalog), train, validation, test, cutoff, train_returns, dated=dataset.granularity != ITEM
    )
