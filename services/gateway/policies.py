"""Policies: which components run for a surface (and per experiment variant), as data validated at start-up.

A policy file (YAML) names policies, maps each surface to one, and may define an A/B/n experiment whose variants
swap policies per surface. Start-up refuses a file with an unknown component, a bad parameter, a component whose
catalog features are missing, a surface without a policy, or a variant naming an unknown policy, and says where.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aisle.common.v1 import common_pb2 as common
from services.gateway.catalog import ItemCatalog
from services.gateway.components.base import ComponentBase, Dependencies
from services.gateway.components.filters import (
    ComplianceFilter,
    InStockFilter,
    RecentlyBoughtFilter,
    RequestExclusionFilter,
)
from services.gateway.components.scorers import ExpectedProfitScorer, RankingScorer
from services.gateway.components.selectors import (
    BrandQuotaSelector,
    ExplorationSelector,
    ExposureCapSelector,
    MMRDiversitySelector,
    SortSelector,
    TruncateSelector,
)
from services.gateway.components.side_effects import ExposureLogger
from services.gateway.components.sources import CachedPopularSource, RetrievalSource, RetrievalSources
from services.gateway.pipeline import Pipeline

DEFAULT_POLICY_FILE = Path(__file__).with_name("policies.yaml")

#: Component classes by the name a policy file uses, and the step each may appear in.
COMPONENTS: dict[str, type[ComponentBase]] = {
    cls.__name__: cls
    for cls in (
        RetrievalSources,
        RetrievalSource,
        CachedPopularSource,
        RequestExclusionFilter,
        ComplianceFilter,
        RecentlyBoughtFilter,
        InStockFilter,
        RankingScorer,
        ExpectedProfitScorer,
        SortSelector,
        ExposureCapSelector,
        MMRDiversitySelector,
        BrandQuotaSelector,
        ExplorationSelector,
        TruncateSelector,
        ExposureLogger,
    )
}
STEPS = {
    "sources": "source",
    "fallback": "source",
    "filters": "filter",
    "scorers": "scorer",
    "selectors": "selector",
    "side_effects": "side_effect",
}
SURFACES = {
    "home": common.SURFACE_HOME,
    "product_page": common.SURFACE_PRODUCT_PAGE,
    "cart": common.SURFACE_CART,
    "email": common.SURFACE_EMAIL,
}


class PolicyError(ValueError):
    """The policy file is unusable; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentSpec(_Strict):
    component: str
    #: Name in logs, spans and metrics; defaults to the component's class name.
    name: str = ""
    params: dict[str, Any] = Field(default_factory=dict)


class PolicySpec(_Strict):
    sources: list[ComponentSpec] = Field(min_length=1)
    fallback: list[ComponentSpec] = []
    filters: list[ComponentSpec] = []
    scorers: list[ComponentSpec] = []
    selectors: list[ComponentSpec] = []
    side_effects: list[ComponentSpec] = []
    candidate_limit: int = Field(500, ge=1, le=5000)


class VariantSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    weight: float = Field(gt=0)
    #: surface -> policy, overriding the default mapping for this variant.
    surfaces: dict[str, str] = {}
    #: Ranking model (and version) this variant asks for; empty: whatever the ranking service serves.
    model_name: str = ""
    model_version: str = Field("", pattern=r"^[0-9]*$")


