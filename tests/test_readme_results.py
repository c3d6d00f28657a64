"""The README's results table, checked against the metrics files it links to.

Each row of "## Results: every experiment in one table" names a metrics JSON; its result cell is
a list of "label number" items separated by ";" and its time cell is "N s" or "N min". Every
number must equal, at the precision written, the value of the `final` block (or, for "best ...",
the best value in the run's history) and the run's wall time. So the table cannot drift from the
committed runs, and a mislabelled number (a test loss called an accuracy) fails too.
"""
import importlib
import json
import math
import re
import shlex

import pytest

from conftest import ROOT, readme_section

SECTION = "## Results: every experiment in one table"

# A result label in the table -> the key (or keys, first present wins) in the metrics file.
LABELS = {
    "test accuracy": ("test_acc",),
    "test balanced accuracy": ("test_balanced_acc", "test_balanced_accuracy"),  # lstm, galaxy's judge
    "generated class balanced accuracy": ("generated_balanced_accuracy",),
    "judge on real test images": ("judge_real_test_balanced_accuracy",),
    "bag-of-words test balanced accuracy": ("bag_of_words_test_balanced_acc",),  # lstm's yardstick
    "test loss": ("test_loss",),
    "test reconstruction": ("test_recon",),
    "test KL": ("test_kl", "test_prior"),  # vaegan.py calls the KL term L_prior, as the paper does
    "test MSE": ("test_mse",),
    "test L1": ("test_l1",),
    "Fréchet distance": ("frechet_distance",),
    "epochs": ("epochs_trained",),
    "test BCE above floor": ("test_bce_above_floor",),
    "probe balanced accuracy": ("latent_probe_test_balanced_accuracy",),
}


def table_rows():
    rows = []
    for line in readme_section(SECTION).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] != "script" and not cells[1].startswith("---"):
            rows.append(cells)
    return rows


def agrees(stated, value):
    """stated (the README's text, e.g. "0.9319") equals value rounded to that many decimals."""
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    return math.isclose(round(value, decimals), float(stated), abs_tol=10 ** -(decimals + 3))


def check_row(cells):
    """The mismatches of one table row, as readable strings (empty when the row agrees)."""
    _script, run, result, time, _hardware, _command, link = cells
    path = ROOT / re.fullmatch(r"\[json\]\((.+)\)", link).group(1)
    metrics = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    for item in result.split(";"):
        match = re.fullmatch(r"(best )?(.+?) (-?[\d.]+)", item.strip())
        assert match and match.group(2) in LABELS, f"{run}: unknown result item {item!r}"
        best, label, stated = match.groups()
        key = next(k for k in LABELS[label] if k in metrics["final"])
        value = (max(r[key] for r in metrics["history"] if key in r) if best
                 else metrics["final"][key])
        if not agrees(stated, value):
            problems.append(f"{run}: {item.strip()!r} but {path.name} has {key} = {value}")
    number, unit = re.match(r"(\d+) (s|min)\b", time).groups()
    seconds = metrics["wall_seconds"]
    if int(number) != round(seconds if unit == "s" else seconds / 60):
        problems.append(f"{run}: time {time!r} but {path.name} has wall_seconds = {seconds}")
    return problems


def test_the_table_lists_every_script():
    scripts = {cells[0] for cells in table_rows()} - {""}
    assert scripts == {"cnn.py", "vae.py", "joint.py", "autoencoder.py", "dcgan.py", "vaegan.py",
                       "vgg_mnist.py", "lstm_tweets.py", "galaxy_vae.py"}


@pytest.mark.parametrize("cells", table_rows(), ids=lambda cells: cells[1])
def test_every_number_and_time_in_the_results_table_is_its_metrics_file(cells):
    assert check_row(cells) == []


