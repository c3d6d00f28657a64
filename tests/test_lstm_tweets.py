"""lstm_tweets.py: every tweet-file layout, what real files do wrong, the model, runs, --load.

The tweet-file readers live in common.py (read_tweet_csv, report, read_tweet_files: file formats
are data loading); their tests stay here, calling common.X, beside the script that reads tweets."""
import copy
import csv
import io
import json
import math

import pytest
import torch

import common
import lstm_tweets
from conftest import (DEVICE, DEVICE_FLAGS, NoHostTensors, adam_by_hand, assert_one_line_error,
                      kill_at_call, needs_bf16, record_gradients, run_script)

TWEETS = ["I love this phone", "worst day ever", "so happy today :)", "I hate waiting",
          "what a great game", "this is awful", "best coffee, ever", "my cat is sick"]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]


def write(path, rows, bom=False, newline="\n"):
    """A CSV file as a real one would be written (csv quoting), optionally with BOM and CRLF."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=newline).writerows(rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8"))
    return path


def read(path, **columns):
    return common.read_tweet_csv(path, columns.get("text"), columns.get("label"))


# --- every layout, with the expected row count -------------------------------------------------
def sentiment140_rows():
    return [[4 * y, 1467810369 + i, "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", f"user{i}", t]
            for i, (t, y) in enumerate(zip(TWEETS, LABELS))]


LAYOUTS = {
    "text,label with header": lambda: [["text", "label"]] + [[t, y] for t, y in zip(TWEETS, LABELS)],
    "label,text with header": lambda: [["Sentiment", "Tweet"]] + [[y, t] for t, y in zip(TWEETS, LABELS)],
    "text,label without header": lambda: [[t, y] for t, y in zip(TWEETS, LABELS)],
    "label,text without header": lambda: [[y, t] for t, y in zip(TWEETS, LABELS)],
    "Sentiment140": sentiment140_rows,
    "Sentiment140 with header": lambda: [["target", "id", "date", "flag", "user", "text"]]
                                         + sentiment140_rows(),
    "ItemID four columns": lambda: [["ItemID", "Sentiment", "SentimentSource", "SentimentText"]]
                                    + [[i + 1, y, "Sentiment140", t]
                                       for i, (t, y) in enumerate(zip(TWEETS, LABELS))],
    "four columns without header": lambda: [[i + 1, y, "Sentiment140", t]
                                            for i, (t, y) in enumerate(zip(TWEETS, LABELS))],
    "negative/positive labels": lambda: [["text", "sentiment"]] + [
        [t, "positive" if y else "negative"] for t, y in zip(TWEETS, LABELS)],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_every_tweet_with_its_label(layout, tmp_path):
    tweets = read(write(tmp_path / "t.csv", LAYOUTS[layout]()))
    assert len(tweets.texts) == len(TWEETS) == 8
    assert tweets.texts == TWEETS and tweets.labels == LABELS
    assert tweets.problems == {} and tweets.split_at_commas == []
    assert SAID[layout] in tweets.layout, tweets.layout


SAID = {  # what the report says it found
    "text,label with header": "header text,label: text in column 0, label in column 1; labels 0/1",
    "label,text with header": "header Sentiment,Tweet: text in column 1, label in column 0",
    "text,label without header": "2 columns, no header: text in column 0, label in column 1",
    "label,text without header": "2 columns, no header: text in column 1, label in column 0",
    "Sentiment140": "Sentiment140 layout (target,id,date,flag,user,text; no header): text in "
                    "column 5, label in column 0; labels 0/4",
    "Sentiment140 with header": "header target,id,date,flag,user,text: text in column 5",
    "ItemID four columns": "header ItemID,Sentiment,SentimentSource,SentimentText: text in column 3",
    "four columns without header": "ItemID,Sentiment,SentimentSource,SentimentText (no header)",
    "negative/positive labels": "labels negative/positive",
}


def test_sentiment140_neutral_labels_are_reported_and_skipped(tmp_path):
    rows = sentiment140_rows()
    rows.insert(3, [2, 1, "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "u", "just a tweet"])
    tweets = read(write(tmp_path / "t.csv", rows))
    assert "Sentiment140" in tweets.layout and "labels 0/4" in tweets.layout
    assert tweets.texts == TWEETS and tweets.labels == LABELS
    assert tweets.problems == {"label not 0/4 ('2' x1)": [4]}


def test_bom_and_crlf(tmp_path):
    rows = [["text", "label"]] + [[t, y] for t, y in zip(TWEETS, LABELS)]
    tweets = read(write(tmp_path / "t.csv", rows, bom=True, newline="\r\n"))
    assert tweets.texts == TWEETS and tweets.labels == LABELS  # no "\r" left, header found
    assert tweets.lines == 9


# --- what real files do wrong --------------------------------------------------------------------
def test_an_unbalanced_quote_loses_no_following_line(tmp_path):
    lines = [f"{t},{y}" for t, y in zip(TWEETS, LABELS)]
    lines.insert(3, '"omg i cant believe it,1')  # a quote opened by the tweet and never closed
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    assert len(list(csv.reader(io.StringIO(path.read_text())))) < 9  # a strict reader loses rows
    tweets = read(path)
    assert len(tweets.texts) == 9
    assert tweets.texts[3] == '"omg i cant believe it' and tweets.labels[3] == 1
    assert tweets.texts[4:] == TWEETS[3:] and tweets.labels[4:] == LABELS[3:]
    assert tweets.split_at_commas == [4, 8]  # 8: "best coffee, ever,1", a comma left unquoted
    assert "unbalanced quote" in common.tweet_file_report(path, tweets)


def test_commas_inside_an_unquoted_tweet(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello, world, again,1\nbye,0\n")
    tweets = read(path)
    assert tweets.texts == ["hello, world, again", "bye"] and tweets.labels == [1, 0]


def test_bad_label_rows_are_counted_reported_and_skipped(tmp_path):
    path = tmp_path / "t.csv"
    lines = ["text,label"] + [f"{t},{y}" for t, y in zip(TWEETS, LABELS)]
    lines[2:2] = ["no label here", "what,maybe", "", ",1"]  # lines 3, 4, 5 (blank), 6 (empty)
    path.write_text("\n".join(lines) + "\n")
    tweets = read(path)
    assert tweets.texts == TWEETS and tweets.labels == LABELS
    assert tweets.problems == {"blank line": [5], "missing label (too few columns)": [3],
                               "label not 0/1 ('maybe' x1)": [4], "empty tweet": [6]}
    text = common.tweet_file_report(path, tweets)
    assert "8 tweets from 13 lines" in text
    assert "skipped 1 line: label not 0/1 ('maybe' x1) (line 4)" in text


def test_a_file_without_a_valid_row_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,maybe\nbye,perhaps\n")
    with pytest.raises(SystemExit, match="no line holds a tweet with a 0/1 label"):
        read(path)
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(SystemExit, match="holds no tweets"):
        read(tmp_path / "empty.csv")


def test_columns_by_name_or_position(tmp_path):
    rows = [[i, t, y] for i, (t, y) in enumerate(zip(TWEETS, LABELS))]
    named = read(write(tmp_path / "a.csv", [["id", "body", "score"]] + rows),
                 text="body", label="score")
    by_position = read(write(tmp_path / "b.csv", rows), text="1", label="2")
    for tweets in (named, by_position):
        assert tweets.texts == TWEETS and tweets.labels == LABELS
    with pytest.raises(SystemExit, match="--text-column 'words': no such column"):
        read(tmp_path / "a.csv", text="words", label="score")
    with pytest.raises(SystemExit, match="--label-column 5: the file has 3 columns"):
        read(tmp_path / "b.csv", text="1", label="5")


def test_non_ascii_becomes_one_placeholder_and_long_tweets_are_cut():
    codes, lengths, counts = lstm_tweets.encode(["Hi!", "café ☕", "x" * 300], max_len=280)
    assert codes[0, :3].tolist() == [72, 105, 33] and codes[0, 3:].eq(0).all()
    assert codes[1, :6].tolist() == [99, 97, 102, 26, 32, 26]  # é and ☕ → SUB (26)
    assert lengths.tolist() == [3, 6, 280] and codes.shape == (3, 280)
    assert counts == {"non_ascii_tweets": 1, "truncated_tweets": 1}


# --- the model -----------------------------------------------------------------------------------
def codes_of(*texts):
    codes, lengths, _ = lstm_tweets.encode(list(texts), max_len=280)
    return codes, lengths


def test_padding_never_changes_a_prediction():
    torch.manual_seed(0)
    model = lstm_tweets.CharLSTM().eval()
    alone = model(*codes_of("good morning"))
    padded = model(*codes_of("good morning", "a much, much longer tweet " * 8))
    assert padded.shape == (2, 2)
    assert torch.allclose(alone[0], padded[0], atol=1e-6)


def test_output_is_the_last_real_state_through_the_linear_layer():
    """An independent LSTM: the gate equations of torch.nn.LSTM's documentation, step by step."""
    torch.manual_seed(1)
    model = lstm_tweets.CharLSTM(hidden=8).eval()
    text = "ok :)"
    W_ih, W_hh = model.lstm.weight_ih_l0, model.lstm.weight_hh_l0
    b = model.lstm.bias_ih_l0 + model.lstm.bias_hh_l0
    h, c = torch.zeros(8), torch.zeros(8)
    for char in text:
        x = torch.zeros(128)
        x[ord(char)] = 1.0
        i, f, g, o = (W_ih @ x + W_hh @ h + b).chunk(4)  # PyTorch's gate order: i, f, g, o
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    expected = torch.log_softmax(model.out(h), 0)
    got = model(*codes_of(text, "a longer tweet to pad it"))[0]
    assert torch.allclose(got, expected, atol=1e-5)


