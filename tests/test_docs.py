"""The README and docs/ stay true: their reslab commands parse (the cheap ones run), their Python blocks run and print
what the page shows, their links resolve, and their install lines name extras and options that exist.

A fenced block can be preceded by an HTML comment the tests honour (few blocks need one):
  <!-- docs-test: skip (why it cannot run here) -->
  <!-- docs-test: requires onnx, onnxruntime -->      (skipped where one of these modules is absent)
A ```text block right after a ```python block is what the Python block must print.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

import reslab
from reslab.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLE_RUN = "runs/resnet8-20261201-133000"  # the run folder the examples name; the Python tests train a tiny one
EXAMPLE_IMAGES = ["shoe.jpg", "shoe.png", "shirt.png", "cat.jpg", "my_photo.jpg"]


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ----------------------------------------------------------------------------------------------------------------------
# reading Markdown


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str  # the docs-test comment right before the fence, "" if none

    @property
    def where(self) -> str:
        return f"{page_id(self.page)}:{self.line}"


FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().split("\n")
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.fullmatch(before)
        code = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : j])
        found.append(Block(page, i + 1, lang.lower(), code, marker.group(1) if marker else ""))
        i = j + 1
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def unfenced(page: Path) -> str:
    """The page without its fenced blocks (whose `# comments` are not headings)."""
    return re.sub(r"^([ \t]*)(```+|~~~+).*?^\1\2\s*$", "", page.read_text(), flags=re.M | re.S)


def prose(page: Path) -> str:
    """The page without its fenced blocks and inline code: where links live."""
    return re.sub(r"`[^`\n]*`", "", unfenced(page))


# ----------------------------------------------------------------------------------------------------------------------
# shell commands


def shell_commands(block: Block) -> list[list[str]]:
    """Each simple command of a shell block as tokens: continuations joined, comments dropped, split at && ; |."""
    text = block.code.replace("\\\n", " ")
    commands = []
    for line in text.split("\n"):
        if line.lstrip().startswith("$ "):
            line = line.lstrip()[2:]
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for t in tokens:
            if t in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(t)
        commands.append(current)
    return [c for c in commands if c]


def reslab_argv(tokens: list[str]) -> list[str] | None:
    """The arguments reslab gets from a command line, or None when the line does not call reslab.

    Handles `VAR=value` prefixes, `.venv/bin/reslab`, `python -m reslab` and `torchrun ... -m reslab`."""
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    if Path(tokens[0]).name == "reslab":
        return tokens[1:]
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "reslab":
            return tokens[i + 2 :]
    return None


RESLAB_LINES = [
    (b, argv) for b in ALL_BLOCKS if b.lang in SHELL_LANGS for argv in map(reslab_argv, shell_commands(b)) if argv
]


def parse(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of the real parser on argv; 0 and '' when it parses."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0), err.getvalue()
    return 0, ""


def option_strings(argv: list[str]) -> set[str]:
    """Every option string of the (sub)parser argv reaches: what a flag must be spelt as, without abbreviations."""
    import argparse

    parser, options = build_parser(), set()
    tokens = iter(argv)
    while True:
        options |= {s for a in parser._actions for s in a.option_strings}
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return options
        name = next((t for t in tokens if not t.startswith("-") and t in sub.choices), None)
        if name is None:
            return options
        parser = sub.choices[name]


def test_the_docs_have_reslab_commands_and_python_blocks():
    # the scanners below must find what they check: a reader change that finds nothing would pass everything
    assert len(RESLAB_LINES) >= 40
    assert sum(b.lang == "python" for b in ALL_BLOCKS) >= 10


@pytest.mark.parametrize("block, argv", RESLAB_LINES, ids=lambda x: x.where if isinstance(x, Block) else "")
def test_every_reslab_command_parses(block, argv):
    code, err = parse(argv)
    assert code == 0, f"{block.where}: `reslab {' '.join(argv)}` does not parse: {err.strip().splitlines()[-1:]}"
    known = option_strings(argv)
    for token in argv:
        flag = token.split("=")[0]
        if flag.startswith("--") and flag != "--":
            assert flag in known, f"{block.where}: `reslab {' '.join(argv)}`: {flag} is not a flag (an abbreviation?)"


def is_cheap(argv: list[str]) -> bool:
    return bool(argv) and (argv[0] in ("models", "summary", "weights") or "--help" in argv or "-h" in argv)


CHEAP = [(b, argv) for b, argv in RESLAB_LINES if is_cheap(argv)] + [(None, ["--version"]), (None, ["train", "--help"])]


@pytest.mark.parametrize("block, argv", CHEAP, ids=lambda x: x.where if isinstance(x, Block) else "")
def test_the_cheap_commands_run(block, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # --help and --version exit through argparse
        code = e.code or 0
    out, err = capsys.readouterr()
    assert code == 0, f"{block.where if block else ''}: `reslab {' '.join(argv)}` exited {code}: {err.strip()}"
    assert out.strip()


# ----------------------------------------------------------------------------------------------------------------------
# Python blocks


def python_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang == "python" for b in blocks(p))]


def expected_output(page_blocks: list[Block], i: int) -> str | None:
    """The ```text block right after block i (nothing but blank lines between), if there is one."""
    if i + 1 >= len(page_blocks) or page_blocks[i + 1].lang != "text":
        return None
    lines = page_blocks[i].page.read_text().split("\n")
    end = page_blocks[i].line + page_blocks[i].code.count("\n") + 1  # the closing fence's index
    between = lines[end + 1 : page_blocks[i + 1].line - 1]
    return page_blocks[i + 1].code if not any(line.strip() for line in between) else None


def normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory):
    """A folder with what the examples name: a small trained run, a few images; Fashion-MNIST is a synthetic stand-in
    of the same size of image, so `reslab.fit(...)` with the default recipe trains in seconds."""
    import reslab.data
    import reslab.data.splits
    from reslab.config import make_config
    from reslab.data import synthetic_dataset
    from reslab.train import fit

    folder = tmp_path_factory.mktemp("docs")
    small = synthetic_dataset(num_train=700, num_test=200, image_size=28)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setitem(reslab.data._LOADERS, "fashion-mnist", lambda data_dir=None, **options: small)
        mp.setitem(reslab.data.splits.FIXED_VAL_SIZE, "fashion-mnist", 100)
        with contextlib.redirect_stdout(io.StringIO()):
            fit(make_config(epochs=1, name=Path(EXAMPLE_RUN).name, output="runs", threads=1, progress=False))
        rng = np.random.default_rng(0)
        for name in EXAMPLE_IMAGES:  # a light object on black, as Fashion-MNIST's images are
            a = np.zeros((40, 30), np.uint8)
            a[8:32, 6:24] = rng.integers(120, 255, (24, 18), dtype=np.uint8)
            Image.fromarray(a).save(name)
        yield folder


def missing_modules(marker: str) -> list[str]:
    if not marker.startswith("requires"):
        return []
    names = [n.strip() for n in marker.removeprefix("requires").split(",")]
    return [n for n in names if n and importlib.util.find_spec(n) is None]


@pytest.mark.parametrize("page", python_pages(), ids=page_id)
def test_every_python_block_runs_and_prints_what_the_page_shows(page, example_folder):
    namespace: dict = {"__name__": "__docs__"}
    page_blocks = blocks(page)
    ran = 0
    for i, block in enumerate(page_blocks):
        if block.lang != "python" or block.marker.startswith("skip"):
            continue
        if missing_modules(block.marker):
            continue
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, block.where, "exec"), namespace)
        except Exception as e:
            pytest.fail(f"{block.where}: the Python block raised {type(e).__name__}: {e}")
        expected = expected_output(page_blocks, i)
        if expected is not None:
            assert normalise(out.getvalue()) == normalise(expected), f"{block.where}: printed something else"
        ran += 1
    assert ran or all(b.marker for b in page_blocks if b.lang == "python")


def test_few_blocks_are_skipped():
    skipped = [b.where for b in ALL_BLOCKS if b.marker.startswith("skip")]
    for b in ALL_BLOCKS:
        if b.marker:
            assert re.fullmatch(r"skip \(.+\)|requires [\w., ]+", b.marker), f"{b.where}: unknown marker {b.marker!r}"
    assert len(skipped) <= 3, f"more blocks skipped than the few that cannot run here: {skipped}"


# ----------------------------------------------------------------------------------------------------------------------
# links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", unfenced(page), flags=re.M)  # inline code counts in a slug
    seen: dict[str, int] = {}
    out = set()
    for h in headings:
        s = slug(h)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]*\bsrc=\"([^\"]+)\"")


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(prose(page))]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_and_image_resolves(page):
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page_id(page)}: the link {target!r} leads nowhere ({resolved} does not exist)"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page_id(page)}: {target!r}: no heading with anchor #{anchor}"


def test_the_readme_links_every_docs_page():
    readme_links = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    own_pages = [p for p in (ROOT / "docs").glob("*.md")]
    missing = [page_id(p) for p in own_pages if p.resolve() not in readme_links and not page_linked_from_docs(p)]
    assert not missing, f"docs pages that nothing links to: {missing}"


def page_linked_from_docs(page: Path) -> bool:
    return any(
        (p.parent / t.partition("#")[0]).resolve() == page.resolve() for p in PAGES if p != page for t in links(p)
    )


# ----------------------------------------------------------------------------------------------------------------------
# install lines, setup.sh options, the version


def extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def setup_options() -> set[str]:
    return set(re.findall(r"^\s*(--[\w-]+)\)", (ROOT / "scripts" / "setup.sh").read_text(), flags=re.M))


def install_lines() -> list[tuple[str, str]]:
    """(where, the pip install command) in every page, fenced or inline, and in the messages of src/ and benchmarks/."""
    found = []
    for page in PAGES:
        for n, line in enumerate(page.read_text().split("\n"), 1):
            found += [(f"{page_id(page)}:{n}", m) for m in re.findall(r"pip install[^`#\n]*", line)]
    for py in [*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for n, line in enumerate(py.read_text().split("\n"), 1):
            found += [(f"{py.relative_to(ROOT)}:{n}", m) for m in re.findall(r"pip install[^`\"\n)]*", line)]
    return found


def test_every_install_line_installs_from_the_clone_with_extras_that_exist():
    known, lines = extras(), install_lines()
    assert lines, "no install line found: the scanner is broken"
    for where, line in lines:
        words = line.replace("'", "").replace('"', "").split()[2:]
        requirements = [t for t in words if not t.startswith("-")]
        for req in requirements:
            name, _, rest = req.partition("[")
            if name in ("reslab", "reslab=="):
                pytest.fail(f"{where}: `{line.strip()}` asks the package index for reslab, which is not published")
            if name in (".", "./"):
                wanted = set(rest.rstrip("]").split(",")) - {""}
                assert wanted <= known, f"{where}: `{line.strip()}`: no extra {sorted(wanted - known)} in pyproject"
            if name.startswith("torch=="):
                assert name == "torch==2.13.0", f"{where}: torch is pinned to 2.13.0, not {name}"


def test_every_setup_sh_option_in_the_docs_exists():
    options = setup_options()
    assert {"--dev", "--no-data"} <= options
    for b in ALL_BLOCKS:
        if b.lang not in SHELL_LANGS:
            continue
        for tokens in shell_commands(b):
            if len(tokens) >= 2 and tokens[0] == "bash" and tokens[1].endswith("scripts/setup.sh"):
                unknown = [t for t in tokens[2:] if t not in options]
                assert not unknown, f"{b.where}: scripts/setup.sh has no option {unknown}"


def test_ci_runs_the_readme_s_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().split("\n") if "pytest" in line]
    assert ci and all(line in readme for line in ci), f".ci/run runs {ci}, which the README does not say"


def test_the_changelog_s_newest_version_is_the_package_s():
    versions = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    newest = versions[0] if versions else None
    assert newest == reslab.__version__, f"CHANGELOG.md's newest version is {newest}, reslab's {reslab.__version__}"


def test_the_architecture_page_names_every_layer():
    spec = importlib.util.spec_from_file_location("layers_of_reslab", ROOT / "tests" / "test_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [unit for layer in module.LAYERS for unit in sorted(layer) if f"`{unit}`" not in page]
    assert not missing, f"docs/architecture.md does not name the layers' units {missing} (tests/test_layers.py)"


def test_the_readme_stays_a_front_page():
    # depth goes into docs/ (issue 28): the README a newcomer reads in five minutes
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines; move the detail into a page under docs/"