def hardware(metrics):
    """What a row's hardware cell may say, from its metrics file: the machine of every session of
    the training (trained_on: its device, and the CPU's kind as versions record it). A file from
    before trained_on: a bf16 (--amp) CPU run was made on a CPU with bf16 units (on one without,
    --amp is refused, and its emulation would have taken 25-50x the time); an fp32 CPU run on
    either kind, not recorded; a run on --device auto on the CPU or the one GPU lent (an H100)."""
    sessions = metrics.get("trained_on") or []
    if sessions:
        return {" and ".join(sorted({
            "H100" if s["device"].startswith("cuda") else
            "CPU, AVX-512 BF16" if s["cpu_bf16"] else f"CPU, {s['cpu_capability']}"
            for s in sessions}))}
    trained_with = metrics.get("trained_with") or metrics["args"]
    cpu = "CPU, AVX-512 BF16" if trained_with.get("amp") else "CPU, kind not recorded"
    return {"cpu": {cpu}, "cuda": {"H100"}}.get(trained_with["device"], {cpu, "H100"})


@pytest.mark.parametrize("cells", table_rows(), ids=lambda cells: cells[1])
def test_the_hardware_column_says_which_cpu_made_each_row(cells):
    metrics = json.loads((ROOT / re.fullmatch(r"\[json\]\((.+)\)", cells[6]).group(1)).read_text())
    assert cells[4] in hardware(metrics), cells[1]


def test_a_changed_number_or_label_is_caught():
    """The check itself can fail: a digit changed, a label swapped and a time changed are found."""
    cells = next(c for c in table_rows() if c[6] == "[json](figures/cnn_metrics.json)")
    assert check_row(cells) == []
    wrong_digit = cells[:2] + [cells[2].replace("0.9319", "0.9318")] + cells[3:]
    wrong_label = cells[:2] + [cells[2].replace("test accuracy", "test loss", 1)] + cells[3:]
    wrong_time = cells[:3] + ["8 min"] + cells[4:]
    for wrong in (wrong_digit, wrong_label, wrong_time):
        assert len(check_row(wrong)) == 1


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_inside_the_readme_reaches_a_heading():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # a "# comment" is no heading
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", prose, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links and [link for link in links if link not in anchors] == []
    assert github_anchor("## Benchmark: `--amp` (bf16 autocast)".lstrip("# ")) == \
        "benchmark---amp-bf16-autocast"


def test_every_name_a_section_points_to_is_defined_in_its_script():
    """Each section's "Read in [`X.py`]" line names functions and classes: each must exist there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = re.findall(r"^\*\*Read in \[`(\w+\.py)`\]\(\1\):\*\* (.+)$", text, flags=re.M)
    assert len(lines) == 9
    for script, names in lines:
        source = (ROOT / script).read_text(encoding="utf-8")
        for name in re.findall(r"`(\w+)`", names):
            assert re.search(rf"^(def|class) {name}\b|^{name} = ", source, flags=re.M), \
                f"{script} has no {name}"


def test_every_file_the_readme_shows_or_links_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paths = re.findall(r"\]\(((?:figures|benchmarks|tests)/[^)#]+)\)", text)
    paths += re.findall(r'<img src="([^"]+)"', text)
    assert len(paths) > 50
    assert [p for p in paths if not (ROOT / p).exists()] == []


def readme_commands():
    """Every `python SCRIPT.py ...` line of the README's shell blocks (continuations joined,
    shell variables expanded; lines that elide arguments with "..." left out) and every command of
    the results table written out in full, as argument lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    variables, commands = {}, []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if assignment := re.fullmatch(r'(\w+)="(.*)"', line):
                variables[assignment[1]] = assignment[2]
            elif re.match(r"python \S+\.py\b", line) and "..." not in line:  # a script, not -c or -m
                commands.append(re.sub(r"\$(\w+)", lambda m: variables[m[1]], line))
    commands += [cells[5].strip("`") for cells in table_rows()
                 if cells[5].startswith("`python") and "…" not in cells[5]]
    return [shlex.split(command) for command in commands]


@pytest.mark.parametrize("words", readme_commands(), ids=" ".join)
def test_every_readme_command_parses(words):
    """A flag renamed in a script (or mistyped here) fails: each command goes through the script's
    own parse_args, which exits on an unknown flag or a bad value."""
    assert words[0] == "python" and words[1].endswith(".py")
    script = importlib.import_module(words[1][:-3].replace("/", "."))
    script.parse_args(words[2:])
    with pytest.raises(SystemExit):
        script.parse_args([*words[2:], "--no-such-flag"])