def random_tweet(length, generator):
    return "".join(chr(c) for c in torch.randint(32, 127, (length,), generator=generator).tolist())


def test_the_padded_batch_read_at_each_last_character_equals_packing():
    """forward runs the LSTM over the zero-padded batch and reads each tweet's output at position
    length - 1; forward_packed stops the LSTM there. The same log-probs and the same gradients,
    to float32 rounding, for lengths from 1 to the longest (280, the batch's width)."""
    generator = torch.Generator().manual_seed(3)
    device = torch.device(DEVICE)
    model = lstm_tweets.CharLSTM().to(device)
    tweets = [random_tweet(n, generator) for n in (1, 280, 2, 37, 140, 279, 74, 1)]
    codes, lengths = (t.to(device) for t in codes_of(*tweets))
    assert codes.shape[1] == 280 and lengths.tolist() == [1, 280, 2, 37, 140, 279, 74, 1]
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0], device=device)
    padded, packed = model(codes, lengths), model.forward_packed(codes, lengths)
    assert torch.allclose(padded, packed, rtol=1e-5, atol=1e-6)
    grads = [torch.autograd.grad(lstm_tweets.nll_loss(log_probs, labels), list(model.parameters()))
             for log_probs in (padded, packed)]
    for from_padded, from_packed in zip(*grads):
        assert torch.allclose(from_padded, from_packed, rtol=1e-4, atol=1e-7)


def test_a_training_step_never_waits_for_the_host():
    """fit's step, on PyTorch's meta device: batch() with CPU indices, then train_step (forward
    with the lengths on the device, the class-weighted NLL, backward, make_optimizer's Adam).
    A CPU tensor meeting a device tensor, or a number read back from the device (.item(),
    int(), .cpu(): packing would need one), fails here. fit itself cannot run on meta: its
    records read the accuracies back as numbers."""
    meta = torch.device("meta")
    codes, lengths = codes_of("a", "x" * 50, "hello :)", "no")
    split = (codes.to(meta), lengths, torch.tensor([0, 1, 1, 0]).to(meta))  # as load_split gives
    model = lstm_tweets.CharLSTM(hidden=16).to(meta)
    args = lstm_tweets.parse_args(["--hidden", "16", "--class-weighted"])
    optimizer = lstm_tweets.make_optimizer(model, args)
    class_weights = torch.empty(2, device=meta)  # on the device as fit's (bincount: no meta kernel)
    losses = torch.empty(2, device=meta)
    with NoHostTensors():
        for step, idx in enumerate([torch.tensor([2, 0]), torch.tensor([1, 3])]):
            codes, lengths, labels = lstm_tweets.batch(split, idx)
            losses[step] = lstm_tweets.train_step(model, optimizer, codes, lengths, labels,
                                                  class_weights, args, meta)
    assert codes.shape == (2, 50) and lengths.device == meta  # cut to the longest of the batch
    assert all(p.grad.device == meta for p in model.parameters())
    with pytest.raises(AssertionError, match="meets meta tensors and CPU tensors"):
        with NoHostTensors():
            split[0][torch.tensor([0, 1])]  # what batch() did before its indices went over


