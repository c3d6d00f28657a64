"""The README's results table, checked against the metrics files it links to (the links,
commands, flags tables and headings of README.md and docs/ are tests/test_docs.py's).

Each row of "## Results: every experiment in one table" names a metrics JSON; its result cell is
a list of "label number" items separated by ";" and its time cell is "N s" or "N min". Every
number must equal, at the precision written, the value of the `final` block (or, for "best ...",
the best value in the run's history) and the run's wall time. So the table cannot drift from the
committed runs, and a mislabelled number (a test loss called an accuracy) fails too.
"""
import importlib
import json
import re
import shlex

import pytest

from conftest import ROOT, agrees, readme_section

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
    "samples' Fréchet distance": ("frechet_generated",),  # galaxies: in the judge's features
    "real galaxies' Fréchet distance": ("frechet_floor",),  # its floor, real training vs test galaxies
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
