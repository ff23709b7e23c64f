"""Trains the two-tower retriever and the sequence ranker on a split (training data only; validation only for the
training curves and the ranker's probability calibration).

Examples are basket-level, as evaluated and served: for every training basket after a customer's first, the
history is every earlier basket (flattened, oldest first) and the targets are the basket's items.

- Two-tower: one (history, item) pair per target item; in-batch sampled softmax with logQ correction.
- Ranker: per example, the candidate set serving would form for that history (the trained two-tower's top items,
  the items bought together with the newest ones (co-visitation), the customer's own earlier items, the most popular
  items and the best sellers, both counted over the days before the basket: :meth:`AisleRecommender.candidates`),
  labelled by the basket; up to ``positives`` of its purchased items and negatives drawn uniformly from the rest,
  ``ranker_candidates`` in all. Each example appears twice per epoch: once with the repeat candidate set and once
  with the discovery one (the customer's own items excluded before retrieval), so the ranker also learns to order
  new items. Uniform sampling of negatives shifts every logit by the same constant, which the calibration fitted on
  validation removes; the discovery-shaped lists leave the ranker under-rating items bought before on a mixed list,
  which the calibration's bought-before term corrects when validation agrees (:func:`calibrate`). Binary
  cross-entropy for P(purchase) plus ``listwise_weight`` x a softmax cross-entropy of the basket's items among the
  example's candidates (the order NDCG measures); the return head is trained on the positives only (label: the customer
  returned that item later in the training window). The ranker holds frozen copies of the trained two-tower and of
  the training data's co-occurrence (``retrieval_feature``, ``cooccurrence_feature``) and sees their scores.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from services.ranking.features import CANDIDATE_FEATURES, ItemFeatureSnapshot
from services.retrieval.covisitation import CoVisitationTable
from training.data.schema import DataError, Dataset, is_anonymous
from training.data.splits import EvalCase, Split, split_dataset
from training.evaluation.aisle import AisleRecommender, TwoTowerRetriever
from training.evaluation.baselines import cooccurrence
from training.evaluation.offline import evaluate
from training.features import (
    RANKER_HISTORY_LENGTH,
    TRENDING_DAYS,
    RecentSales,
    export_sales,
    history_tokens,
    item_snapshot,
    ranker_inputs,
)
from training.models.sequence_ranker import CooccurrenceScore, RetrievalScore, SequenceRanker
from training.models.two_tower import ItemContent, TwoTower

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    seed: int = 0
    dim: int = 64
    history_length: int = 50  # the two-tower's query window (and the ranker's attention window)
    ranker_history_length: int = RANKER_HISTORY_LENGTH  # the ranker's input window (its repeat features)
    threads: int = 2
    # two-tower
    tower_epochs: int = 4
    tower_batch: int = 1024
    tower_lr: float = 3e-3
    tower_examples_per_epoch: int = 100_000
    # ranker
    ranker_epochs: int = 2
    ranker_batch: int = 64
    ranker_lr: float = 2e-3
    ranker_lr_decay: bool = True  # the learning rate falls linearly to 0 over the ranker's steps
    keep_best_epoch: bool = True  # keep the epoch with the best validation NDCG@10, not the last one
    ranker_layers: int = 2
    retrieval_feature: bool = True  # the ranker holds a frozen copy of the two-tower and sees its similarity
    cooccurrence_feature: bool = True  # ... and the training data's item-to-item co-occurrence
    ranker_candidates: int = 64
    positives: int = 24
    return_weight: float = 0.5
    listwise_weight: float = 1.0  # + this x softmax cross-entropy of each basket's items among its candidates
    recency_half_life_days: float = 120.0  # > 0: a training basket this many days older than the newest weighs half
    # serving-shaped candidate set used for validation, calibration and evaluation
    retrieve: int = 200
    repeat: int = 200
    popular: int = 50  # the most popular items of the training window (the popularity source)
    trending: int = 50  # the items most bought in the ``trending_days`` before the request (the trending source)
    trending_days: int = TRENDING_DAYS  # ... and the window of the ranker's log_trending feature
    co_visit: int = 50  # items bought together with the newest items (the retrieval co-visitation source)
    co_visit_neighbours: int = 100  # neighbours kept per item in the exported co-visitation table
    validation_users: int = 1000


@dataclass
class Curves:
    tower_loss: list[float] = field(default_factory=list)
    ranker_loss: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    ranker_kept_epoch: int = 0  # the ranker epoch whose weights were exported


@dataclass
class FittedModels:
    two_tower: TwoTower
    ranker: SequenceRanker
    snapshot: ItemFeatureSnapshot
    split: Split
    config: FitConfig
    curves: Curves
    seconds: dict[str, float]
    validation: dict[str, float]
    covisitation: CoVisitationTable | None = None
    #: Recent sales over every basket of the data (held-out ones too): what the export serves, as the snapshot's
    #: log_trending rates and the index's trending counts.
    export_sales: RecentSales | None = None
    #: The fitted calibration and whether its bought-before shift was kept (``calibrate``).
    calibration: dict[str, float | bool] = field(default_factory=dict)

    def recommender(self) -> AisleRecommender:
        return serving_recommender(
            self.config, self.two_tower, self.ranker, self.snapshot, self.split, self.covisitation
        )

    def summary(self) -> dict:
        return {
            "config": asdict(self.config),
            "split": self.split.summary(),
            "seconds": self.seconds,
            "validation": self.validation,
            "calibration": self.calibration,
        }


@dataclass(frozen=True)
class BasketExamples:
    users: np.ndarray
    times: np.ndarray
    histories: list[np.ndarray]
    targets: list[np.ndarray]


def basket_examples(split: Split) -> BasketExamples:
    users, times, histories, targets = [], [], [], []
    for user in split.train:
        for b in range(1, len(user.baskets)):
            users.append(user.user)
            times.append(int(user.times[b]))
            histories.append(np.concatenate(user.baskets[:b]))
            targets.append(user.baskets[b])
    return BasketExamples(np.asarray(users, dtype=np.int64), np.asarray(times, dtype=np.int64), histories, targets)


def serving_recommender(
    config: FitConfig,
    tower: TwoTower,
    ranker: SequenceRanker | None,
    snapshot: ItemFeatureSnapshot,
    split: Split,
    covisitation: CoVisitationTable | None,
) -> AisleRecommender:
    """The serving-shaped candidate set (and, with a ranker, the pipeline) of ``config``, on torch models."""
    return AisleRecommender.from_config(
        asdict(config),
        torch_query_fn(tower),
        tower.all_item_vectors(),
        torch_rank_fn(ranker) if ranker is not None else None,
        snapshot,
        split.popularity(),
        covisitation,
        RecentSales.from_split(split, config.trending_days),
    )


def covisitation_table(split: Split, config: FitConfig) -> CoVisitationTable | None:
    """The co-visitation source's table from the training baskets (what the index exports), or None when the
    config asks for no such candidates."""
    if not config.co_visit:
        return None
    baskets = (basket for user in split.train for basket in user.baskets)
    return CoVisitationTable.from_baskets(baskets, split.popularity(), config.co_visit_neighbours)


def torch_query_fn(model: TwoTower):
    def query(history: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return model.query(torch.from_numpy(history)).numpy()

    return query


def torch_rank_fn(model: SequenceRanker):
    def rank(history: np.ndarray, candidates: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        with torch.no_grad():
            purchase, returns = model(
                torch.from_numpy(history), torch.from_numpy(candidates), torch.from_numpy(features)
            )
        return purchase.numpy(), returns.numpy()

    return rank


def fit(dataset: Dataset, config: FitConfig | None = None, progress: bool = True) -> FittedModels:
    """Deterministic under ``config.seed`` (deterministic torch kernels; same data, same losses)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _fit(dataset, config or FitConfig(), progress)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _fit(dataset: Dataset, config: FitConfig, progress: bool) -> FittedModels:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    split = split_dataset(dataset)
    if not split.validation and all(is_anonymous(user) for user in dataset.events.users):
        raise DataError(
            f"{dataset.name}: every shopper is anonymous (a session or a guest: no user_id), so there is no customer "
            "whose next basket can be held out for validation and test: train on data with user ids"
        )
    if not split.validation:
        raise DataError(
            f"{dataset.name}: no customer has 3 or more baskets, so nothing can be held out for validation and test: "
            f"train on more of the shop's purchases ({dataset.report.rows_kept} of {dataset.report.rows_read} rows "
            "were usable; the load report in the log says why the others were skipped)"
        )
    examples = basket_examples(split)
    if not examples.targets:
        raise DataError(
            f"{dataset.name}: no training basket has an earlier basket to learn from: train on more of the shop's "
            "purchases (customers with several baskets over time)"
        )
    # The exported snapshot's recent sales are the whole data's as of its end; every training example and
    # evaluation case gets the training baskets' as of its own day instead (ranker_inputs with recent sales).
    sales = export_sales(dataset, config.trending_days)
    snapshot = item_snapshot(dataset.catalog, split, recent=sales)
    validation = split.validation
    if config.validation_users and len(validation) > config.validation_users:
        picks = np.sort(rng.choice(len(validation), config.validation_users, replace=False))
        validation = [validation[i] for i in picks]
    curves = Curves()
    seconds = {}
    tower = train_two_tower(dataset, split, examples, config, rng, curves, validation, progress)
    seconds["two_tower"] = time.perf_counter() - started
    # The training baskets' co-occurrence: dense for the ranker's co-occurrence score, sparse for the candidates.
    similarity = cooccurrence(split) if config.cooccurrence_feature else None
    covisitation = covisitation_table(split, config)
    ranker = train_ranker(
        split, examples, snapshot, tower, config, rng, curves, validation, progress, similarity, covisitation
    )
    seconds["ranker"] = time.perf_counter() - started - seconds["two_tower"]
    fitted = FittedModels(tower, ranker, snapshot, split, config, curves, seconds, {}, covisitation, sales)
    categories = np.unique(dataset.catalog.categories, return_inverse=True)[1]
    metrics = calibrate(fitted, validation, categories)
    fitted.validation = {k: v for k, v in metrics.items() if isinstance(v, float)}
    seconds["total"] = time.perf_counter() - started
    log.info("validation (repeat protocol, %d users): %s", len(validation), _short(fitted.validation))
    return fitted