def test_nll_loss_is_mean_negative_log_probability():
    log_probs = torch.log_softmax(torch.randn(5, 2), 1)
    labels = torch.tensor([0, 1, 1, 0, 1])
    reference = -sum(log_probs[b, labels[b]].item() for b in range(5)) / 5
    assert lstm_tweets.nll_loss(log_probs, labels).item() == pytest.approx(reference, rel=1e-6)



def test_class_weighted_loss_by_hand():
    """Four negatives and one positive: w = 5/8 and 5/2, and the loss is the weighted mean."""
    labels = torch.tensor([0, 0, 1, 0, 0])
    weights = lstm_tweets.inverse_frequency(labels)
    assert weights.tolist() == pytest.approx([5 / 8, 5 / 2])
    log_probs = torch.log_softmax(torch.randn(5, 2), 1)
    w = [5 / 8, 5 / 8, 5 / 2, 5 / 8, 5 / 8]
    reference = -sum(w[b] * log_probs[b, labels[b]].item() for b in range(5)) / sum(w)
    assert lstm_tweets.nll_loss(log_probs, labels, weights).item() == pytest.approx(reference, rel=1e-6)


# --- runs ----------------------------------------------------------------------------------------
def synthetic_tweets(path, n, seed):
    """Easy synthetic tweets: positive ones end in ':)', negative ones in ':('. Tests only."""
    generator = torch.Generator().manual_seed(seed)
    words = ["the", "game", "today", "coffee", "rain", "my", "phone", "is", "so", "really"]
    rows = [["text", "label"]]
    for _ in range(n):
        picked = torch.randint(0, len(words), (int(torch.randint(2, 8, (1,), generator=generator)),),
                               generator=generator)
        label = int(torch.randint(0, 2, (1,), generator=generator))
        rows.append([" ".join(words[i] for i in picked) + (" :)" if label else " :("), label])
    return write(path, rows)


@pytest.fixture(scope="module")
def tweet_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tweets")
    return synthetic_tweets(root / "tweets_train.csv", 400, 0), synthetic_tweets(root / "tweets_test.csv", 100, 1)


def quick_args(files, out_dir, *extra):
    train, test = files
    return ["--train-csv", str(train), "--test-csv", str(test), "--out-dir", str(out_dir),
            *DEVICE_FLAGS, "--iterations", "150", "--eval-every", "50", "--lr", "0.01",
            "--train-sample", "64", *map(str, extra)]


RUN = "lstm_tweets_lr0.01_it150_eval50_sample64"  # quick_args' run, named after its knobs


def metrics(out_dir):
    (path,) = out_dir.glob("lstm_tweets*_metrics.json")  # the one run in out_dir, whatever its knobs
    return json.loads(path.read_text())


def without_times(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


@pytest.mark.slow
def test_smoke_run_learns_then_load_repeats_the_numbers(tweet_files, tmp_path):
    trained = tmp_path / "trained"
    lstm_tweets.main(quick_args(tweet_files, trained))
    for name in ("_curves.png", ".pt", ".ckpt", "_metrics.json"):
        assert (trained / f"{RUN}{name}").is_file(), name
    first = metrics(trained)
    assert [r["iteration"] for r in first["history"]] == [50, 100, 150]
    assert first["final"]["test_tweets"] == 100 and first["final"]["train_sample"] == 64
    assert first["final"]["test_acc"] >= 0.9  # the last two characters decide: easy, if read right
    final = first["final"]
    for split in ("train", "train_all", "test"):  # balanced accuracy = the mean class recall
        recalls = final[f"{split}_negative_recall"], final[f"{split}_positive_recall"]
        assert final[f"{split}_balanced_acc"] == pytest.approx(sum(recalls) / 2)

    reloaded = tmp_path / "reloaded"
    lstm_tweets.main(quick_args(tweet_files, reloaded, "--load", trained / f"{RUN}.pt"))
    assert (reloaded / f"{RUN}_curves.png").is_file()  # --load keeps the file's own name
    assert not list(reloaded.glob("*.pt"))
    again = metrics(reloaded)
    assert again["final"] == first["final"] and again["history"] == first["history"]


def test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults():
    """The default command keeps the committed name (reproduction); a changed knob writes beside
    it; flags that do not change the result, the data files and their columns stay out; --load
    keeps the loaded file's name."""
    name = lambda *flags: lstm_tweets.run_name(lstm_tweets.parse_args(list(flags)))
    semeval = ["--train-csv", "a.tsv", "b.tsv", "--test-csv", "c.txt"]
    assert name() == name(*semeval, "--device", "cpu", "--out-dir", "elsewhere", "--data-dir", "x",
                          "--text-column", "body", "--label-column", "1") == "lstm_tweets"
    assert name(*semeval, "--hidden", "64", "--iterations", "200", "--eval-every", "100") == \
        "lstm_tweets_h64_it200_eval100"
    assert name("--class-weighted", "--lr", "1e-3", "--iterations", "30000") == \
        "lstm_tweets_lr0.001_it30000_weighted"
    assert name("--optimizer", "sgd", "--bucket", "1", "--max-len", "140", "--train-sample", "500") \
        == "lstm_tweets_maxlen140_sample500_bucket1_sgd"
    assert name("--lr", "1e-4", "--hidden", "128") == "lstm_tweets"  # the defaults, spelled out
    assert name("--load", "runs/lstm_tweets_h64.pt", "--hidden", "32") == "lstm_tweets_h64"


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(tweet_files, tmp_path, monkeypatch):
    lstm_tweets.main(quick_args(tweet_files, tmp_path / "whole"))
    kill_at_call(monkeypatch, lstm_tweets, "evaluate", 5)  # two evaluations per record
    with pytest.raises(KeyboardInterrupt):
        lstm_tweets.main(quick_args(tweet_files, tmp_path / "split"))
    monkeypatch.undo()
    saved = common.load_checkpoint(tmp_path / "split" / f"{RUN}.ckpt", "lstm_tweets")
    assert saved["epoch"] == 100 and saved["position"] > 0  # the pass under way, and where in it
    lstm_tweets.main(quick_args(tweet_files, tmp_path / "split", "--resume"))
    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    assert without_times(split["history"]) == without_times(whole["history"])
    assert split["final"] == whole["final"]


@needs_bf16
def test_amp_trains_in_bfloat16_to_finite_losses(tweet_files, tmp_path):
    lstm_tweets.main(quick_args(tweet_files, tmp_path, "--iterations", "50", "--amp"))
    record = metrics(tmp_path)["history"][0]
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("batch_loss", "train_loss", "test_loss"))


