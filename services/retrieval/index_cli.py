"""``aisle index``: build ScaNN index versions (optionally sharded) from an exported embedding index."""

from __future__ import annotations

import os
import shutil
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from services.core.paths import not_a_folder
from services.retrieval.availability import push_availability
from services.retrieval.settings import RetrievalSettings

if TYPE_CHECKING:  # the CLI imports the index code (numpy, ScaNN) only in the commands that use it
    from services.retrieval.build import ScannConfig


def shard_of(item_id: str, shards: int) -> int:
    """Stable shard assignment: the same item lands on the same shard in every build."""
    return zlib.crc32(item_id.encode("utf-8")) % shards


@click.group()
def index() -> None:
    """Build retrieval index versions (ScaNN or exact, whole or sharded); push stock and region updates."""


index.add_command(push_availability)


@index.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Index root to add the new version to (with --shards, shard-<i>/ folders under it).",
)
@click.option(
    "--ann",
    type=click.Choice(["auto", "scann", "exact"]),
    default="auto",
    show_default=True,
    help="auto: ScaNN above 20,000 items, exact search below.",
)
@click.option(
    "--shards",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Split the catalog across this many shards (separate retrieval replicas + a router).",
)
@click.option(
    "--leaves", type=click.IntRange(2, 1_000_000), default=None, help="ScaNN tree leaves [2 sqrt(N), at most N/50]."
)
@click.option(
    "--search-fraction",
    type=click.FloatRange(0.001, 1.0),
    default=0.1,
    show_default=True,
    help="Share of the leaves searched per query.",
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0.5, 1.0),
    default=None,
    help="Instead of --search-fraction: search the fewest leaves whose recall@10 against exact search reaches "
    "this (measured on 400 sampled queries after the build; the curve is kept in the version's metadata).",
)
@click.option(
    "--min-recall",
    type=click.FloatRange(0.0, 1.0),
    default=RetrievalSettings.model_fields["min_spot_check_recall"].default,
    show_default=True,
    help="Refuse to publish a ScaNN part whose recall@10 spot-check against exact search is lower: the servers "
    "run the same check at load (AISLE_RETRIEVAL_MIN_SPOT_CHECK_RECALL) and would refuse the version.",
)
@click.option(
    "--pre-reorder",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Neighbours kept for exact re-scoring.",
)
@click.pass_context
def build(
    ctx: click.Context,
    source: Path,
    out: Path,
    ann: str,
    shards: int,
    leaves: int | None,
    search_fraction: float,
    target_recall: float | None,
    min_recall: float,
    pre_reorder: int,
) -> None:
    """Build a new index version from SOURCE, an index root (its newest version is used) or one version folder (as
    `aisle train` exports them)."""
    if target_recall is not None and ctx.get_parameter_source("search_fraction") is not ParameterSource.DEFAULT:
        raise click.UsageError("pass --search-fraction or --target-recall, not both (the tuning picks the fraction)")
    scann_flags = tuple(
        f"--{name.replace('_', '-')}"
        for name in ("leaves", "search_fraction", "pre_reorder", "min_recall")
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    )
    if ann == "exact" and scann_flags:
        raise click.UsageError(f"{', '.join(scann_flags)} tune a ScaNN build; --ann exact has none (drop them)")
    if target_recall is not None and ann == "exact":
        raise click.UsageError("--target-recall tunes a ScaNN search: exact search has recall 1 (drop --ann exact)")
    from services.retrieval.index import METADATA_FILE, InvalidIndex, latest_version, load_index, new_version

    if (why := not_a_folder(out)) is not None:
        raise click.ClickException(f"--out {out} {why}: give a folder of index versions (made if missing)")
    if (out / METADATA_FILE).is_file():  # a version folder: building into it would corrupt it
        raise click.ClickException(f"--out {out} is an index version: give the folder of versions, {out.parent}")
    click.echo(f"reading the source index {source} ...")
    try:
        artifact = load_index(latest_version(source))
    except InvalidIndex as exc:
        raise click.ClickException(f"cannot read the source index: {exc}") from None
    if shards > len(artifact.item_ids):
        raise click.ClickException(
            f"--shards {shards} is more than the index's {len(artifact.item_ids)} items: some shards would be empty"
        )
    # One version name for the router and every shard: they are published, pinned and rolled out together.
    version = new_version(out, *(out / part for part in _parts(shards)))
    # A sharded version is built whole in a hidden folder and published only once every part is built, so a shard
    # that fails (a recall target it cannot reach) leaves no router or shard of the new version behind.
    root = out / f".building-{version}" if shards > 1 else out
    plan = BuildPlan(ann, shards, leaves, search_fraction, target_recall, pre_reorder, min_recall, scann_flags)
    try:
        _build_parts(artifact, root, version, plan)
    except BaseException:
        if shards > 1:
            shutil.rmtree(root, ignore_errors=True)
        raise
    if shards > 1:
        _publish_parts(root, out, version, shards)


