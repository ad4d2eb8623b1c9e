"""The README and the docs pages say what the code does: CI's commands, every configuration key,
working links."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from muse_tf.config import ExperimentConfig, ModelConfig, TrainConfig, from_dict
from muse_tf.contract.feature_spec import TAOBAO_MM

ROOT = Path(__file__).resolve().parents[1]


def _command_after(lines, marker):
    index = next(i for i, line in enumerate(lines) if marker in line)
    return next(line.strip() for line in lines[index + 1:] if line.strip() and not line.startswith("#"))


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    block = readme[readme.index("<!-- test-command -->") + 2]
    assert block == _command_after(ci, "README: test command")


def test_readme_redis_install_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    block = readme[readme.index("<!-- redis-command -->") + 2]
    marker = next(i for i, line in enumerate(ci) if "README: Redis for the tests" in line)
    install = next(line.strip() for line in ci[marker:] if "apt-get install" in line)
    assert block.replace("sudo ", "") == install.replace("$sudo ", "")


def test_readme_main_command_runs_the_training_module():
    readme = (ROOT / "README.md").read_text().splitlines()
    block = readme[readme.index("<!-- main-command -->") + 2]
    assert block.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert block.endswith(".venv/bin/python -m muse_tf.train")
    assert (ROOT / "muse_tf" / "train.py").exists()


def _section(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0]


REFERENCE = ROOT / "docs" / "reference.md"
RESULTS = ROOT / "docs" / "results.md"


def _config_reference_rows():
    readme = REFERENCE.read_text()
    block = _section(readme, "<!-- config-reference:start -->", "<!-- config-reference:end -->")
    rows = {}
    for line in block.splitlines():
        match = re.match(r"^\| `(\w+)\.(\w+)` \| (.+?) \| (.+) \|$", line)
        if match:
            rows[(match[1], match[2])] = (match[3], match[4])
    return rows


def _default(field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def test_configuration_reference_lists_every_field_with_its_default():
    rows = _config_reference_rows()
    sections = {"model": ModelConfig, "train": TrainConfig}
    expected = {(section, f.name) for section, cls in sections.items() for f in dataclasses.fields(cls)}
    assert set(rows) == expected, f"missing {expected - set(rows)}, stale {set(rows) - expected}"
    for (section, name), (cell, meaning) in rows.items():
        field = next(f for f in dataclasses.fields(sections[section]) if f.name == name)
        actual = _default(field)
        written = re.fullmatch(r"`(.*)`( per vocabulary)?", cell)
        assert written, f"{section}.{name}: default cell {cell!r}"
        value = yaml.safe_load(written[1])
        if written[2]:
            value = dict.fromkeys(TAOBAO_MM.vocabularies, value)
        if isinstance(actual, float):
            assert value == pytest.approx(actual, rel=1e-5), f"{section}.{name}"
        else:
            assert value == actual, f"{section}.{name}: README says {value!r}, the code {actual!r}"
        assert len(meaning.strip()) > 10, f"{section}.{name} has no meaning"


def test_configuration_reference_is_regenerated():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "docs" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = REFERENCE.read_text()
    block = _section(readme, module.START, module.END).strip()
    assert block == module.markdown(), "run: python docs/config_reference.py --write docs/reference.md"


def test_readme_yaml_example_is_a_valid_config():
    readme = REFERENCE.read_text()
    example = _section(readme, "Example (`--config my.yaml`", "```\n\n").split("```yaml\n", 1)[1]
    experiment = from_dict(ExperimentConfig, yaml.safe_load(example))
    assert experiment.model.top_k == 100 and experiment.train.global_batch_size(2) == 2000


def test_readme_pictures_exist_and_are_small():
    readme = (ROOT / "README.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert len(set(pictures)) >= 3
    for picture in set(pictures):
        data = (ROOT / picture).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", picture
        assert len(data) < 200_000, f"{picture} is {len(data)} bytes"


def test_results_page_keeps_the_result_markers():
    readme = RESULTS.read_text()
    for marker in ("experiments", "benchmarks"):
        start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
        assert readme.count(start) == readme.count(end) == 1
        assert readme.index(start) < readme.index(end)
    assert readme.index("# Results") < readme.index("<!-- experiments:start -->")
    assert readme.index("## Benchmarks") < readme.index("<!-- benchmarks:start -->")


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *(ROOT / package / "README.md" for package in ("pipelines", "serving", "benchmarks"))]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    headings = re.findall(r"^#{1,6} (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = page.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)
