"""The images, checked statically (no Docker engine runs on the build machines): multi-stage from a slim Python,
a non-root numeric user, an entry point that runs the right service, and only the extras that service needs."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import K8S, PROJECT_ROOT, SERVICES

DOCKER = PROJECT_ROOT / "docker"
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
#: What each image may install besides the base dependencies. Ranking needs exactly one ONNX Runtime build;
#: retrieval runs an index's query tower with ONNX Runtime on CPU; the gateway runs no model.
ALLOWED_EXTRAS = {"gateway": set(), "retrieval": {"cpu"}, "ranking": {"cpu", "gpu"}, "training": {"cpu", "train"}}
REQUIRED_EXTRAS = {"gateway": set(), "retrieval": {"cpu"}, "ranking": set(), "training": {"train"}}
IMAGES = [*SERVICES, "training"]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions (continuations joined, comments dropped) and ARG defaults expanded."""
    text = re.sub(r"\\\n", " ", code_lines(path))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        scope = stages[-1].args if stages else global_args
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            scope[name] = expand(default, {**global_args, **scope})
        elif instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(expand(words[0], global_args), name))
        else:
            assert stages, f"{path.name}: {instruction} before FROM"
            stages[-1].instructions.append((instruction, expand(rest, {**global_args, **stages[-1].args})))
    return stages


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def dockerfile(image: str) -> Path:
    return DOCKER / f"{image}.Dockerfile"


def command_of(stage: Stage) -> list[str]:
    """ENTRYPOINT + CMD of the final stage, both in exec (JSON) form."""
    parts: dict[str, list[str]] = {}
    for instruction, rest in stage.instructions:
        if instruction in ("ENTRYPOINT", "CMD"):
            assert rest.startswith("["), f"{instruction} {rest}: use the exec form, so signals reach the process"
            parts[instruction] = json.loads(rest)
    return parts.get("ENTRYPOINT", []) + parts.get("CMD", [])


def installed_extras(stages: list[Stage]) -> list[set[str]]:
    """The extras of each `pip install` of the project (`.` or `.[a,b]`), in every stage."""
    found = []
    for stage in stages:
        for instruction, rest in stage.instructions:
            if instruction != "RUN":
                continue
            for command in re.split(r"&&|;", rest):
                words = shlex.split(command)
                if len(words) > 2 and words[0].endswith("pip") and words[1] == "install":
                    for word in words[2:]:
                        match = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", word)
                        if match:
                            found.append({e.strip() for e in (match.group(1) or "").split(",") if e.strip()})
    return found