class ExperimentSpec(_Strict):
    name: str
    salt: str
    variants: list[VariantSpec]

    @model_validator(mode="after")
    def _unique(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or not names:
            raise ValueError("variant names must be unique and at least one variant is needed")
        return self


class PolicyFile(_Strict):
    version: str
    policies: dict[str, PolicySpec]
    surfaces: dict[str, str]
    experiment: ExperimentSpec | None = None


@dataclass(frozen=True)
class PolicySet:
    """Built pipelines, the surface mapping per variant, and the experiment's assignment."""

    version: str
    pipelines: dict[str, Pipeline]
    surfaces: dict[int, str]  # surface enum -> policy name (control)
    experiment: ExperimentSpec | None

    def variant_for(self, subject_key: str, override: str = "") -> str:
        """Deterministic A/B/n assignment by hashing the (already hashed) subject key with the salt; ``override``
        must name a variant of the experiment (KeyError otherwise, and when none runs)."""
        if self.experiment is None:
            if override:
                raise KeyError(override)
            return ""
        names = [v.name for v in self.experiment.variants]
        if override:
            if override not in names:
                raise KeyError(override)
            return override
        digest = hashlib.sha256(f"{self.experiment.salt}:{subject_key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in self.experiment.variants)
        for variant in self.experiment.variants:
            point -= variant.weight
            if point < 0:
                return variant.name
        return names[-1]

    def model_for(self, variant: str) -> tuple[str, str]:
        """(model name, model version) the variant's ranking calls name; empty strings mean the served default."""
        if self.experiment is None or not variant:
            return "", ""
        spec = next(v for v in self.experiment.variants if v.name == variant)
        return spec.model_name, spec.model_version

    def pipeline_for(self, surface: int, variant: str) -> Pipeline:
        name = self.surfaces[surface]
        if self.experiment is not None and variant:
            spec = next(v for v in self.experiment.variants if v.name == variant)
            surface_name = next(k for k, v in SURFACES.items() if v == surface)
            name = spec.surfaces.get(surface_name, name)
        return self.pipelines[name]


def load_policies(
    path: Path, catalog: ItemCatalog, deps: Dependencies, ranking_max_candidates: int | None = None
) -> PolicySet:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(
            f"cannot read policy file {path}: {exc}; set AISLE_GATEWAY_POLICY_FILE (--policy-file) to a policies "
            "YAML file (the shipped one: services/gateway/policies.yaml)"
        ) from None
    return build_policies(raw, catalog, deps, source=str(path), ranking_max_candidates=ranking_max_candidates)


def build_policies(
    raw: Any,
    catalog: ItemCatalog,
    deps: Dependencies,
    source: str = "policies",
    ranking_max_candidates: int | None = None,
) -> PolicySet:
    """The policies of ``raw`` (a parsed policy file), or :class:`PolicyError` naming every problem. With
    ``ranking_max_candidates`` (ranking's limit), a policy that would send ranking more candidates is one."""
    try:
        spec = PolicyFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{source}: {problems}") from None
    problems: list[str] = []
    for surface, policy in spec.surfaces.items():
        if surface not in SURFACES:
            problems.append(f"surfaces.{surface}: unknown surface (known: {', '.join(SURFACES)})")
        if policy not in spec.policies:
            problems.append(f"surfaces.{surface}: unknown policy {policy!r}")
    for surface in SURFACES:
        if surface not in spec.surfaces:
            problems.append(f"surfaces: no policy for {surface}")
    if spec.experiment is not None:
        for variant in spec.experiment.variants:
            for surface, policy in variant.surfaces.items():
                if surface not in SURFACES or policy not in spec.policies:
                    problems.append(f"experiment.variants.{variant.name}.surfaces.{surface}: unknown {policy!r}")
    pipelines = {}
    for name, policy in spec.policies.items():
        pipeline, errors = _build_pipeline(name, spec.version, policy, catalog, deps, ranking_max_candidates)
        problems += errors
        pipelines[name] = pipeline
    if problems:
        raise PolicyError(f"{source}: " + "; ".join(problems))
    surfaces = {SURFACES[s]: p for s, p in spec.surfaces.items()}
    return PolicySet(spec.version, pipelines, surfaces, spec.experiment)


def _build_pipeline(
    name: str,
    version: str,
    policy: PolicySpec,
    catalog: ItemCatalog,
    deps: Dependencies,
    ranking_max_candidates: int | None = None,
):
    errors: list[str] = []
    steps: dict[str, list] = {}
    for step, kind in STEPS.items():
        built = []
        for i, component_spec in enumerate(getattr(policy, step)):
            where = f"policies.{name}.{step}[{i}]"
            cls = COMPONENTS.get(component_spec.component)
            if cls is None:
                errors.append(f"{where}: unknown component {component_spec.component!r}")
                continue
            if cls.kind != kind:
                errors.append(f"{where}: {cls.__name__} is a {cls.kind}, not a {kind}")
                continue
            if missing := catalog.missing(cls.requires):
                errors.append(f"{where}: {cls.__name__} needs catalog feature(s) {missing}, which the catalog lacks")
                continue
            try:
                params = cls.Params.model_validate(component_spec.params)
            except ValidationError as exc:
                detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())
                errors.append(f"{where} ({cls.__name__}): {detail}")
                continue
            built.append(cls(component_spec.name or cls.__name__, params, deps))
        steps[step] = built
    scorers = [spec.component for spec in policy.scorers]
    if (
        "RankingScorer" in scorers
        and ranking_max_candidates is not None
        and policy.candidate_limit > ranking_max_candidates
    ):
        errors.append(
            f"policies.{name}.candidate_limit: {policy.candidate_limit} is more than ranking accepts "
            f"({ranking_max_candidates}, AISLE_GATEWAY_RANKING_MAX_CANDIDATES: the ranking service's "
            "max_candidates), so every call to it would be refused"
        )
    if "ExpectedProfitScorer" in scorers and "RankingScorer" not in scorers[: scorers.index("ExpectedProfitScorer")]:
        errors.append(
            f"policies.{name}.scorers: ExpectedProfitScorer must come after RankingScorer (it weighs the P(purchase) "
            "and relevance that RankingScorer sets; before it, or without it, every item's expected profit is the "
            "same and the answer silently keeps retrieval order)"
        )
    order = [spec.component for spec in policy.selectors]
    if "BrandQuotaSelector" in order and "ExposureCapSelector" in order[order.index("BrandQuotaSelector") :]:
        errors.append(
            f"policies.{name}.selectors: ExposureCapSelector must come before BrandQuotaSelector (the quota keeps "
            "only k + depth rows, so a cap after it could find them all over-exposed and show them anyway)"
        )
    last = policy.selectors[-1].component if policy.selectors else None
    if last != TruncateSelector.__name__:
        errors.append(
            f"policies.{name}.selectors: must end with TruncateSelector (without it the answer holds up to "
            f"candidate_limit ({policy.candidate_limit}) items, not the k the request asked for)"
        )
    pipeline = Pipeline(
        name=name,
        version=version,
        sources=steps["sources"],
        fallback=steps["fallback"],
        filters=steps["filters"],
        scorers=steps["scorers"],
        selectors=steps["selectors"],
        side_effects=steps["side_effects"],
        candidate_limit=policy.candidate_limit,
    )
    return pipeline, errors
