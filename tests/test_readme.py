"""The README's first two commands are the set-up; .ci/run must call the second one exactly."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_ci_runs_the_readme_test_command():
    install_and_run, install_and_test = readme_commands()[:2]
    assert "evalkit run configs/quickstart.yaml" in install_and_run and "\n" not in install_and_run
    assert "pytest" in install_and_test and "\n" not in install_and_test
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert install_and_test in ci_lines


def test_readme_config_example_is_valid():
    import yaml

    from evalkit.config import config_from_dict
    from evalkit.scoring.registry import default_registry

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.+?)\n```", text, re.S).group(1)
    config = config_from_dict(yaml.safe_load(example))
    assert len(config.settings()) == 4 * 3 + 1
    assert [m.id for m in default_registry().create_all(config.metrics)] == [
        "distinct_1[tok=words]", "distinct_2[tok=words]", "mean_length[unit=words]"]
