"""Third-party metrics through the `evalkit.metrics` entry-point group, with a tiny package
installed (as a distribution on sys.path) in the test."""

import textwrap

import pytest

import evalkit
from evalkit.config import MetricSpec, config_from_dict
from evalkit.scoring.registry import default_registry

from conftest import base_config

PLUGIN = '''
from pydantic import BaseModel, ConfigDict

from evalkit.scoring.metric import Group, Metric, Score


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    char: str = "a"


class CharShare(Metric):
    name = "char_share"
    definition = "share of characters equal to `char` over the group's texts"
    reference = "test plugin"
    Params = Params

    def compute(self, group: Group) -> Score:
        text = "".join(group.texts)
        if not text:
            return Score.undefined("no characters")
        return Score(text.count(self.params.char) / len(text))


class NotAMetric:
    pass


class HalfMetric(Metric):
    name = "half"
    reference = "test plugin"
'''


def install(tmp_path, monkeypatch, entry_points: str):
    (tmp_path / "tiny_plugin").mkdir()
    (tmp_path / "tiny_plugin" / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "tiny_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_entry_point_metric_is_registered_and_runs(tmp_path, monkeypatch, tiny_model):
    install(tmp_path, monkeypatch, "[evalkit.metrics]\nchar_share = tiny_plugin:CharShare\n")
    registry = default_registry()
    assert "char_share" in registry.names()
    metric = registry.create(MetricSpec(name="char_share", params={"char": "e"}))
    assert metric.id == "char_share[char=e]"
    run = evalkit.run_sweep(config_from_dict(base_config(tiny_model, tmp_path / "runs", samples_per_prompt=2,
                                                         metrics=["distinct_1", {"name": "char_share", "char": "e"}])),
                            progress=False)
    values = run.scores[run.scores.metric == "char_share[char=e]"].value
    assert len(values) == 3 * 6 and values.between(0, 1).all()
    first = run.samples[(run.samples.prompt_id == "en") & (run.samples.setting_id == "t0-p0.8")]
    text = "".join(first.text)
    expected = text.count("e") / len(text)
    got = run.scores[(run.scores.metric == "char_share[char=e]") & (run.scores.prompt_id == "en")
                     & (run.scores.setting_id == "t0-p0.8")].value.item()
    assert got == pytest.approx(expected)


def test_plugins_that_clash_or_are_not_metrics_are_refused(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "[evalkit.metrics]\nself_bleu = tiny_plugin:CharShare\n")
    with pytest.raises(evalkit.EvalkitError, match="'self_bleu' .* clashes with a metric of the same name"):
        default_registry()


def test_plugin_that_is_not_a_metric(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "[evalkit.metrics]\nodd = tiny_plugin:NotAMetric\n")
    with pytest.raises(evalkit.EvalkitError, match="'odd' .* is not a Metric subclass"):
        default_registry()


def test_plugin_that_fails_to_import(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "[evalkit.metrics]\nbroken = tiny_plugin_missing:Thing\n")
    with pytest.raises(evalkit.EvalkitError, match="'broken' .* failed to load: ModuleNotFoundError"):
        default_registry()


def test_a_plugin_without_compute_or_definition_is_refused(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "[evalkit.metrics]\nhalf = tiny_plugin:HalfMetric\n")
    with pytest.raises(evalkit.EvalkitError, match="'half'.* does not define definition, compute"):
        default_registry()