def _parts(shards: int) -> list[str]:
    """The folders of a sharded index's parts under its root, in the order they are published: the shards, then the
    router."""
    return [*(f"shard-{shard}" for shard in range(shards)), "router"]


def _publish_parts(root: Path, out: Path, version: str, shards: int) -> None:
    """Moves every part of a sharded version from ``root`` into ``out``: the shards first and the router, which
    declares the version to its shards' callers, last; interrupted (Ctrl-C, an error), the parts moved are taken
    back out and ``root`` goes, so no part of the version is left published or hidden."""
    published: list[Path] = []
    try:
        for part in _parts(shards):
            (out / part).mkdir(parents=True, exist_ok=True)
            os.replace(root / part / version, out / part / version)
            published.append(out / part / version)
    except BaseException:
        for folder in published:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for folder in published:
        click.echo(f"published {folder}")


@dataclass(frozen=True)
class BuildPlan:
    """How ``aisle index build`` builds each part (its options)."""

    ann: str
    shards: int
    leaves: int | None
    search_fraction: float
    target_recall: float | None
    pre_reorder: int
    min_recall: float = 0.0
    #: The ScaNN options given on the command line: a part searched exactly says it did not use them.
    scann_flags: tuple[str, ...] = ()

    def scann_config(self, items: int) -> ScannConfig:
        """The ScaNN configuration of a part holding ``items`` items."""
        from services.retrieval.build import ScannConfig

        config = ScannConfig.for_items(items, self.search_fraction)
        if self.leaves:
            leaves = min(self.leaves, items)
            config = replace(config, num_leaves=leaves, leaves_to_search=max(1, int(leaves * self.search_fraction)))
        return replace(config, pre_reorder_num_neighbors=self.pre_reorder, reorder_num_neighbors=self.pre_reorder)


