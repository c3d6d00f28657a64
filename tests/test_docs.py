"""README.md and the pages under docs/, read as a student reads them: every link reaches a file
and a heading, every image exists, every `python SCRIPT.py ...` command parses with that
script's own parser, every script page has the same headings, its flags table is its parser's
flags (so neither can drift), the names it points to exist in the code, no page is a
development log (no issue numbers), and every number of a page's table row that links a metrics
file is a value of that file. The results table's numbers: tests/test_readme_results.py; the
theory page's: tests/test_theory.py.
"""
import importlib
import json
import re
import shlex

import pytest

from conftest import ROOT, agrees

DOCS = ROOT / "docs"
SCRIPTS = ["cnn", "vae", "joint", "autoencoder", "dcgan", "vaegan", "vgg_mnist", "lstm_tweets",
           "galaxy_vae"]
HEADINGS = ["What it does", "Run it", "Read in the code", "Flags", "The task", "Results", "Answers",
            "Beyond the assignment"]
SHARED_FLAGS = {"--epochs", "--batch-size", "--lr", "--seed", "--device", "--data-dir", "--out-dir",
                "--load", "--resume", "--deterministic", "--amp", "--patience", "--limit", "--help"}
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def text(path):
    return path.read_text(encoding="utf-8")


def prose(markdown):
    """The text outside ``` blocks (a "# comment" in a shell block is no heading)."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", prose(text(path)), flags=re.M)}


def links(path):
    """(target, anchor) of every markdown link and <img src> of a page, external ones left out."""
    found = re.findall(r"\]\(([^)\s]+)\)", text(path)) + re.findall(r'<img src="([^"]+)"', text(path))
    for link in found:
        if not re.match(r"https?://|mailto:", link):
            target, _, anchor = link.partition("#")
            yield target, anchor


def test_readme_is_an_entry_page_and_every_script_has_a_page():
    assert len(text(ROOT / "README.md").splitlines()) <= 300
    assert {p.stem for p in DOCS.glob("*.md")} >= {*SCRIPTS, "answers", "theory"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_reaches_a_file_and_a_heading(page):
    broken = []
    for target, anchor in links(page):
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}#{anchor}: no such heading")
    assert broken == []


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n[a](#top) [b](#nowhere) [c](missing.png) ![d](page.md)\n")
    assert list(links(page)) == [("", "top"), ("", "nowhere"), ("missing.png", ""), ("page.md", "")]
    assert "nowhere" not in anchors(page) and "top" in anchors(page)


def test_no_page_is_a_development_log():
    assert [(p.name, m) for p in PAGES for m in re.findall(r"[Ii]ssue \d+", text(p))] == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_page_has_the_same_headings_and_its_docstring_links_it(script):
    page = text(DOCS / f"{script}.md")
    assert re.findall(r"^## (.+)$", prose(page), flags=re.M) == HEADINGS
    assert page.startswith(f"# {script}.py — ")
    assert f"docs/{script}.md" in importlib.import_module(script).__doc__


def section(page, heading):
    start = page.index(f"\n## {heading}\n")
    end = page.find("\n## ", start + 1)
    return page[start:end if end != -1 else len(page)]


def parser_flags(script, monkeypatch):
    """The long option strings of the script's own parser, caught as parse_args builds it."""
    module, built = importlib.import_module(script), []
    make_parser = module.common.make_parser
    monkeypatch.setattr(module.common, "make_parser", lambda *a: built.append(make_parser(*a)) or built[-1])
    with pytest.raises(SystemExit):
        module.parse_args(["--no-such-flag"])
    return {option for action in built[0]._actions for option in action.option_strings
            if option.startswith("--")}


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_flags_table_is_the_parsers(script, monkeypatch):
    """Every flag of the script's own (one row each; a --x / --no-x pair in one row), and no
    other: a flag added, renamed or removed in the code fails until the page says so."""
    rows = [line for line in section(text(DOCS / f"{script}.md"), "Flags").splitlines()
            if line.startswith("| `--")]
    documented = {flag for row in rows for flag in re.findall(r"`(--[\w-]+)", row.split("|")[1])}
    assert documented == parser_flags(script, monkeypatch) - SHARED_FLAGS


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_name_the_page_points_to_is_defined_in_its_script(script):
    names = re.findall(r"`(\w+)`", section(text(DOCS / f"{script}.md"), "Read in the code"))
    source = text(ROOT / f"{script}.py")
    assert names and [name for name in names if not re.search(
        rf"^\s*(def|class) {name}\b|^{name} = ", source, flags=re.M)] == []