def code_lines(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_is_multi_stage_from_a_slim_python(image: str):
    stages = parse_dockerfile(dockerfile(image))
    assert len(stages) >= 2, "build in one stage, copy only the environment into the final one"
    assert re.fullmatch(r"python:3\.11[.\d]*-slim(-\w+)?", stages[-1].base), stages[-1].base
    copies = [rest for instruction, rest in stages[-1].instructions if instruction == "COPY"]
    assert any(c.startswith("--from=") for c in copies), "the final stage takes the built environment"
    assert not any(i == "RUN" and "pip install" in rest for i, rest in stages[-1].instructions), (
        "nothing is installed in the final stage (no compilers or caches in the image)"
    )


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_runs_as_a_numeric_non_root_user(image: str):
    final = parse_dockerfile(dockerfile(image))[-1]
    users = [rest for instruction, rest in final.instructions if instruction == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: numeric, so runAsNonRoot can check it"


@pytest.mark.parametrize("service", SERVICES)
def test_the_pods_run_as_the_images_user(service: str):
    user = next(r for i, r in reversed(parse_dockerfile(dockerfile(service))[-1].instructions) if i == "USER")
    manifest = [o for o in yaml.safe_load_all((K8S / "base" / f"{service}.yaml").read_text()) if o]
    deployment = next(o for o in manifest if o["kind"] == "Deployment")
    assert str(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == user.split(":")[0]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_image_runs_its_service(service: str):
    stages = parse_dockerfile(dockerfile(service))
    command = command_of(stages[-1])
    assert command in (["python", "-m", f"services.{service}"], ["aisle", "serve", service]), command
    exposed = {int(p) for i, rest in stages[-1].instructions if i == "EXPOSE" for p in rest.split()}
    fields = SERVICES[service].model_fields
    assert exposed == {fields["port"].default, fields["metrics_port"].default}
    labels = " ".join(rest for i, rest in stages[-1].instructions if i == "LABEL")
    assert f'org.opencontainers.image.title="aisle-{service}"' in labels


def test_the_training_image_runs_aisle_train():
    stages = parse_dockerfile(dockerfile("training"))
    command = command_of(stages[-1])
    assert command[:2] == ["aisle", "train"], command


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_installs_only_the_extras_its_job_needs(image: str):
    installs = installed_extras(parse_dockerfile(dockerfile(image)))
    assert len(installs) == 1, f"expected one install of the project, found {installs}"
    extras = installs[0]
    assert extras <= set(EXTRAS), f"unknown extras {extras - set(EXTRAS)}"
    assert REQUIRED_EXTRAS[image] <= extras <= ALLOWED_EXTRAS[image], f"{image} installs {sorted(extras)}"
    assert not {"cpu", "gpu"} <= extras, "onnxruntime and onnxruntime-gpu share one folder: never both"
    if image == "ranking":
        assert len(extras & {"cpu", "gpu"}) == 1, "ranking needs exactly one ONNX Runtime build"
    assert "dev" not in extras


@pytest.mark.parametrize("service", SERVICES)
def test_serving_images_carry_no_torch(service: str):
    (extras,) = installed_extras(parse_dockerfile(dockerfile(service)))
    requirements = [r for extra in extras for r in EXTRAS[extra]]
    assert not [r for r in requirements if re.match(r"torch\b", r)], f"{service}'s extras pull torch"
    assert not re.search(r"\btorch\b", code_lines(dockerfile(service))), f"{service}.Dockerfile mentions torch"
    assert "training/" not in code_lines(dockerfile(service)), "serving images do not copy the training code"


def test_the_training_image_takes_the_pinned_torch_from_the_cpu_index():
    stages = parse_dockerfile(dockerfile("training"))
    runs = [rest for stage in stages for instruction, rest in stage.instructions if instruction == "RUN"]
    torch_install = [r for r in runs if "torch==" in r]
    assert torch_install and "download.pytorch.org/whl/cpu" in torch_install[0], (
        "torch from PyPI is the CUDA build (GBs of libraries); the CPU index keeps the image small"
    )
    pinned = [r for r in EXTRAS["train"] if r.startswith("torch==")]
    assert f'"{pinned[0]}"' in torch_install[0], f"the image installs another torch than the train extra's {pinned}"


@pytest.mark.parametrize("image", IMAGES)
def test_the_build_context_holds_only_what_the_image_copies(image: str):
    ignore = Path(f"{dockerfile(image)}.dockerignore")
    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "**", "start from nothing, then include what the build needs"
    included = [p[1:] for p in patterns if p.startswith("!")]
    for stage in parse_dockerfile(dockerfile(image)):
        for instruction, rest in stage.instructions:
            if instruction != "COPY" or rest.startswith("--from="):
                continue
            for source in rest.split()[:-1]:
                source = source.rstrip("/")
                assert any(p in (source, f"{source}/**") for p in included), f"{source} is not in the build context"
                assert (PROJECT_ROOT / source).exists(), f"COPY {source}: no such file in the repository"


def test_the_installed_package_carries_the_services_data_files(tmp_path: Path):
    """The images install the project as a wheel (not editable), so a file the services read from their package
    folder (a default policy file, say) is in the image only if the package data declares it."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("gen/python", "services"):
        shutil.copytree(PROJECT_ROOT / folder, source / folder, ignore=ignored)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    data_files = [
        str(path.relative_to(source))
        for path in (source / "services").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    missing = sorted(set(data_files) - packaged)
    assert not missing, (
        f"not in the installed package (so not in the images): {missing}; "
        "declare them in pyproject.toml [tool.setuptools.package-data]"
    )
