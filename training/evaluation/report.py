"""``aisle evaluate``: the exported artefacts of a training run against baselines, on the same split.

It evaluates what is served: the ranker's ``model.onnx`` and ``item_features.npz`` from the model repository, the
item embeddings from the retrieval index and the query tower's ONNX file, all through ONNX Runtime. It writes the
JSON report (``{"dataset", "protocols": {"repeat": {"models": {...}}, "discovery": {...}}}``), a Markdown report
beside it and PNG plots (metric bars, calibration curve, training curves).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from services.ranking.features import FEATURES_FILE, ItemFeatureSnapshot, ItemVocabulary
from services.ranking.model_config import (
    CANDIDATES_INPUT,
    HISTORY_INPUT,
    MODEL_FILE,
    PURCHASE_OUTPUT,
    RETURN_OUTPUT,
    VOCABULARY_FILE,
)
from services.retrieval.index import InvalidIndex, load_index
from training.data.loaders import load_dataset
from training.data.splits import split_dataset
from training.evaluation.aisle import AisleRecommender, TwoTowerRetriever
from training.evaluation.baselines import BuyAgain, ItemToItem, Popularity
from training.evaluation.metrics import paired_bootstrap
from training.evaluation.offline import PROTOCOLS, ModelResult, evaluate, protocol_cases
from training.features import TRENDING_DAYS, RecentSales

log = logging.getLogger(__name__)

BASELINES = ("popularity", "item_to_item", "buy_again")
REPORTED = ("ndcg@10", "hr@10", "recall@10", "recall@100", "coverage", "novelty", "diversity")


class ArtifactError(RuntimeError):
    pass


def onnx_functions(run: dict, history_length: int = 50):
    """(query_fn, rank_fn) over the exported ONNX files, and the snapshot/vocabulary/embeddings they use."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    ranker_dir = Path(run["ranker_dir"])
    ranker = ort.InferenceSession(str(ranker_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    query = ort.InferenceSession(run["query_tower"], options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in ranker.get_outputs()]

    def rank_fn(history, candidates, features):
        feeds = {HISTORY_INPUT: history, CANDIDATES_INPUT: candidates, "candidate_features": features}
        result = ranker.run([PURCHASE_OUTPUT] + ([RETURN_OUTPUT] if RETURN_OUTPUT in outputs else []), feeds)
        return result[0], result[1] if len(result) > 1 else None

    def query_fn(history):
        return query.run(None, {HISTORY_INPUT: history})[0]

    return query_fn, rank_fn


def load_run(artifacts: Path) -> dict:
    path = artifacts / "training_run.json"
    if not path.is_file():
        raise ArtifactError(f"{path} not found: point --artifacts at the --out folder of `aisle train`")
    return json.loads(path.read_text(encoding="utf-8"))


def check_run_artifacts(run: dict) -> None:
    """The run's ranker version, index version and query tower are still on disk, or :class:`ArtifactError`
    saying where they went (a rollback retires a ranker version), before any data is read."""
    from services.ranking.repository import RETIRED_PREFIX

    for key, what in (("ranker_dir", "ranker version"), ("index_dir", "index version"), ("query_tower", "query tower")):
        path = Path(run[key])
        if path.exists():
            continue
        retired = sorted(path.parent.glob(f"{RETIRED_PREFIX}{path.name}-*")) if key == "ranker_dir" else []
        where = f"was retired (now {retired[-1]}, by `aisle models rollback`)" if retired else "is gone"
        raise ArtifactError(
            f"the run's {what} {path} {where}: evaluate a run whose artefacts are in place, or train again"
        )


def evaluate_artifacts(
    artifacts: Path,
    out: Path,
    data: Path | None = None,
    bootstrap_samples: int = 2000,
    seed: int = 0,
    progress: bool = True,
    plots: bool = True,
) -> dict:
    run = load_run(artifacts)
    check_run_artifacts(run)
    spec = dict(run["data"])
    if data is not None:
        spec["path"] = str(data)
    dataset = load_dataset(spec)
    if dataset.fingerprint != run["dataset"]["fingerprint"]:
        raise ArtifactError(
            f"the data ({dataset.fingerprint}) is not what the models were trained on ({run['dataset']['fingerprint']})"
        )
    split = split_dataset(dataset)
    catalog = dataset.catalog
    ranker_dir, index_dir = Path(run["ranker_dir"]), Path(run["index_dir"])
    vocabulary = ItemVocabulary.read(ranker_dir / VOCABULARY_FILE)
    if vocabulary.tokens(catalog.item_ids).tolist() != list(range(1, len(catalog) + 1)):
        raise ArtifactError(f"{ranker_dir / VOCABULARY_FILE} does not follow the catalog's order")
    try:
        index = load_index(index_dir)
    except InvalidIndex as exc:
        raise ArtifactError(str(exc)) from None
    if index.item_ids != catalog.item_ids:
        raise ArtifactError(f"{index_dir}: item ids differ from the catalog's")
    config = run["training"]["config"]
    if config.get("co_visit", 0) and (index.covisitation is None or index.covisitation_anchors is not None):
        raise ArtifactError(
            f"{index_dir}: the run asks for {config['co_visit']} co-visited candidates but the index has no "
            "co-visitation table keyed by its own rows; evaluate the index `aisle train` exported (not a shard)"
        )
    embeddings = index.embeddings
    try:
        snapshot = ItemFeatureSnapshot.load(ranker_dir / FEATURES_FILE).require_current(ranker_dir / FEATURES_FILE)
    except (OSError, ValueError, KeyError) as exc:  # unreadable, or another release's columns
        raise ArtifactError(str(exc)) from None
    query_fn, rank_fn = onnx_functions(run)
    popularity, baskets = split.popularity(), split.basket_count()  # for novelty (the models date their own)
    recent = RecentSales.from_split(split, config.get("trending_days", TRENDING_DAYS))
    aisle = AisleRecommender.from_config(
        config, query_fn, embeddings, rank_fn, snapshot, popularity, index.covisitation, recent
    )
    models = [aisle, TwoTowerRetriever(query_fn, embeddings, config["history_length"])]
    models += [Popularity(split), ItemToItem(split), BuyAgain(split)]
    categories = np.unique(catalog.categories, return_inverse=True)[1]
    report: dict = {
        "dataset": dataset.name,
        "data": {"spec": spec, "fingerprint": dataset.fingerprint, "items": len(catalog), **split.summary()},
        "artifacts": {"ranker": str(ranker_dir), "index": str(index_dir), "query_tower": run["query_tower"]},
        "created_at": datetime.now(UTC).isoformat(),
        "notes": {
            "ranking": "full ranking over the whole catalog, binary relevance = items of the held-out last basket",
            "two_tower": "the retrieval stage alone (its recall@100 is the retrieval stage's)",
            "discovery": "items in the customer's history excluded; target = the basket's new items",
            "split": "per-customer hold-out, no date cut-off across customers: popularity and recent sales are "
            "counted as of each case's day; co-occurrence and the models' training data over the whole training "
            "part, which holds other customers' later baskets (docs/evaluation.md, Protocol)",
        },
        "protocols": {},
    }
    results: dict[str, dict[str, ModelResult]] = {}
    for protocol in PROTOCOLS:
        cases = protocol_cases(split.test, protocol)
        if not cases:  # no test basket holds an item new to its customer (tiny data): nothing to measure
            results[protocol] = {}
            report["protocols"][protocol] = {"users": 0, "models": {}, "comparison": {}}
            log.warning("%s: no test customer to evaluate; the protocol is left out", protocol)
            continue
        results[protocol] = {
            m.name: evaluate(m, cases, protocol, popularity, categories, progress=progress, baskets=baskets)
            for m in models
        }
        section = {
            "users": len(cases),
            "models": {name: _metrics(result) for name, result in results[protocol].items()},
        }
        section["comparison"] = _comparisons(results[protocol], protocol, bootstrap_samples, seed)
        report["protocols"][protocol] = section
        log.info("%s: %s", protocol, {n: round(r.metrics["ndcg@10"], 4) for n, r in results[protocol].items()})
    report["calibration"] = results["repeat"]["aisle"].calibration if results["repeat"] else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    curves_path = artifacts / "training_curves.json"
    curves = json.loads(curves_path.read_text(encoding="utf-8")) if curves_path.is_file() else None
    figures = write_plots(report, curves, out.with_suffix("")) if plots else []
    write_markdown(report, run, figures, out.with_suffix(".md"))
    return report


def _metrics(result: ModelResult) -> dict:
    metrics = {name: result.metrics[name] for name in REPORTED}
    for name in ("ece_candidates", "ece_top10"):
        if name in result.metrics:
            metrics[name] = result.metrics[name]
    return metrics


def _comparisons(results: dict[str, ModelResult], protocol: str, samples: int, seed: int) -> dict:
    """Paired bootstrap of Aisle against the best baseline (by NDCG@10) and against item-to-item."""
    best = max(BASELINES, key=lambda name: results[name].metrics["ndcg@10"])
    aisle = results["aisle"].per_user
    out = {"best_baseline": best}
    for other in dict.fromkeys([best, "item_to_item"]):
        out[f"aisle_vs_{other}"] = {
            metric: paired_bootstrap(aisle[metric], results[other].per_user[metric], samples, seed)
            for metric in ("ndcg@10", "recall@100")
        }
    return out


def write_plots(report: dict, curves: dict | None, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    names = list(report["protocols"]["repeat"]["models"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, protocol in enumerate(PROTOCOLS):
        models = report["protocols"][protocol]["models"]
        for col, metric in enumerate(("ndcg@10", "hr@10", "recall@100")):
            ax = axes[row, col]
            values = [models[n][metric] if n in models else 0.0 for n in names]
            ax.bar(names, values, color=["C3" if n == "aisle" else "C0" for n in names])
            ax.set_title(f"{protocol}: {metric}")
            ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    figures.append(stem.parent / f"{stem.name}_metrics.png")
    fig.savefig(figures[-1], dpi=90)
    plt.close(fig)

    calibration = report.get("calibration") or {}
    fig, ax = plt.subplots(figsize=(5, 5))
    for key, style in (("candidates", "o-"), ("top10", "s--")):
        bins = (calibration.get(key) or {}).get("bins") or []
        if bins:
            ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], style, label=key)
    top = max([0.05] + [b["predicted"] for k in calibration for b in (calibration[k] or {}).get("bins", [])])
    ax.plot([0, top], [0, top], ":", color="grey", label="perfect")
    ax.set_xlabel("predicted P(purchase)")
    ax.set_ylabel("observed purchase rate")
    ax.set_title("calibration (repeat protocol, test)")
    ax.legend()
    figures.append(stem.parent / f"{stem.name}_calibration.png")
    fig.savefig(figures[-1], dpi=90)
    plt.close(fig)

    if curves:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, key in zip(axes[:2], ("tower_loss", "ranker_loss"), strict=True):
            ax.plot(curves[key], linewidth=0.6)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("step")
        for stage, style in (("two_tower", "o-"), ("ranker", "s-")):
            points = [p for p in curves["validation"] if p["stage"] == stage]
            if points:
                axes[2].plot([p["epoch"] for p in points], [p["ndcg@10"] for p in points], style, label=stage)
        kept_epoch = curves.get("ranker_kept_epoch")
        kept = [p for p in curves["validation"] if p["stage"] == "ranker" and p["epoch"] == kept_epoch]
        if kept:
            axes[2].plot([kept[0]["epoch"]], [kept[0]["ndcg@10"]], "k*", markersize=12, label="ranker kept")
        axes[2].set_title("validation NDCG@10 (repeat)")
        axes[2].set_xlabel("epoch")
        axes[2].legend()
        fig.tight_layout()
        figures.append(stem.parent / f"{stem.name}_training.png")
        fig.savefig(figures[-1], dpi=90)
        plt.close(fig)
    return figures


def write_markdown(report: dict, run: dict, figures: list[Path], path: Path) -> None:
    lines = [
        f"# Offline evaluation: {report['dataset']}",
        "",
        f"Data `{report['data']['spec'].get('path', report['data']['spec'])}` ({report['data']['fingerprint']}), "
        f"{report['data']['items']} items, {report['data']['test_users']} test customers; "
        f"ranker `{report['artifacts']['ranker']}`.",
        "Full ranking over the whole catalog; target = the customer's last basket (per-customer hold-out, "
        "no date cut-off: see the report's notes).",
        "",
    ]
    for protocol in PROTOCOLS:
        section = report["protocols"][protocol]
        lines += [f"## {protocol} protocol ({section['users']} customers)", ""]
        lines.append("| model | " + " | ".join(REPORTED) + " |")
        lines.append("|---|" + "---|" * len(REPORTED))
        for name, metrics in section["models"].items():
            lines.append(f"| {name} | " + " | ".join(f"{metrics[m]:.4f}" for m in REPORTED) + " |")
        lines.append("")
        comparison = section["comparison"]
        if not comparison:
            lines += ["No test customer to evaluate under this protocol.", ""]
            continue
        lines.append(f"Best baseline by NDCG@10: **{comparison['best_baseline']}**.")
        lines.append("")
        for key, metrics in comparison.items():
            if key == "best_baseline":
                continue
            for metric, b in metrics.items():
                lines.append(
                    f"- {key.replace('_', ' ')} {metric}: ratio {b['ratio']:.3f} "
                    f"(95% CI {b['low']:.3f} to {b['high']:.3f}, paired bootstrap over {b['users']} customers)"
                )
        lines.append("")
    calibration = (report.get("calibration") or {}).get("top10")
    if calibration and calibration.get("ece") is not None:
        lines += [
            f"Calibration of P(purchase) on the recommended top 10 (repeat): ECE {calibration['ece']:.4f}, "
            f"mean predicted {calibration['mean_predicted']:.4f}, observed {calibration['observed_rate']:.4f}.",
            "",
        ]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