def _short(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in ("ndcg@10", "hr@10", "recall@100", "ece_top10"))


def train_two_tower(
    dataset: Dataset,
    split: Split,
    examples: BasketExamples,
    config: FitConfig,
    rng: np.random.Generator,
    curves: Curves,
    validation: list[EvalCase],
    progress: bool,
) -> TwoTower:
    known = split.popularity() > 0
    model = TwoTower(ItemContent.from_catalog(dataset.catalog), known, config.dim, config.history_length)
    histories = torch.from_numpy(history_tokens(examples.histories, config.history_length))
    example_of = np.concatenate([np.full(len(t), e) for e, t in enumerate(examples.targets)])
    item_of = np.concatenate(examples.targets)
    counts = np.bincount(item_of, minlength=split.num_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(counts / counts.sum()).astype(np.float32))
    optimiser = torch.optim.Adam(model.parameters(), lr=config.tower_lr)
    per_epoch = min(len(item_of), config.tower_examples_per_epoch)
    steps = max(1, per_epoch // config.tower_batch)
    categories = np.unique(dataset.catalog.categories, return_inverse=True)[1]
    popularity, baskets = split.popularity(), split.basket_count()  # novelty's counts
    bar = tqdm(total=config.tower_epochs * steps, desc="two-tower", unit="batch", disable=not progress)
    for epoch in range(config.tower_epochs):
        model.train()
        order = rng.permutation(len(item_of))[: steps * config.tower_batch]
        for step in range(steps):
            batch = order[step * config.tower_batch : (step + 1) * config.tower_batch]
            loss = model.sampled_softmax_loss(histories[example_of[batch]], torch.from_numpy(item_of[batch]), log_q)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            curves.tower_loss.append(float(loss.item()))
            bar.update()
            bar.set_postfix(loss=f"{curves.tower_loss[-1]:.3f}")
        model.eval()
        retriever = TwoTowerRetriever(torch_query_fn(model), model.all_item_vectors(), config.history_length)
        metrics = evaluate(retriever, validation, "repeat", popularity, categories, baskets=baskets).metrics
        curves.validation.append({"stage": "two_tower", "epoch": epoch + 1, **_numbers(metrics)})
        log.info("two-tower epoch %d: loss %.3f, validation %s", epoch + 1, curves.tower_loss[-1], _short(metrics))
    bar.close()
    model.eval()
    return model


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in ("ndcg@10", "hr@10", "recall@10", "recall@100")}


