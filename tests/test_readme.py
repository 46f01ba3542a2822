"""The README and docs/ stay true: the configuration reference, the two fresh-machine commands,
the examples, and every link between the pages."""

import pathlib
import re

from beam_pixels.config import KEYS, PixelsConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_configuration_reference_lists_every_key_with_its_default():
    reference = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for key in KEYS:
        row = next((line for line in reference.splitlines() if line.startswith(f"| `{key.name}` |")), None)
        assert row is not None, f"docs/configuration.md lacks {key.name}: run python scripts/update_config_reference.py"
        default = f"`{key.default}`" if key.default else "(empty)"
        assert default in row, f"docs/configuration.md gives another default for {key.name}: {row}"


def test_the_configuration_example_loads_without_warnings(tmp_path):
    example = re.search(r"## Configuration\n.*?```properties\n(.*?)```", README, re.S).group(1)
    path = tmp_path / "orders.properties"
    path.write_text(example)
    config = PixelsConfig.load(path)
    assert config.warnings == ()
    assert (config.sink_type, config.iceberg_database, config.iceberg_table) == ("iceberg", "pixels", "orders")
    assert config.primary_key == ("id",)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links(page: pathlib.Path) -> list[str]:
    """The targets of the page's markdown links, code blocks and inline code left out."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", linked.read_text(), flags=re.S), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"python -m pytest[^\n]*", ci).group(0)
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert len(first_block) == 2, "the README opens with exactly two commands"
    assert "beam-pixels demo" in first_block[0]
    assert command in first_block[1], "the README's second command must be the test command of .ci/run"


def test_the_library_example_runs_against_a_mock_server(tmp_path):
    """The README's pipeline example, run as written (server port and warehouse pointed at this test's)."""
    from beam_pixels.mock_server import MockPixelsServer
    from beam_pixels.schema import SourceSchema

    example = re.search(r"## Using the transforms in your own pipeline.*?```python\n(.*?)```", README, re.S).group(1)
    assert "50051" in example and "file:///tmp/wh" in example
    schema = SourceSchema.parse("id:BIGINT,name:STRING,price:DECIMAL(10,2)", ["id"])
    with MockPixelsServer(schema).start() as server:
        server.load_rows([(i, f"n{i}", None) for i in range(20)])
        code = example.replace("50051", str(server.port)).replace("file:///tmp/wh", f"file://{tmp_path}")
        code = code.replace("stop_after_idle_ms=5000", "stop_after_idle_ms=500")
        exec(compile(code, "README example", "exec"), {})
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog("pixels", type="sql", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}")
    assert sorted(catalog.load_table("pixels.orders").scan().to_arrow().column("id").to_pylist()) == list(range(20))