def _build_parts(artifact, root: Path, version: str, plan: BuildPlan) -> None:
    """Writes version ``version`` of ``artifact`` under ``root``: the whole index, or a router and ``plan.shards``
    shards (``root/router``, ``root/shard-<i>``)."""
    import numpy as np
    from tqdm.auto import tqdm

    from services.retrieval.build import EXACT_BELOW_ITEMS
    from services.retrieval.index import save_index, save_index_like

    shards = plan.shards

    ids = np.array(artifact.item_ids)
    assignment = (
        np.array([shard_of(item, shards) for item in artifact.item_ids]) if shards > 1 else np.zeros(len(ids), int)
    )
    if shards > 1:
        # The router's global query data: every item's vector and the query tower, searched by no one.
        router = save_index_like(
            artifact,
            root / "router",
            version=version,
            sharding={"shards": shards},
            covisitation=None,
            covisitation_anchors=None,
        )
        click.echo(f"wrote {router} (router query data, {len(artifact)} items)")
    with tqdm(total=shards, desc="building index", unit="shard") as bar:
        for shard in range(shards):
            rows = np.flatnonzero(assignment == shard)
            use_scann = plan.ann == "scann" or (plan.ann == "auto" and rows.size > EXACT_BELOW_ITEMS)
            build_ann = None
            if use_scann:
                build_ann = _scann_builder(plan.scann_config(rows.size), plan.target_recall, plan.min_recall, shard)
                click.echo(f"shard {shard}: training the ScaNN tree over {rows.size} items, then its recall check")
            elif plan.target_recall is not None or plan.scann_flags:
                ignored = ", ".join(plan.scann_flags) or "--target-recall"
                click.echo(
                    f"shard {shard}: {rows.size} items are searched exactly (recall 1; --ann auto builds ScaNN past "
                    f"{EXACT_BELOW_ITEMS:,}): {ignored} not used"
                )

            # A shard answers co-visitation for any anchor in the catalog, with its own items as candidates.
            covisitation, anchors = artifact.covisitation, artifact.covisitation_anchors
            if covisitation is not None and shards > 1:
                covisitation = covisitation.restricted(rows, len(artifact))
                anchors = anchors if anchors is not None else artifact.item_ids
            bar.set_postfix(shard=shard, items=rows.size, ann="scann" if use_scann else "exact")
            path = save_index(
                root / f"shard-{shard}" if shards > 1 else root,
                item_ids=list(ids[rows]),
                embeddings=artifact.embeddings[rows],
                popularity=artifact.popularity[rows],
                categories=[artifact.categories[r] for r in rows],
                brands=[artifact.brands[r] for r in rows],
                model_name=artifact.model_name,
                model_version=artifact.model_version,
                regions=artifact.regions,
                sold_in=artifact.sold_in[rows],
                sold_everywhere=artifact.sold_everywhere[rows],
                region_popularity=artifact.region_popularity[:, rows],
                popularity_regions=artifact.popularity_regions,
                trending=artifact.trending[rows],
                stock=artifact.stock[rows],
                query_tower=artifact.query_tower,
                data_as_of=artifact.data_as_of,  # its stock data's time: later updates outlive the swap
                build_ann=build_ann,
                version=version,
                sharding={"shards": shards, "shard": shard} if shards > 1 else None,
                covisitation=covisitation,
                covisitation_anchors=anchors,
            )
            bar.update()
            click.echo(f"wrote {path} ({rows.size} items, {'scann' if use_scann else 'exact'})")


def _scann_builder(config, target_recall: float | None, min_recall: float, shard: int):
    """``build_ann`` for :func:`save_index`: builds the ScaNN searcher (tuned to ``target_recall`` if given) and
    says what the tuning chose; an unreachable target, or a searcher that fails the servers' recall spot-check
    (below ``min_recall``), is a CLI error and nothing is published."""
    from services.retrieval.build import ScannConfig, TargetRecallUnreachable, build_scann, spot_check_recall
    from services.retrieval.search import ScannSearcher

    def build_ann(embeddings, folder):
        try:
            built = build_scann(embeddings, folder, config, target_recall)
        except TargetRecallUnreachable as exc:
            raise click.ClickException(f"shard {shard}: {exc}") from None
        fields = ScannConfig.__dataclass_fields__
        searcher = ScannSearcher(folder, ScannConfig(**{k: v for k, v in built.items() if k in fields}).search_params())
        recall = spot_check_recall(searcher, embeddings)  # the check the servers run when they load the version
        if recall < min_recall:
            raise click.ClickException(
                f"shard {shard}: recall@10 spot-check {recall:.3f} is below --min-recall {min_recall:.3f}, so the "
                "servers would refuse this version; nothing was published. Search more leaves (a higher "
                "--search-fraction, or --target-recall) or use --ann exact"
            )
        if "tuning" in built:
            [point] = [p for p in built["tuning"]["curve"] if p["leaves_to_search"] == built["leaves_to_search"]]
            click.echo(
                f"shard {shard}: searching {point['leaves_to_search']} of {built['num_leaves']} leaves, recall@10 "
                f"{point['recall']:.3f} (target {target_recall}), {point['query_us']:.0f} us per query"
            )
        return built

    return build_ann