def serving_pools(
    recommender: AisleRecommender, examples: BasketExamples, exclude_history: bool = False
) -> list[np.ndarray]:
    """Per example, the candidate rows serving would score for its history."""
    cases = [
        EvalCase(int(u), h, t, int(w))
        for u, h, t, w in zip(examples.users, examples.histories, examples.targets, examples.times, strict=True)
    ]
    pools = []
    for start in range(0, len(cases), 512):
        for row in recommender.candidates(cases[start : start + 512], exclude_history=exclude_history):
            pools.append(row[row >= 0])
    return pools


def return_labels(split: Split) -> dict[tuple[int, int], np.ndarray]:
    """(user, item) -> times the customer returned that item in the training window."""
    labels: dict[tuple[int, int], list[int]] = {}
    for user, item, when in split.train_returns:
        labels.setdefault((int(user), int(item)), []).append(int(when))
    return {key: np.asarray(times) for key, times in labels.items()}


def ranker_candidates(
    examples: BasketExamples,
    pools: list[np.ndarray],
    returns: dict[tuple[int, int], np.ndarray],
    config: FitConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate rows [E, C] with -1 padding, purchase labels [E, C], return labels [E, C] with -1 = no label)."""
    width = config.ranker_candidates
    count = len(examples.targets)
    candidates = np.full((count, width), -1, dtype=np.int64)
    labels = np.zeros((count, width), dtype=np.float32)
    returned = np.full((count, width), -1.0, dtype=np.float32)
    for e, (pool, target) in enumerate(zip(pools, examples.targets, strict=True)):
        bought = np.isin(pool, target)
        positives, negatives = pool[bought], pool[~bought]
        if len(positives) > config.positives:
            positives = rng.choice(positives, config.positives, replace=False)
        negatives = rng.choice(negatives, min(len(negatives), width - len(positives)), replace=False)
        candidates[e, : len(positives)] = positives
        candidates[e, len(positives) : len(positives) + len(negatives)] = negatives
        labels[e, : len(positives)] = 1.0
        user, when = int(examples.users[e]), int(examples.times[e])
        for slot, item in enumerate(positives):
            times = returns.get((user, int(item)))
            returned[e, slot] = float(times is not None and bool((times >= when).any()))
    return candidates, labels, returned


def train_ranker(
    split: Split,
    examples: BasketExamples,
    snapshot: ItemFeatureSnapshot,
    tower: TwoTower,
    config: FitConfig,
    rng: np.random.Generator,
    curves: Curves,
    validation: list[EvalCase],
    progress: bool,
    similarity: np.ndarray | None = None,
    covisitation: CoVisitationTable | None = None,
) -> SequenceRanker:
    """``similarity``: the training baskets' co-occurrence (computed here when not given); ``covisitation``: the
    co-visitation source's table, so the training lists hold its candidates as serving will."""
    popularity, baskets = split.popularity(), split.basket_count()  # novelty's counts
    if similarity is None and config.cooccurrence_feature:
        similarity = cooccurrence(split)
    retrieval = serving_recommender(config, tower, None, snapshot, split, covisitation)
    # Both serving shapes: repeat (the customer's items are candidates) and discovery (they are excluded).
    pools = serving_pools(retrieval, examples) + serving_pools(retrieval, examples, exclude_history=True)
    examples = BasketExamples(
        np.concatenate([examples.users, examples.users]),
        np.concatenate([examples.times, examples.times]),
        examples.histories + examples.histories,
        examples.targets + examples.targets,
    )
    returns = return_labels(split)
    recent = retrieval.recent  # each example's recent sales as of its own day (the log_trending feature)
    weights = example_weights(examples.times, config.recency_half_life_days)
    retrieval_score = RetrievalScore(tower) if config.retrieval_feature else None
    cooccurrence_score = CooccurrenceScore(similarity) if config.cooccurrence_feature else None
    model: SequenceRanker | None = None
    optimiser = schedule = None
    best: tuple[float, int, dict] | None = None  # (validation NDCG@10, epoch, weights)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    categories = np.zeros(split.num_items, dtype=np.int64)
    steps = max(1, (len(examples.targets) + config.ranker_batch - 1) // config.ranker_batch)
    total_steps = steps * config.ranker_epochs
    bar = tqdm(total=config.ranker_epochs * steps, desc="ranker", unit="batch", disable=not progress)
    for epoch in range(config.ranker_epochs):
        candidates, labels, returned = ranker_candidates(examples, pools, returns, config, rng)
        history, tokens, features = _inputs(
            snapshot, examples.histories, candidates, config.ranker_history_length, recent, examples.times
        )
        if model is None:
            valid = tokens > 0
            model = SequenceRanker(
                split.num_items,
                features.shape[-1],
                config.dim,
                config.ranker_history_length,
                config.ranker_layers,
                feature_mean=features[valid].mean(axis=0),
                feature_std=features[valid].std(axis=0),
                attention_length=config.history_length,
                retrieval=retrieval_score,
                cooccurrence=cooccurrence_score,
                bought_before_column=CANDIDATE_FEATURES.index("log_history_count"),
            )
            sample = rng.choice(len(tokens), min(len(tokens), 2048), replace=False)
            for i, scorer in enumerate(model.scorers()):
                with torch.no_grad():
                    scores = scorer(torch.from_numpy(history[sample]), torch.from_numpy(tokens[sample])).numpy()
                scores = scores[tokens[sample] > 0]
                model.score_mean[i] = float(scores.mean())
                model.score_std[i] = float(max(scores.std(), 1e-3))
            optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.ranker_lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimiser, lambda done: max(0.0, 1.0 - done / total_steps) if config.ranker_lr_decay else 1.0
            )
        model.train()
        order = rng.permutation(len(tokens))
        for step in range(steps):
            batch = order[step * config.ranker_batch : (step + 1) * config.ranker_batch]
            purchase, returns_logit = model.logits(
                torch.from_numpy(history[batch]), torch.from_numpy(tokens[batch]), torch.from_numpy(features[batch])
            )
            weight = torch.from_numpy(weights[batch])
            mask = torch.from_numpy((tokens[batch] > 0).astype(np.float32)) * weight[:, None]
            target = torch.from_numpy(labels[batch])
            loss = (bce(purchase, target, reduction="none") * mask).sum() / mask.sum().clamp(min=1e-6)
            if config.listwise_weight > 0:
                loss = loss + config.listwise_weight * listwise_loss(purchase, target, mask > 0, weight)
            return_target = torch.from_numpy(returned[batch])
            return_mask = (return_target >= 0).to(torch.float32)
            if return_mask.sum() > 0:
                return_loss = bce(returns_logit, return_target.clamp(min=0), reduction="none")
                loss = loss + config.return_weight * (return_loss * return_mask).sum() / return_mask.sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            curves.ranker_loss.append(float(loss.item()))
            bar.update()
            bar.set_postfix(loss=f"{curves.ranker_loss[-1]:.3f}")
        model.eval()
        recommender = serving_recommender(config, tower, model, snapshot, split, covisitation)
        metrics = evaluate(recommender, validation, "repeat", popularity, categories, baskets=baskets).metrics
        curves.validation.append({"stage": "ranker", "epoch": epoch + 1, **_numbers(metrics)})
        log.info("ranker epoch %d: loss %.3f, validation %s", epoch + 1, curves.ranker_loss[-1], _short(metrics))
        if best is None or metrics["ndcg@10"] > best[0]:
            best = (metrics["ndcg@10"], epoch + 1, copy.deepcopy(model.state_dict()))
    bar.close()
    assert model is not None and best is not None
    if config.keep_best_epoch and best[1] != config.ranker_epochs:
        model.load_state_dict(best[2])
        log.info("ranker: kept epoch %d (validation NDCG@10 %.4f)", best[1], best[0])
    curves.ranker_kept_epoch = best[1] if config.keep_best_epoch else config.ranker_epochs
    model.eval()
    return model