# --- bad input -----------------------------------------------------------------------------------
def test_resume_without_a_checkpoint(tweet_files, tmp_path):
    result = run_script("lstm_tweets.py", *quick_args(tweet_files, tmp_path), "--resume")
    assert_one_line_error(result, "--resume: no checkpoint at", f"{RUN}.ckpt")


def test_missing_tweet_files(tmp_path):
    result = run_script("lstm_tweets.py", "--data-dir", tmp_path, "--out-dir", tmp_path)
    assert_one_line_error(result, f"no tweet file at {tmp_path / 'tweets_train.csv'}", "Sentiment140")


@pytest.mark.parametrize("flags, phrase", [
    (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    (["--iterations", "0"], "argument --iterations: must be > 0, got 0"),
    (["--max-len", "-1"], "argument --max-len: must be > 0, got -1"),
    (["--optimizer", "rmsprop"], "--optimizer: invalid choice"),
    (["--bucket", "0"], "argument --bucket: must be > 0, got 0"),
])
def test_bad_flags_are_refused(flags, phrase, tmp_path):
    assert_one_line_error(run_script("lstm_tweets.py", "--out-dir", tmp_path, *flags), phrase)


def test_unreadable_columns_are_one_line(tweet_files, tmp_path):
    result = run_script("lstm_tweets.py", *quick_args(tweet_files, tmp_path), "--text-column", "body")
    assert_one_line_error(result, "--text-column 'body': no such column")


# --- SemEval's tab-separated files, with every quirk the real ones have ---------------------------
SEMEVAL_LINES = [
    "101\tpositive\tI\\u2019m so happy today",         # 1: a literal \u escape → ’ (then code 26)
    "102\tneutral\tthe bus leaves at nine",              # 2: neutral, skipped
    '103\tnegative\t"Arriving Tuesday" is awful news',   # 3: the opening quote is the tweet's
    "104\tpositive\tgreat game\\u002c loved it\t",       # 4: escape (a comma) and a stray tab
    "",                                                  # 5: blank
    "105\tnegative\tworst day ever\t",                   # 6: stray tab
    "106\tmixed\tnot a label we know",                   # 7: unknown label
    "107\tpositive",                                     # 8: no text field
    "108\tnegative\tlast line, no newline",              # 9: no newline after it
]


def test_semeval_tsv_with_every_quirk_counted(tmp_path):
    path = tmp_path / "twitter-2016test-A.tsv"
    path.write_text("\n".join(SEMEVAL_LINES))  # no newline at the end
    tweets = read(path)
    assert tweets.texts == ["I\u2019m so happy today", '"Arriving Tuesday" is awful news',
                            "great game, loved it", "worst day ever", "last line, no newline"]
    assert tweets.labels == [1, 0, 1, 0, 0] and tweets.lines == 9
    assert tweets.problems == {"blank line": [5],
                               "neutral (a positive/negative classifier skips them)": [2],
                               "label not positive/negative/neutral": [7],
                               "not id<TAB>label<TAB>text": [8]}
    assert tweets.notes == {"literal \\uXXXX escapes, read as the characters they name": [1, 4],
                            "a stray trailing tab (an empty extra field)": [4, 6]}
    codes, lengths, counts = lstm_tweets.encode(tweets.texts, 280)
    assert counts["non_ascii_tweets"] == 1 and codes[0, 1].item() == lstm_tweets.PLACEHOLDER
    assert "SemEval layout" in common.tweet_file_report(path, tweets)


def test_several_training_files_are_joined_in_order(tmp_path, capsys):
    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    first.write_text("1\tpositive\tgood one\n2\tneutral\tmeh\n")
    second.write_text("3\tnegative\tbad one\n4\tpositive\tnice\n")
    args = lstm_tweets.parse_args(["--train-csv", str(first), str(second), "--test-csv", str(second),
                                   "--device", "cpu"])
    (codes, lengths, labels), _, texts, neutral = lstm_tweets.load_split(args.train_csv, args, "cpu")
    assert texts == ["good one", "bad one", "nice"] and neutral == ["meh"]
    assert labels.tolist() == [1, 0, 1] and lengths.tolist() == [8, 7, 4]
    assert "3 tweets from 2 files" in capsys.readouterr().out


def test_real_semeval_files_give_the_published_counts():
    """The 11 real training files and the test file: every binary row read, every neutral row
    and every \\u escape counted (the numbers of ../shared/data/tweets/README.md)."""
    from conftest import SHARED_DATA
    folder = SHARED_DATA / "tweets" / "semeval2017"
    if not folder.is_dir():
        pytest.skip(f"real tweets not found at {folder}")
    train = [read(p) for p in sorted((folder / "train").glob("*.tsv"))]
    test = read(folder / "SemEval2017-task4-test.subtask-A.english.txt")
    assert len(train) == 11
    labels = [y for t in train for y in t.labels]
    assert (len(labels), sum(labels)) == (27_743, 19_903)
    assert (len(test.labels), sum(test.labels)) == (6_347, 2_375)
    escapes = "literal \\uXXXX escapes, read as the characters they name"
    assert sum(len(t.notes.get(escapes, [])) for t in train + [test]) == 3_015


def test_balanced_accuracy_by_hand():
    # 8 negatives, 2 positives; a model right on 6 negatives and 1 positive:
    # accuracy 7/10, balanced accuracy (6/8 + 1/2) / 2 = 0.625; always "negative": 0.5
    assert lstm_tweets.balanced_accuracy(torch.tensor([6.0, 1.0]), torch.tensor([8.0, 2.0])) == 0.625
    assert lstm_tweets.balanced_accuracy(torch.tensor([8.0, 0.0]), torch.tensor([8.0, 2.0])) == 0.5
    assert lstm_tweets.balanced_accuracy(torch.tensor([3.0, 0.0]), torch.tensor([4.0, 0.0])) == 0.75  # one class present


def test_bucketed_order_is_a_pass_of_similar_length_minibatches():
    """Every tweet once per pass; the dropped tail (len % batch) is not the longest tweets;
    minibatches are much narrower than random ones; --bucket 1 is a plain shuffle."""
    lengths = torch.randint(1, 281, (1000,), generator=torch.Generator().manual_seed(0))
    order = lstm_tweets.bucketed_order(lengths, 32, 10, torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(1000))
    kept = order[:1000 // 32 * 32].view(-1, 32)
    bucketed_width = lengths[kept].max(1).values.float().mean()
    shuffled = lstm_tweets.bucketed_order(lengths, 32, 1, torch.Generator().manual_seed(1))
    assert torch.equal(shuffled, torch.randperm(1000, generator=torch.Generator().manual_seed(1)))
    random_width = lengths[shuffled[:1000 // 32 * 32].view(-1, 32)].max(1).values.float().mean()
    assert bucketed_width < 0.6 * random_width  # random minibatches of 32 are padded to ~272
    assert lengths[order[1000 // 32 * 32:]].float().mean() < 250  # a random tail, not the longest
    # the minibatches are shuffled: not ordered by length across the pass
    widths = lengths[kept].max(1).values
    assert not torch.equal(widths, widths.sort().values)


def test_bucketed_minibatches_give_every_tweet_the_packed_log_probs():
    """Training reads bucketed minibatches through forward (batch() cuts each to its longest
    tweet): every tweet's log-probs equal the packed reference, computed in one random batch."""
    generator = torch.Generator().manual_seed(4)
    device = torch.device(DEVICE)
    model = lstm_tweets.CharLSTM().to(device)
    n_tweets = torch.randint(1, 200, (96,), generator=generator).tolist()
    codes, lengths = codes_of(*[random_tweet(n, generator) for n in n_tweets])
    split = (codes.to(device), lengths, torch.zeros(96, dtype=torch.long, device=device))
    order = lstm_tweets.bucketed_order(lengths, 8, 4, generator)
    with torch.no_grad():
        reference = model.forward_packed(split[0], lengths.to(device))
        for idx in order.view(-1, 8):
            x, batch_lengths, _ = lstm_tweets.batch(split, idx)
            assert x.shape[1] == int(lengths[idx].max())  # cut to the minibatch's longest
            assert torch.allclose(model(x, batch_lengths), reference[idx.to(device)],
                                  rtol=1e-5, atol=1e-6)


def test_class_weighted_trains_with_the_training_sets_inverse_frequencies(tweet_files, tmp_path,
                                                                         monkeypatch):
    """--class-weighted hands every step N / (2 N_c) of the training labels; without it, none."""
    seen, real_loss = [], lstm_tweets.nll_loss

    def recording(log_probs, labels, class_weights=None):
        seen.append(None if class_weights is None else class_weights.cpu().tolist())
        return real_loss(log_probs, labels, class_weights)

    monkeypatch.setattr(lstm_tweets, "nll_loss", recording)
    lstm_tweets.main(quick_args(tweet_files, tmp_path / "weighted", "--class-weighted",
                                "--iterations", "3", "--eval-every", "3"))
    labels = torch.tensor(common.read_tweet_csv(tweet_files[0]).labels)
    counts = torch.bincount(labels, minlength=2).tolist()
    expected = [len(labels) / (2 * counts[0]), len(labels) / (2 * counts[1])]
    assert len(seen) == 3 and all(w == pytest.approx(expected) for w in seen)
    seen.clear()
    lstm_tweets.main(quick_args(tweet_files, tmp_path / "plain", "--iterations", "3",
                                "--eval-every", "3"))
    assert seen == [None, None, None]


# --- the training step against a hand-written step on its objective -----------------------------
# Training labels with unequal counts, 5 negatives and 3 positives: by the docstring,
# w_c = N / (2 N_c) = 8/10 and 8/6. The step's minibatches hold 3 and 1 (so sum w != B).
TRAIN_LABELS = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0])
WEIGHTS_BY_HAND = torch.tensor([8 / 10, 8 / 6])
STEP_BATCHES = [(("so happy :)", "no", "worst day ever", "meh"), [1, 0, 0, 0]),
                (("rain again", "ok", "love it!!", "bad bad bad bad"), [0, 0, 1, 0])]


def weighted_nll_by_hand(log_probs, labels, weights):
    """The docstring's L = -Σ_b w[y_b] log p(y_b | tweet_b) / Σ_b w[y_b], from the log-probs."""
    w = weights[labels]
    return -(w * log_probs[torch.arange(len(labels)), labels]).sum() / w.sum()



@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_two_steps_descend_the_class_weighted_nll_at_each_last_character(optimizer):
    """Two calls of train_step (with make_optimizer's optimizer, the class weights of
    inverse_frequency, tweets of unequal lengths padded to the longest) equal two hand-written
    steps: the gradient of the docstring's weighted NLL written from log-probs that the packed
    forward reads at each tweet's own last character, then Adam or plain SGD at --lr written
    out. SGD shows the weights' normalisation (Adam's first steps hardly see a scale)."""
    args = lstm_tweets.parse_args(["--optimizer", optimizer, "--lr", "0.03", "--hidden", "8",
                                   "--class-weighted"])
    torch.manual_seed(0)
    model = lstm_tweets.CharLSTM(args.hidden)
    reference = lstm_tweets.CharLSTM(args.hidden)
    step_optimizer = lstm_tweets.make_optimizer(model, args)
    class_weights = lstm_tweets.inverse_frequency(TRAIN_LABELS)
    assert torch.allclose(class_weights, WEIGHTS_BY_HAND)
    step_grads = record_gradients(step_optimizer, list(model.parameters()))
    adam_state = {}
    for tweets, labels in STEP_BATCHES:
        codes, lengths = codes_of(*tweets)
        labels = torch.tensor(labels)
        reference.load_state_dict(model.state_dict())
        log_probs = reference.forward_packed(codes, lengths)  # read at each last character
        loss = weighted_nll_by_hand(log_probs, labels, WEIGHTS_BY_HAND)
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        lstm_tweets.train_step(model, step_optimizer, codes, lengths, labels, class_weights, args,
                               torch.device("cpu"))
        used = step_grads[-1]
        for step_grad, grad in zip(used, grads):
            assert torch.allclose(step_grad, grad, rtol=1e-4, atol=1e-7)
        # the update from the step's own gradient: Adam divides by sqrt(v), so a gradient of
        # 1e-9 from the padded path and 1.001e-9 from the packed one would move a weight apart
        before = [p.detach() for p in reference.parameters()]
        expected = (adam_by_hand(before, used, adam_state, args.lr) if optimizer == "adam"
                    else [p - args.lr * g for p, g in zip(before, used)])
        for param, stepped in zip(model.parameters(), expected):
            assert torch.allclose(param, stepped, rtol=1e-5, atol=1e-7)


def test_make_optimizer_is_the_flags_optimizer_at_the_flags_rate():
    """--optimizer adam: Adam at --lr with the defaults of Kingma & Ba (betas 0.9, 0.999, eps
    1e-8), as the two-step test writes it; --optimizer sgd: plain SGD, no momentum."""
    model = lstm_tweets.CharLSTM(8)
    adam = lstm_tweets.make_optimizer(model, lstm_tweets.parse_args(["--lr", "0.003"]))
    assert type(adam) is torch.optim.Adam and len(adam.param_groups) == 1
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (0.003, (0.9, 0.999), 1e-8)
    assert group["weight_decay"] == 0
    assert not group["amsgrad"]
    sgd = lstm_tweets.make_optimizer(model, lstm_tweets.parse_args(["--optimizer", "sgd",
                                                                    "--lr", "0.02"]))
    assert type(sgd) is torch.optim.SGD
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"]) == (0.02, 0)


def test_fit_steps_through_whole_passes_of_bucketed_minibatches(tmp_path, monkeypatch):
    """fit's stream with a recording train_step: 12 tweets (lengths 1..12, so a length names a
    tweet), --batch-size 3, 8 iterations = 2 passes of 4 minibatches. Every tweet exactly once
    per pass, cut to the minibatch's longest, with its own label; the minibatches are those of
    bucketed_order with --bucket 2 and --batch-size 3 from fit's generator (the knobs reach it);
    every step gets the class weights N / (2 N_c) of the training labels, by hand 12/16, 12/8."""
    args = lstm_tweets.parse_args(["--batch-size", "3", "--bucket", "2", "--iterations", "8",
                                   "--eval-every", "8", "--class-weighted", "--hidden", "8",
                                   "--out-dir", str(tmp_path)])
    tweets = [chr(ord("a") + i) * (i + 1) for i in range(12)]           # "a", "bb", "ccc", ...
    codes, lengths = codes_of(*tweets)
    labels = torch.tensor([1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0])         # 8 negatives, 4 positives
    steps = []

    def recording_step(model, optimizer, codes, lengths, labels, class_weights, args, device):
        steps.append((codes, lengths, labels, class_weights))
        return torch.zeros(())

    monkeypatch.setattr(lstm_tweets, "train_step", recording_step)
    train = (codes, lengths, labels)
    lstm_tweets.fit(lstm_tweets.CharLSTM(8), train, train, None, train, args, torch.device("cpu"),
                    torch.Generator().manual_seed(5), tmp_path / "run")
    assert len(steps) == 8
    for batch_codes, batch_lengths, batch_labels, class_weights in steps:
        tweet = batch_lengths - 1                                          # which tweets
        assert torch.equal(batch_labels, labels[tweet])
        assert batch_codes.shape == (3, int(batch_lengths.max()))
        for row, i in zip(batch_codes, tweet.tolist()):
            assert row.tolist() == [ord(tweets[i][0])] * (i + 1) + [0] * (len(row) - i - 1)
        assert class_weights.tolist() == pytest.approx([12 / 16, 12 / 8])
    seen = torch.stack([s[1] - 1 for s in steps])                         # (8, 3) tweet indices
    assert sorted(seen[:4].flatten().tolist()) == list(range(12))         # the first pass
    assert sorted(seen[4:].flatten().tolist()) == list(range(12))         # the second
    generator = torch.Generator().manual_seed(5)
    passes = [lstm_tweets.bucketed_order(lengths, 3, 2, generator) for _ in range(2)]
    assert torch.equal(seen.flatten(), torch.cat(passes))


def test_the_network_sees_each_tweets_ascii_codes_cut_at_max_len(tweet_files, tmp_path,
                                                               monkeypatch):
    """A forward pre-hook on the network main builds records every (codes, lengths) it is given:
    in training (train mode) rows of the training tweets only, in evaluation (eval mode) of the
    training or test tweets; each row is the tweet's ASCII codes cut at --max-len 6, zeros
    after its length, and the batch is as wide as its longest row. The network has --hidden 8;
    the optimizer is --optimizer sgd at --lr 0.02. Reference: the files read with csv here."""
    seen, built = [], []
    real_make_optimizer = lstm_tweets.make_optimizer

    def recording_make_optimizer(model, args):
        model.register_forward_pre_hook(
            lambda m, inputs: seen.append((m.training, *(t.cpu() for t in inputs))))
        built.append(real_make_optimizer(model, args))
        assert model.lstm.hidden_size == 8
        return built[-1]

    monkeypatch.setattr(lstm_tweets, "make_optimizer", recording_make_optimizer)
    lstm_tweets.main(quick_args(tweet_files, tmp_path, "--max-len", "6", "--hidden", "8",
                                "--iterations", "2", "--eval-every", "2", "--batch-size", "4",
                                "--optimizer", "sgd", "--lr", "0.02"))
    (optimizer,) = built
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["lr"] == 0.02

    def cut_codes(path):
        with open(path, newline="") as file:
            return {tuple(ord(c) for c in row["text"][:6]) for row in csv.DictReader(file)}

    train_rows, test_rows = cut_codes(tweet_files[0]), cut_codes(tweet_files[1])
    assert [training for training, _, _ in seen][:2] == [True, True]
    assert not any(training for training, _, _ in seen[2:])
    for training, codes, lengths in seen:
        assert codes.shape[1] == int(lengths.max()) <= 6
        for row, length in zip(codes.tolist(), lengths.tolist()):
            assert row[length:] == [0] * (len(row) - length)
            assert tuple(row[:length]) in (train_rows if training else train_rows | test_rows)
    assert len(seen[0][1]) == len(seen[1][1]) == 4


# --- the bag-of-words yardstick ------------------------------------------------------------------
def test_bag_of_words_keeps_the_ngrams_of_at_least_two_training_tweets():
    """By hand: unigrams and bigrams, lower-cased, punctuation its own word; a vocabulary of the
    n-grams in two or more training tweets (twice in one tweet counts once); a test tweet's
    unseen n-grams are left out."""
    train = ["I love it!", "love it", "I hate it", "hate hate"]
    assert lstm_tweets.ngrams("I love it!") == {"i", "love", "it", "!", "i love", "love it", "it !"}
    (x_train, x_test), n = lstm_tweets.bag_of_words(train, ["LOVE IT, I hate"])
    vocabulary = sorted(["i", "love", "it", "love it", "hate"])  # "hate hate": once in its tweet
    assert n == len(vocabulary) == 5
    expected_train = [[{"i", "love", "it", "love it"}], [{"love", "it", "love it"}],
                      [{"i", "it", "hate"}], [{"hate"}]]
    for row, (grams,) in zip(x_train.to_dense(), expected_train):
        assert [vocabulary[i] for i in row.nonzero().flatten().tolist()] == sorted(grams)
    assert sorted(vocabulary[i] for i in x_test.to_dense()[0].nonzero().flatten().tolist()) == \
        sorted(["love", "it", "love it", "i", "hate"])


def test_the_logistic_regression_stops_where_its_gradient_written_by_hand_is_zero():
    """At the returned (w, b) the gradient of the docstring's objective, written here by hand
    (∂L/∂w = Xᵀ(c_y (σ(Xw + b) - y)) / Σ c_y + l2·w, ∂L/∂b = Σ c_y (σ - y) / Σ c_y), is ~0: the
    optimum of a convex problem. Imbalanced labels (6 to 24) and a large l2, so an unweighted
    loss, a penalised bias or an ignored l2 each leave a gradient far from 0."""
    generator = torch.Generator().manual_seed(0)
    dense = (torch.rand(30, 12, generator=generator) < 0.3).double()
    labels = torch.tensor([1] * 6 + [0] * 24)
    w, b = lstm_tweets.logistic_regression(dense.to_sparse(), labels, l2=0.05)
    c = torch.where(labels == 1, 30 / (2 * 6), 30 / (2 * 24)).double()
    residual = c * (torch.sigmoid(dense @ w.squeeze(1) + b) - labels.double()) / c.sum()
    grad_w, grad_b = dense.T @ residual + 0.05 * w.squeeze(1), residual.sum()
    assert grad_w.abs().max() < 1e-6 and abs(grad_b) < 1e-6  # at w = b = 0 it is ~0.1
    assert w.abs().max() > 0.1  # not a trivial optimum


def test_the_baseline_separates_a_separable_case(capsys):
    """Tweets whose words say the class: the test tweets are all classified right."""
    train = ["good day", "good game", "so good", "bad day", "bad game", "so bad", "good", "bad"]
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0])
    result = lstm_tweets.bag_of_words_baseline(train, labels, ["good so", "bad game day"],
                                               torch.tensor([1, 0]))
    assert result["bag_of_words_test_acc"] == result["bag_of_words_test_balanced_acc"] == 1.0
    assert result["bag_of_words_features"] == 5  # good, bad, day, game, so; each bigram is in one tweet
    assert "bag-of-words logistic regression" in capsys.readouterr().out


# --- the variants beyond the assignment ----------------------------------------------------------
def test_max_and_mean_readouts_pool_the_real_steps_and_send_gradient_to_every_one():
    """read_out by hand on states whose padding is larger than any real value (a readout that
    looked at padding would pick it): max = each unit's largest real value, its gradient 1 at
    that step; mean = the average over the real steps, gradient 1/length at each real step and
    0 on padding. The last-state readout's gradient reaches only the last real step."""
    generator = torch.Generator().manual_seed(1)
    output = torch.randn(3, 6, 4, generator=generator)
    lengths = torch.tensor([6, 2, 4])
    for b, n in enumerate(lengths.tolist()):
        output[b, n:] = 100.0
    for how in ("max", "mean", "last"):
        states = output.clone().requires_grad_(True)
        pooled = lstm_tweets.read_out(states, lengths, how)
        pooled.sum().backward()
        for b, n in enumerate(lengths.tolist()):
            real = output[b, :n]
            if how == "max":
                assert torch.equal(pooled[b], real.max(0).values)
                hit = torch.zeros_like(real).scatter_(0, real.argmax(0, keepdim=True), 1.0)
                assert torch.equal(states.grad[b, :n], hit)
            elif how == "mean":
                assert torch.allclose(pooled[b], real.mean(0))
                assert torch.allclose(states.grad[b, :n], torch.full_like(real, 1 / n))
            else:
                assert torch.equal(pooled[b], real[-1])
                assert states.grad[b, :n - 1].abs().sum() == 0 and states.grad[b, n - 1].eq(1).all()
            assert states.grad[b, n:].abs().sum() == 0  # never the padding


def log_probs_by_hand(model, tweets, readout):
    """Each tweet through the model's LSTM alone (no padding, no batch), its states pooled by
    hand, then the linear layer and log-softmax."""
    rows = []
    for tweet in tweets:
        x = torch.nn.functional.one_hot(torch.tensor([ord(ch) for ch in tweet]), 128).float()
        states, _ = model.lstm(x[None])
        states = states[0]
        pooled = {"last": states[-1], "max": states.max(0).values, "mean": states.mean(0)}[readout]
        rows.append(torch.log_softmax(model.out(pooled), 0))
    return torch.stack(rows)


@pytest.mark.parametrize("readout", ["max", "mean"])
def test_a_step_with_a_pooled_readout_descends_the_nll_of_the_pooled_states(readout):
    """train_step with --readout max / mean, --class-weighted and SGD equals a hand-written SGD
    step on the weighted NLL of log_probs_by_hand (each tweet alone, pooled by hand)."""
    args = lstm_tweets.parse_args(["--optimizer", "sgd", "--lr", "0.05", "--hidden", "8",
                                   "--class-weighted", "--readout", readout])
    torch.manual_seed(0)
    model = lstm_tweets.CharLSTM(args.hidden, args.readout)
    reference = copy.deepcopy(model)
    optimizer = lstm_tweets.make_optimizer(model, args)
    tweets, labels = STEP_BATCHES[0][0], torch.tensor(STEP_BATCHES[0][1])
    loss = weighted_nll_by_hand(log_probs_by_hand(reference, tweets, readout), labels, WEIGHTS_BY_HAND)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    lstm_tweets.train_step(model, optimizer, *codes_of(*tweets), labels,
                           lstm_tweets.inverse_frequency(TRAIN_LABELS), args, torch.device("cpu"))
    for param, before, grad in zip(model.parameters(), reference.parameters(), grads):
        assert torch.allclose(param, before - 0.05 * grad, rtol=1e-5, atol=1e-7)


def test_dropout_zeroes_and_rescales_what_the_linear_layer_reads_in_training_only():
    torch.manual_seed(0)
    model = lstm_tweets.CharLSTM(64, "max", dropout=0.5)
    seen = []
    model.out.register_forward_pre_hook(lambda m, x: seen.append(x[0].detach()))
    codes, lengths = codes_of("what a day", "ok")
    clean = lstm_tweets.read_out(model.lstm(torch.nn.functional.one_hot(codes.long(), 128).float())[0],
                                 lengths, "max").detach()
    model.train()(codes, lengths)
    model.eval()(codes, lengths)
    dropped, evaluated = seen
    assert torch.equal(evaluated, clean)
    kept = dropped != 0
    assert 0.3 < kept.float().mean() < 0.7  # about half of 128 values
    assert torch.allclose(dropped[kept], 2 * clean[kept])


def test_the_next_character_loss_by_hand():
    """Each tweet alone through the LSTM: from the state after characters 1..t, the head's
    log-softmax at character t + 1; the mean over every predicted character of the batch (a
    tweet of length L predicts L - 1 of them; padding predicts none)."""
    torch.manual_seed(2)
    model, head = lstm_tweets.CharLSTM(8), torch.nn.Linear(8, 128)
    tweets = ["hello there", "ok", "a"]
    terms = []
    for tweet in tweets:
        x = torch.nn.functional.one_hot(torch.tensor([ord(ch) for ch in tweet]), 128).float()
        states = model.lstm(x[None])[0][0]
        for t in range(len(tweet) - 1):
            terms.append(-torch.log_softmax(head(states[t]), 0)[ord(tweet[t + 1])])
    assert len(terms) == 10 + 1 + 0
    got = lstm_tweets.next_character_loss(model, head, *codes_of(*tweets))
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-6)


def test_pretraining_steps_adam_on_the_next_character_loss_then_the_classifier_starts_there(
        tmp_path, monkeypatch):
    """pretrain with one minibatch holding every tweet: its LSTM weights after the step equal a
    hand-written Adam step at --lr on next_character_loss (head drawn from the same seed); the
    classifier's linear layer is untouched by it."""
    args = lstm_tweets.parse_args(["--hidden", "8", "--lr", "0.01", "--batch-size", "3",
                                   "--bucket", "1", "--pretrain-iterations", "1", "--eval-every", "1"])
    torch.manual_seed(0)
    model = lstm_tweets.CharLSTM(args.hidden)
    reference = copy.deepcopy(model)
    corpus = codes_of("hello there", "good morning", "bye")
    torch.manual_seed(7)
    history = lstm_tweets.pretrain(model, corpus, args, torch.device("cpu"), torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    head = torch.nn.Linear(8, 128)
    params = [*reference.lstm.parameters(), *head.parameters()]
    loss = lstm_tweets.next_character_loss(reference, head, *corpus)
    grads = torch.autograd.grad(loss, params)
    stepped = adam_by_hand([p.detach() for p in params], grads, {}, 0.01)
    for param, expected in zip(model.lstm.parameters(), stepped):
        assert torch.allclose(param, expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(model.out.weight, reference.out.weight)
    assert history[0]["iteration"] == 1 and history[0]["next_character_loss"] == pytest.approx(loss.item())


def test_the_cosine_schedule_sets_each_steps_rate(tweet_files, tmp_path, monkeypatch):
    """--lr-schedule cosine: step i (from 1) runs at lr · (1 + cos(π (i - 1) / N)) / 2."""
    rates, real_step = [], lstm_tweets.train_step

    def recording(model, optimizer, *rest):
        rates.append(optimizer.param_groups[0]["lr"])
        return real_step(model, optimizer, *rest)

    monkeypatch.setattr(lstm_tweets, "train_step", recording)
    lstm_tweets.main(quick_args(tweet_files, tmp_path, "--lr-schedule", "cosine", "--iterations", "8",
                                "--eval-every", "8"))
    assert rates == pytest.approx([0.01 * (1 + math.cos(math.pi * i / 8)) / 2 for i in range(8)])


@pytest.mark.slow
def test_a_validation_run_keeps_its_best_weights_and_load_repeats_it(tweet_files, tmp_path):
    """--val-fraction 0.25 of the 400 training tweets held out; --patience watches their loss;
    the files hold the weights of the lowest validation loss, so the final block's validation
    loss is that evaluation's, and --load (with the pooled readout it was trained with, taken
    from the file) repeats every number. The bag-of-words line is in the final block."""
    trained = tmp_path / "trained"
    extra = ("--val-fraction", "0.25", "--patience", "2", "--readout", "max", "--dropout", "0.2",
             "--iterations", "300", "--eval-every", "25")
    lstm_tweets.main(quick_args(tweet_files, trained, *extra))
    first = metrics(trained)
    final, history = first["final"], first["history"]
    assert (final["train_tweets"], final["val_tweets"]) == (300, 100)
    best = min(history, key=lambda r: r["val_loss"])
    assert final["weights_from_iteration"] == best["iteration"]
    assert final["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert 0.5 <= final["bag_of_words_test_balanced_acc"] <= 1
    (weights,) = trained.glob("*.pt")
    assert weights.stem == "lstm_tweets_lr0.01_patience2_it300_eval25_sample64_max_drop0.2_val0.25"
    reloaded = tmp_path / "reloaded"
    lstm_tweets.main(quick_args(tweet_files, reloaded, "--load", weights))
    assert metrics(reloaded)["final"] == final


def test_a_pretrained_run_records_its_language_model_and_load_keeps_it(tweet_files, tmp_path):
    trained = tmp_path / "trained"
    lstm_tweets.main(quick_args(tweet_files, trained, "--pretrain-iterations", "20",
                                "--iterations", "20", "--eval-every", "10"))
    first = metrics(trained)
    assert [r["iteration"] for r in first["language_model"]] == [10, 20]
    (weights,) = trained.glob("*.pt")
    reloaded = tmp_path / "reloaded"
    lstm_tweets.main(quick_args(tweet_files, reloaded, "--load", weights))
    again = metrics(reloaded)
    assert again["language_model"] == first["language_model"] and again["final"] == first["final"]