def commands():
    """Every `python SCRIPT.py ...` line of every page's shell blocks (continuations joined, shell
    variables expanded; lines that elide arguments with "..." left out), and every command of
    the README's results table written out in full, as argument lists."""
    found = []
    for page in PAGES:
        variables = {}
        for block in re.findall(r"```bash\n(.*?)```", text(page), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if assignment := re.fullmatch(r'(\w+)="(.*)"', line):
                    variables[assignment[1]] = assignment[2]
                elif re.match(r"python \S+\.py\b", line) and "..." not in line:
                    line = re.sub(r"\$(\w+)", lambda m: variables[m[1]], line)
                    found.append(pytest.param(shlex.split(line), id=f"{page.name}: {line}"))
    table = re.findall(r"\| `(python [^`…]+)` \|", text(ROOT / "README.md"))
    return found + [pytest.param(shlex.split(c), id=f"README.md: {c}") for c in table]


@pytest.mark.parametrize("words", commands())
def test_every_command_parses(words):
    """A flag renamed in a script (or mistyped on a page) fails: each command goes through the
    script's own parse_args, which exits on an unknown flag or a bad value."""
    script = importlib.import_module(words[1][:-3].replace("/", "."))
    script.parse_args(words[2:])
    with pytest.raises(SystemExit):
        script.parse_args([*words[2:], "--no-such-flag"])


def file_values(record, found=None):
    """Every number anywhere in a metrics record (final block, history, wall seconds, args)."""
    found = [] if found is None else found
    if isinstance(record, dict):
        for value in record.values():
            file_values(value, found)
    elif isinstance(record, list):
        for value in record:
            file_values(value, found)
    elif isinstance(record, (int, float)) and not isinstance(record, bool):
        found.append(float(record))
    return found


def is_a_value(stated, percent, values):
    """stated (as a page writes it: "0.9952", "1,794", "12.5" of "12.5%") equals one of `values`
    rounded to as many decimals; a percentage is of a fraction; a whole number may be minutes of
    a number of seconds."""
    candidates = [100 * v for v in values] if percent else values + [v / 60 for v in values]
    return any(agrees(stated, v) for v in candidates)


def unfounded_numbers(page):
    """(number, row) for every number of a table row that links exactly one metrics file and is
    not a value of that file. The row's first cell (its label: "z = 64", "784-500-2") and its
    code, links and CPU names ("AVX-512") are not numbers of the run."""
    problems = []
    for line in text(page).splitlines():
        files = re.findall(r"\]\(([^)]+_metrics\.json)\)", line)
        if not line.startswith("|") or len(files) != 1:
            continue
        values = file_values(json.loads((page.parent / files[0]).read_text(encoding="utf-8")))
        cells = re.sub(r"\]\([^)]*\)|`[^`]*`|AVX-?512|AVX2", "", "|".join(line.strip("| ").split("|")[1:]))
        for number, percent in re.findall(r"(?<![\w.])(-?\d[\d,]*(?:\.\d+)?)(%?)", cells):
            if not is_a_value(number.replace(",", ""), bool(percent), values):
                problems.append((number + percent, line[:80]))
    return problems


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_number_of_a_table_row_is_a_value_of_the_metrics_file_it_links(page):
    assert unfounded_numbers(page) == []


def test_a_number_that_is_not_in_the_file_is_caught(tmp_path):
    (tmp_path / "run_metrics.json").write_text(json.dumps(
        {"wall_seconds": 1794.3, "final": {"test_acc": 0.99523, "share": 0.125}}))
    page = tmp_path / "page.md"
    row = "| run | 0.9952 | 30 min | 12.5% | {} | [json](run_metrics.json) |"
    page.write_text(row.format("1,794") + "\n")
    assert unfounded_numbers(page) == []
    page.write_text(row.format("1,795") + "\n" + row.replace("0.9952", "0.9953").format("1,794") + "\n")
    assert [number for number, _ in unfounded_numbers(page)] == ["1,795", "0.9953"]