def listwise_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over examples with a purchase of -mean(log softmax of the purchased candidates among the example's
    candidates): it rewards ordering a basket's items above the other candidates, which is what NDCG measures.
    ``weight`` [examples]: a weighted mean instead."""
    mask = mask.to(logits.dtype)
    log_p = torch.log_softmax(logits.masked_fill(mask == 0, -1e9), dim=1)
    positives = target * mask
    count = positives.sum(dim=1)
    per_example = -(log_p * positives).sum(dim=1) / count.clamp(min=1.0)
    has = (count > 0).to(logits.dtype)
    if weight is not None:
        has = has * weight
    return (per_example * has).sum() / has.sum().clamp(min=1e-6)


def example_weights(times: np.ndarray, half_life_days: float) -> np.ndarray:
    """float32 weight per example: 1 for the newest basket, halving every ``half_life_days`` before it (all 1 when
    the half-life is 0), so training leans towards the period that is served next."""
    if half_life_days <= 0 or times.size == 0:
        return np.ones(times.size, dtype=np.float32)
    age_days = (times.max() - times) / 86_400.0
    return (0.5 ** (age_days / half_life_days)).astype(np.float32)


def _inputs(snapshot, histories, candidates, length, recent, times, chunk: int = 2048):
    parts = [
        ranker_inputs(
            snapshot, histories[s : s + chunk], candidates[s : s + chunk], length, recent, times[s : s + chunk]
        )
        for s in range(0, len(histories), chunk)
    ]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def calibrate(fitted: FittedModels, validation: list[EvalCase], categories: np.ndarray) -> dict:
    """Fits P(purchase) = sigmoid(a * logit + b + c * bought_before) on the validation customers' serving-shaped
    candidate sets (training saw a different positive rate, and discovery-shaped lists; see
    ``SequenceRanker.calibrated``) and stores a, b and c in the ranker. a > 0, so the order within items bought
    before and within new items is the ranker's; c moves one group against the other. Fitted for likelihood, not
    for the order, c is kept only when it raises the validation customers' repeat NDCG@10 (as the ranker's epoch is
    chosen); otherwise a and b are fitted again without it. Returns the validation metrics of the model kept."""
    recommender = fitted.recommender()  # scores through fitted.ranker: sees every calibration set below
    logits, labels, before = _calibration_data(fitted, recommender, validation)
    with_shift = fit_calibration(logits, labels, before)
    without_shift = fit_calibration(logits, labels, np.zeros_like(before))
    popularity, baskets = fitted.split.popularity(), fitted.split.basket_count()  # novelty's counts

    def validated(calibration: tuple[float, float, float]) -> dict:
        _set_calibration(fitted.ranker, *calibration)
        return evaluate(recommender, validation, "repeat", popularity, categories, baskets=baskets).metrics

    metrics = validated(with_shift)
    without = validated(without_shift) if with_shift[2] != 0.0 else metrics
    kept = metrics["ndcg@10"] > without["ndcg@10"]
    chosen = with_shift if kept else without_shift
    _set_calibration(fitted.ranker, *chosen)
    fitted.calibration = {
        "scale": chosen[0],
        "bias": chosen[1],
        "bought_before": chosen[2],
        "bought_before_fitted": with_shift[2],
        "bought_before_kept": kept,
        "ndcg@10_with": metrics["ndcg@10"],
        "ndcg@10_without": without["ndcg@10"],
    }
    log.info(
        "calibration on %d validation candidates: a=%.3f b=%.3f c(bought before)=%.3f, %s (validation NDCG@10 "
        "%.4f with it, %.4f without)",
        len(labels),
        *with_shift,
        "kept" if kept else "dropped, a and b fitted again without it",
        metrics["ndcg@10"],
        without["ndcg@10"],
    )
    return metrics if kept else without


def _calibration_data(
    fitted: FittedModels, recommender: AisleRecommender, validation: list[EvalCase]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uncalibrated purchase logits, labels, bought before) of every candidate of the validation customers'
    serving-shaped (repeat) candidate sets, as ``recommender`` (``fitted.recommender()``) forms them."""
    ranker = fitted.ranker
    logits, labels, before = [], [], []
    for start in range(0, len(validation), 256):
        chunk = validation[start : start + 256]
        candidates = recommender.candidates(chunk, exclude_history=False)
        history, tokens, features = ranker_inputs(
            fitted.snapshot,
            [c.history for c in chunk],
            candidates,
            fitted.config.ranker_history_length,
            *recommender.dated(chunk),
        )
        with torch.no_grad():
            inputs = torch.from_numpy(features)
            purchase, _ = ranker.logits(torch.from_numpy(history), torch.from_numpy(tokens), inputs)
        valid = candidates >= 0
        relevant = np.zeros(candidates.shape, dtype=np.float32)
        for u, case in enumerate(chunk):
            relevant[u] = np.isin(candidates[u], case.target)
        logits.append(purchase.numpy()[valid])
        labels.append(relevant[valid])
        before.append(ranker.bought_before(inputs).numpy()[valid])
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(before)


def _set_calibration(ranker: SequenceRanker, scale: float, bias: float, shift: float) -> None:
    with torch.no_grad():
        ranker.logit_scale.fill_(scale)
        ranker.logit_bias.fill_(bias)
        ranker.bought_before_bias.fill_(shift)


def fit_calibration(logits: np.ndarray, labels: np.ndarray, bought_before: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood (a, b, c) of P(label) = sigmoid(a * logit + b + c * bought_before), a > 0; c = 0 when every
    candidate or none was bought before (nothing to tell the groups apart)."""
    x = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    before = torch.from_numpy(np.asarray(bought_before, dtype=np.float32))
    both = 0 < float(before.sum()) < len(before)
    log_scale, bias, shift = (torch.zeros(1, requires_grad=True) for _ in range(3))
    optimiser = torch.optim.LBFGS([log_scale, bias] + ([shift] if both else []), lr=0.5, max_iter=200)

    def closure():
        optimiser.zero_grad()
        logit = x * log_scale.exp() + bias + shift * before
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_scale.exp().item()), float(bias.item()), float(shift.item())
