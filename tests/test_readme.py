"""The README is the front page: its first two commands are the set-up (.ci/run must call the second one
exactly), it stays short, and it links every page of the manual under docs/, whose links all resolve."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# The page that holds the annotated sweep config (its first ```yaml block).
SWEEP_CONFIG_PAGE = DOCS / "sweeps.md"


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.+?)\n```", path.read_text(encoding="utf-8"), re.S)


def readme_commands() -> list[str]:
    return blocks(README, "bash")


def outside_fences(text: str) -> str:
    """The text without its fenced blocks, where no line is a heading."""
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence:
            out.append(line)
    return "\n".join(out)


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where nothing is a link."""
    return re.sub(r"(`+).+?\1", "", outside_fences(text), flags=re.S)


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(path.read_text(encoding="utf-8")))


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", outside_fences(path.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link, target file, anchor) for each link of ``path`` that is not a URL."""
    out = []
    for link in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):
            continue
        target, _, anchor = link.partition("#")
        out.append((link, (path.parent / target).resolve() if target else path, anchor))
    return out


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

    example = blocks(SWEEP_CONFIG_PAGE, "yaml")[0]
    assert example.startswith("name: quickstart")
    config = config_from_dict(yaml.safe_load(example))
    assert len(config.settings()) == 4 * 3 + 1
    assert [m.id for m in default_registry().create_all(config.metrics)] == [
        "distinct_1[tok=words]", "distinct_2[tok=words]", "mean_length[unit=words]"]


def test_readme_is_a_front_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) < 300


def test_readme_links_every_page():
    linked = {target for _, target, _ in relative_links(README)}
    assert pages(), "no pages under docs/"
    assert [p.name for p in pages() if p.resolve() not in linked] == []


def test_relative_links_resolve():
    broken = []
    for path in [README, *pages()]:
        for link, target, anchor in relative_links(path):
            if not target.exists():
                broken.append(f"{path.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{path.relative_to(ROOT)}: {link} (no such heading)")
    assert broken == []


def test_named_repository_paths_exist():
    """Paths such as configs/served.yaml or benchmarks/bench_ray.py, named in the README or a page."""
    pattern = re.compile(r"(?<![\w./~-])((?:\.ci|benchmarks|configs|docs|evalkit|metrics|requirements|tests)/[\w./-]*)")
    missing = []
    for path in [README, *pages()]:
        for name in pattern.findall(path.read_text(encoding="utf-8")):
            if not (ROOT / name.rstrip(".")).exists():
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert missing == []


def test_the_readme_says_what_the_test_command_skips_without_the_system_programs():
    """The sandbox and browser tests skip silently outside CI: the README names the system programs .ci/run installs
    and every EVALKIT_REQUIRE_* variable it sets to turn such a skip into a failure."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    installed = re.search(r"apt-get install -y -qq ([^>]+)>", ci).group(1).split()
    required = re.findall(r"export (EVALKIT_REQUIRE_\w+)=1", ci)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = readme[:readme.index(readme_commands()[1])]  # the text before the test command
    assert {"bubblewrap", "chromium"} <= set(installed) and len(required) >= 2
    for name in ["bubblewrap", "chromium", *required]:
        assert name in intro, name


def test_the_readme_metric_table_names_every_registered_metric():
    from evalkit.scoring.registry import default_registry

    table = [line for line in README.read_text(encoding="utf-8").split("## Metrics", 1)[1].splitlines()
             if line.startswith("| ")]
    named = set(re.findall(r"`([a-z_0-9]+)", "\n".join(table)))
    missing = [e.name for e in default_registry().entries() if e.name not in named]
    assert table and missing == []
