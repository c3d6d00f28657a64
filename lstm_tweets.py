"""Assignment D, part 3: a character-level LSTM that reads a tweet and says positive or negative.

Each tweet is a sequence of ASCII codes; the input at every step is the one-hot vector of the
character (size 128). One LSTM layer with 128 hidden units reads the tweet; a linear layer maps
the hidden state after the tweet's last character to 2 outputs; log-softmax gives the class
log-probabilities and the loss is their negative log-likelihood. Batch size 32, learning rate
1e-4, 100,000 iterations; test accuracy and training accuracy every 1000 iterations.

Choices the assignment leaves open:
- Adam (Kingma & Ba, 2015), a "related optimizer": at the prescribed learning rate of 1e-4,
  plain SGD hardly moves an LSTM in 100,000 steps (--optimizer sgd to see it).
- Each tweet's own last character: tweets of different lengths share a batch, zero-padded to
  the longest; the LSTM reads the padded batch and the prediction is taken from its output at
  each tweet's last real character (position length - 1). The LSTM reads left to right, so the
  padding after that character cannot have changed that state: padding never changes a
  prediction (a test checks this), and the state is the one packed sequences give (a test checks
  that against forward_packed). Packing is not used to train: packed sequences have open
  upstream bugs on Apple's MPS, and the padded batch is faster (benchmarks/lstm_speed.py).
- Minibatches from length buckets (--bucket, bucketed_order): each pass is shuffled, cut into
  buckets of 50 minibatches and each bucket sorted by length, so the 32 tweets of a minibatch
  have similar lengths and the padded batch is little wider than its tweets. Every tweet still
  comes once per pass in a random minibatch; --bucket 1 draws plain random minibatches.
- The loss is the assignment's plain NLL, whatever the classes' shares; --class-weighted
  weighs each tweet by N / (2 N_class) of the training set, so both classes count alike.
- Training accuracy is measured on a fixed random sample of --train-sample training tweets
  (default 2000), so an evaluation costs little next to 1000 iterations; test accuracy on the
  whole test file. The final block measures the whole training set too.
- Characters outside ASCII (emoji, accents, undecodable bytes) all become code 26, ASCII's SUB
  ("substitute"), so the one-hot size stays 128; tweets longer than --max-len are cut.

Reading real tweet files (read_tweet_csv): every line is read on its own, so an unbalanced quote
inside a tweet can never swallow the lines after it; every line becomes one tweet or a counted,
reported problem. Layouts recognised, and said when read:
  text and label with a header (either order: the names tell which is which); two columns without
  a header (the label column is the one holding labels); Sentiment140's six columns
  target,id,date,flag,user,text (labels 0/4; its test file's neutral 2s are reported and
  skipped); ItemID,Sentiment,SentimentSource,SentimentText; SemEval-2017 task 4A's tab-separated
  id<TAB>label<TAB>text (neutral rows skipped and counted, literal \\uXXXX escapes decoded, a
  stray trailing tab counted). Labels 0/1, 0/4 or negative/positive. UTF-8 with or without a
  byte-order mark, LF or CRLF line ends. --train-csv and --test-csv take one file or several.
  --text-column / --label-column override the detection (a header name or a 0-based position).

No tweets ship with this repository: get Sentiment140 (Go, Bhayani & Huang, 2009;
http://help.sentiment140.com/for-students), or use the course's tweets_train.csv / tweets_test.csv.

Run:     python lstm_tweets.py --data-dir DIR      (reads DIR/tweets_train.csv, DIR/tweets_test.csv)
         python lstm_tweets.py --train-csv ../shared/data/tweets/semeval2017/train/*.tsv \
             --test-csv ../shared/data/tweets/semeval2017/SemEval2017-task4-test.subtask-A.english.txt
         python lstm_tweets.py --train-csv a.csv --test-csv b.csv --iterations 100000 --eval-every 1000
Reload:  python lstm_tweets.py --train-csv a.csv --test-csv b.csv --load figures/lstm_tweets.pt
Writes:  figures/lstm_tweets_curves.png, figures/lstm_tweets_metrics.json, figures/lstm_tweets.pt
         (weights, for --load) and figures/lstm_tweets.ckpt (the full checkpoint, for --resume)
"""
import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence  # forward_packed only: the reference

import common

KIND = "lstm_tweets"  # written into the checkpoint; --load refuses weights of any other kind
VOCAB = 128           # ASCII: the one-hot size
# --load takes these flags from the run that wrote the file: its model and its data selection
RUN_ARGS = ("hidden", "seed", "limit", "max_len", "train_sample", "text_column", "label_column")


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=None, batch_size=32, lr=1e-4, epochs_flag=False,
                           data_help="folder holding tweets_train.csv and tweets_test.csv")
    parser.add_argument("--hidden", type=common.positive_int, default=128, help="LSTM hidden size")
    parser.add_argument("--iterations", type=common.positive_int, default=100_000,
                        help="minibatches to train on (the LSTM counts these, not epochs)")
    parser.add_argument("--eval-every", type=common.positive_int, default=1000,
                        help="measure train and test accuracy every N iterations (and at the last)")
    parser.add_argument("--train-csv", nargs="+", metavar="FILE",
                        help="training tweet files, read one by one and joined (default: "
                             "tweets_train.csv in --data-dir)")
    parser.add_argument("--test-csv", nargs="+", metavar="FILE",
                        help="test tweet files (default: tweets_test.csv in --data-dir)")
    parser.add_argument("--text-column", help="the tweet's column: a header name or a 0-based "
                                              "position (default: detected)")
    parser.add_argument("--label-column", help="the label's column: a header name or a 0-based "
                                               "position (default: detected)")
    parser.add_argument("--max-len", type=common.positive_int, default=280,
                        help="cut tweets after this many characters (and say how many were cut)")
    parser.add_argument("--train-sample", type=common.positive_int, default=2000,
                        help="training accuracy is measured on this many training tweets, drawn "
                             "once with --seed")
    parser.add_argument("--bucket", type=common.positive_int, default=50, metavar="BATCHES",
                        help="draw minibatches from length buckets: each shuffled pass is cut "
                             "into buckets of this many minibatches and each bucket sorted by "
                             "length, so a minibatch holds tweets of similar length and little "
                             "padding is read (the prediction is the same, see CharLSTM.forward); "
                             "1 draws plain random minibatches")
    parser.add_argument("--class-weighted", action="store_true",
                        help="weight each tweet's loss by N / (2 N_class) of the training set, so "
                             "both classes count alike (default off: the assignment's plain NLL)")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                        help="Adam, or plain SGD (the assignment allows either)")
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    data_dir = Path(args.data_dir)
    args.train_csv = args.train_csv or [str(data_dir / "tweets_train.csv")]
    args.test_csv = args.test_csv or [str(data_dir / "tweets_test.csv")]
    return args


# ----------------------------------------------------------------------------------------------
# MODEL
# ----------------------------------------------------------------------------------------------
class CharLSTM(nn.Module):
    """one-hot(128) per character → LSTM(128 hidden) → state after the last real character →
    Linear(hidden, 2) → log-softmax."""

    def __init__(self, hidden=128):
        super().__init__()
        self.lstm = nn.LSTM(VOCAB, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 2)

    def forward(self, codes, lengths):
        """codes: (B, T) character codes, zero-padded; lengths: (B,) on the same device → (B, 2)
        log-probs. The state read is the output at position length - 1, before any padding."""
        x = F.one_hot(codes.long(), VOCAB).float()                          # (B, T, 128)
        output, _ = self.lstm(x)                       # (B, T, hidden): the state after each step
        last = output[torch.arange(len(codes), device=codes.device), lengths - 1]  # (B, hidden)
        return F.log_softmax(self.out(last), dim=1)                         # (B, 2)

    def forward_packed(self, codes, lengths):
        """The same log-probs through packed sequences, which stop the LSTM at each tweet's own
        last character: the reference forward is tested against (and benchmarks/lstm_speed.py
        times). pack_padded_sequence wants the lengths on the CPU."""
        x = F.one_hot(codes.long(), VOCAB).float()                          # (B, T, 128)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)      # h_n: (1, B, hidden), each tweet's own last step
        return F.log_softmax(self.out(h_n[0]), dim=1)                       # (B, 2)


# ----------------------------------------------------------------------------------------------
# LOSS
# ----------------------------------------------------------------------------------------------
def nll_loss(log_probs, labels, class_weights=None):
    """The assignment's softmax + negative log-likelihood: L = -(1/B) Σ_b log p(y_b | tweet_b),
    with log p the log-softmax of the two outputs. Averaged over the batch.

    With class_weights w (--class-weighted), each tweet's term is weighted by its class's w and
    the sum divided by the weights' sum: L = -Σ_b w[y_b] log p(y_b | tweet_b) / Σ_b w[y_b]."""
    return F.nll_loss(log_probs, labels, weight=class_weights, reduction="mean")


def inverse_frequency(labels):
    """w_c = N / (2 N_c): each class weighs as much in the loss as the other, however rare."""
    counts = torch.bincount(labels, minlength=2).float()
    return len(labels) / (2 * counts)


# ----------------------------------------------------------------------------------------------
# TRAINING
# ----------------------------------------------------------------------------------------------
def batch(split, idx):
    """The tweets at `idx` (a CPU index tensor), cut to the longest of them, with their lengths
    and labels, all on the split's device. The width comes from the lengths' CPU copy, so the
    device is never asked for a number; indices and lengths go to it with a copy that does not
    wait (common.to_device)."""
    codes, lengths, labels = split
    batch_lengths = lengths[idx]                                            # on the CPU
    width = int(batch_lengths.max())
    idx = common.to_device(idx, codes.device)
    return codes[idx, :width], common.to_device(batch_lengths, codes.device), labels[idx]


def bucketed_order(lengths, batch_size, bucket, generator):
    """One pass over the training tweets, as fit() reads it: consecutive runs of batch_size
    indices are the minibatches. The tweets are shuffled, cut into buckets of `bucket`
    minibatches, each bucket sorted by length and cut into minibatches, and the minibatches
    shuffled. Every tweet still comes once per pass, in a random minibatch of tweets of similar
    length: the minibatch is cut to its longest tweet (batch()), so far less padding is read.
    bucket = 1 is a plain shuffle. The last len % batch_size tweets, which fit() drops, are
    chosen at random before sorting, so the drop does not favour short or long tweets."""
    order = torch.randperm(len(lengths), generator=generator)
    if bucket == 1:
        return order
    n_batches = len(order) // batch_size
    kept, rest = order[:n_batches * batch_size], order[n_batches * batch_size:]
    by_length = torch.cat([chunk[lengths[chunk].argsort(stable=True)]
                           for chunk in kept.split(bucket * batch_size)])
    minibatches = by_length.view(n_batches, batch_size)
    shuffled = minibatches[torch.randperm(n_batches, generator=generator)].flatten()
    return torch.cat([shuffled, rest])


def balanced_accuracy(hits, totals):
    """The mean of the per-class recalls (hits[c] / totals[c]) over the classes present: 0.5 for
    any constant guess on two classes, however imbalanced the split."""
    present = totals > 0
    return (hits[present] / totals[present]).mean().item()


@torch.no_grad()
def evaluate(model, split, batch_size=500):
    """Mean negative log-likelihood, accuracy, balanced accuracy and the recall of each class
    (the share of its tweets predicted as it) over every tweet of `split`."""
    codes, lengths, labels = split
    model.eval()
    loss_sum = torch.zeros((), device=codes.device)
    hits, totals = torch.zeros(2, device=codes.device), torch.zeros(2, device=codes.device)
    for idx in lengths.argsort().split(batch_size):  # by length: little padding is read
        x, batch_lengths, y = batch(split, idx)
        log_probs = model(x, batch_lengths)
        loss_sum += F.nll_loss(log_probs, y, reduction="sum")
        totals += torch.bincount(y, minlength=2)
        hits += torch.bincount(y[log_probs.argmax(1) == y], minlength=2)
    model.train()
    hits, totals = hits.cpu(), totals.cpu()
    recall = (hits / totals.clamp(min=1)).tolist()
    return {"loss": loss_sum.item() / len(labels), "acc": (hits.sum() / len(labels)).item(),
            "balanced_acc": balanced_accuracy(hits, totals),
            "negative_recall": recall[0], "positive_recall": recall[1]}


def sample(split, n, seed):
    """A fixed random subset of n tweets of `split` (all of it when n is larger), as a split."""
    chosen = torch.randperm(len(split[2]), generator=torch.Generator().manual_seed(seed))[:n]
    codes, lengths, labels = split
    on_device = chosen.to(codes.device)  # once, at setup
    return codes[on_device], lengths[chosen], labels[on_device]


def make_optimizer(model, args):
    """--optimizer at --lr: Adam (default betas and eps) or plain SGD (no momentum)."""
    make = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[args.optimizer]
    return make(model.parameters(), lr=args.lr)


def train_step(model, optimizer, codes, lengths, labels, class_weights, args, device):
    """One minibatch (as batch() cuts it): nll_loss of the model's log-probs, weighted by
    class_weights (None: the plain mean), its gradient, the optimizer's step. Returns the loss,
    left on the device."""
    with common.autocast(args, device):
        loss = nll_loss(model(codes, lengths), labels, class_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def fit(model, train, train_sample, test, args, device, generator, stem):
    """args.iterations minibatches, drawn in shuffled passes over the training tweets; every
    --eval-every iterations the accuracies and losses are recorded and a checkpoint is written,
    with the current pass's order and position, so --resume continues the same stream; stops
    early when the test loss has not improved for --patience evaluations. Returns the Run."""
    optimizer = make_optimizer(model, args)
    run = common.Run(args, stem, KIND, {"model": model}, {"optimizer": optimizer}, generator,
                     unit="iteration", total=args.iterations)
    n = len(train[2])
    class_weights = inverse_frequency(train[2]) if args.class_weighted else None
    if class_weights is not None:
        print(f"--class-weighted: negative x{class_weights[0]:.3f}, positive x{class_weights[1]:.3f}")
    if args.resume:  # the pass under way when the checkpoint was written, from where it stopped
        order, position = run.extra["order"].long(), run.extra["position"]
    else:
        order, position = bucketed_order(train[1], args.batch_size, args.bucket, generator), 0
    model.train()
    losses = torch.empty(args.eval_every, device=device)  # minibatch losses since the last record
    start = run.done
    steps = range(run.done + 1, args.iterations + 1)
    for iteration in common.progress(steps, len(steps), "iterations"):
        if position + args.batch_size > n:  # a new pass; the tail of the last one is dropped
            order, position = bucketed_order(train[1], args.batch_size, args.bucket, generator), 0
        codes, lengths, labels = batch(train, order[position:position + args.batch_size])
        position += args.batch_size
        losses[iteration - start - 1] = train_step(model, optimizer, codes, lengths, labels,
                                                   class_weights, args, device)
        if iteration % args.eval_every == 0 or iteration == args.iterations:
            since = losses[:iteration - start]
            record = {"batch_loss": since.mean().item()}
            for name, split in (("train", train_sample), ("test", test)):
                record.update({f"{name}_{k}": v for k, v in evaluate(model, split).items()})
            start = iteration
            common.check_finite(iteration, run.weights_path, unit="iteration", nll=since)
            run.log(iteration, record)
            run.save(iteration, order=order.int(), position=position)  # where --resume goes on
            if common.stop_early(run.history, "test_loss", args.patience):
                break
    return run


# The flags' short tags in a run's name; the data files and their columns stay out of it.
NAME_TAGS = {"hidden": "h", "iterations": "it", "eval_every": "eval", "max_len": "maxlen",
             "train_sample": "sample", "bucket": "bucket", "class_weighted": "weighted",
             "optimizer": ""}
DATA_FLAGS = ("train_csv", "test_csv", "text_column", "label_column")


def run_name(args):
    """What this run's files are called: with --load, the loaded file's own name; otherwise
    "lstm_tweets" plus every knob that differs from the defaults (lstm_tweets_h64,
    lstm_tweets_lr0.001_it30000_weighted): a quick edit writes beside the committed run."""
    if args.load:
        return Path(args.load).stem
    return common.run_name(KIND, args, vars(parse_args([])), NAME_TAGS, skip=DATA_FLAGS)


# ----------------------------------------------------------------------------------------------
# FIGURES
# ----------------------------------------------------------------------------------------------
def plot_history(history, args, path):
    its = [r["iteration"] for r in history]
    files = Path(args.train_csv[0]).name + (f" and {len(args.train_csv) - 1} more" if len(args.train_csv) > 1 else "")
    common.plot_panels(path, {
        "accuracy": {"test (whole test file)": (its, [r["test_acc"] for r in history]),
                     f"training ({args.train_sample} fixed tweets)":
                         (its, [r["train_acc"] for r in history])},
        "balanced accuracy (mean of the two class recalls)": {
            "test": (its, [r["test_balanced_acc"] for r in history]),
            f"training ({args.train_sample} fixed tweets)": (its, [r["train_balanced_acc"] for r in history])},
        "negative log-likelihood": {
            "test": (its, [r["test_loss"] for r in history]),
            f"training ({args.train_sample} fixed tweets)": (its, [r["train_loss"] for r in history]),
            f"minibatches (mean over {args.eval_every})": (its, [r["batch_loss"] for r in history])},
    }, xlabel="iteration", title=f"Character LSTM on tweets ({files})",
        markers=len(history) <= 30)


# ----------------------------------------------------------------------------------------------
# READING TWEET FILES: every layout, line by line, into padded character codes
# ----------------------------------------------------------------------------------------------
PLACEHOLDER = 26      # ASCII SUB, "substitute": every character outside ASCII becomes this code
TEXT_NAMES = ("text", "tweet", "sentimenttext", "content", "message")  # header names, by priority
LABEL_NAMES = ("label", "sentiment", "target", "polarity", "class")
LABEL_SCHEMES = {"0/1": {"0": 0, "1": 1}, "0/4": {"0": 0, "4": 1},
                 "negative/positive": {"negative": 0, "positive": 1}}
SHOWN_LINES = 5       # how many line numbers a report names for each kind of problem


@dataclass
class TweetFile:
    """What read_tweet_csv found: the tweets, and an account of every line that is not one."""
    texts: list
    labels: list
    layout: str                                   # which layout was detected, in words
    problems: dict = field(default_factory=dict)  # reason -> line numbers of skipped lines
    split_at_commas: list = field(default_factory=list)  # lines csv could not split (parse_line)
    lines: int = 0                                # lines in the file
    notes: dict = field(default_factory=dict)     # quirk -> line numbers of tweets read despite it


def normalise(value):
    return value.strip().strip('"').strip().lower()


def parse_line(line, n_columns, text_column):
    """The fields of one line, and whether they had to be cut at the outer commas.

    csv reads the line on its own, so a quote can never reach into the next line. When that gives
    the wrong number of fields (a quote left open inside a tweet, or a comma in an unquoted
    tweet), every column but the text is short and comma-free: the commas before and after the
    text column separate them, and the text is everything in between. Returns None when the
    line has too few commas to hold all columns."""
    fields = next(csv.reader([line]), [])
    if len(fields) == n_columns:
        return fields, False
    parts = line.split(",")
    if len(parts) < n_columns:
        return None
    after = n_columns - text_column - 1
    end = len(parts) - after
    text = ",".join(parts[text_column:end])
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('""', '"')  # a properly quoted field; a lone quote is the tweet's
    return [p.strip('"') for p in parts[:text_column]] + [text] + [p.strip('"') for p in parts[end:]], True


def column_index(choice, header, n_columns, flag):
    """--text-column / --label-column as a position: a 0-based number or a header name."""
    if choice.isdigit():
        if int(choice) >= n_columns:
            common.fail(f"{flag} {choice}: the file has {n_columns} columns (0 to {n_columns - 1})")
        return int(choice)
    names = [normalise(name) for name in header or []]
    if normalise(choice) not in names:
        common.fail(f"{flag} {choice!r}: no such column in the header "
                    f"({', '.join(header) if header else 'the file has no header'})")
    return names.index(normalise(choice))


def label_scheme(values):
    """Which label scheme these (normalised) label values follow: 0/1, 0/4 or negative/positive;
    decided by the majority, so a few odd labels are reported instead of changing the scheme."""
    counts = Counter(values)
    words = counts["negative"] + counts["positive"]
    digits = counts["0"] + counts["1"] + counts["4"]
    if words > digits:
        return "negative/positive"
    return "0/4" if counts["4"] > counts["1"] else "0/1"


def detect_layout(rows, text_column=None, label_column=None, path=""):
    """(header or None, n_columns, text column, label column, description) from the first rows
    (each a list of fields as csv parsed its line)."""
    n_columns = Counter(len(r) for r in rows).most_common(1)[0][0]
    names = [normalise(v) for v in rows[0]]
    named = [normalise(c) for c in (text_column, label_column) if c and not c.isdigit()]
    known = any(n in TEXT_NAMES + LABEL_NAMES for n in names)
    header = rows[0] if known or (named and all(n in names for n in named)) else None
    data = rows[1:] if header else rows
    if header:
        n_columns = len(header)
        guess_text = next((names.index(n) for n in TEXT_NAMES if n in names), None)
        guess_label = next((names.index(n) for n in LABEL_NAMES if n in names), None)
        shape = f"header {','.join(header)}"
    elif n_columns == 6:
        guess_text, guess_label, shape = 5, 0, "Sentiment140 layout (target,id,date,flag,user,text; no header)"
    elif n_columns == 4:
        guess_text, guess_label, shape = 3, 1, "ItemID,Sentiment,SentimentSource,SentimentText (no header)"
    else:
        valid = set().union(*LABEL_SCHEMES.values())
        looks_like_label = [sum(len(r) == n_columns and normalise(r[c]) in valid for r in data)
                            for c in range(n_columns)]
        guess_label = max(reversed(range(n_columns)), key=lambda c: looks_like_label[c])
        lengths = [sum(len(r[c]) for r in data if len(r) == n_columns) for c in range(n_columns)]
        guess_text = max((c for c in range(n_columns) if c != guess_label), key=lengths.__getitem__,
                         default=None)
        shape = f"{n_columns} columns, no header"
    text = guess_text if text_column is None else column_index(text_column, header, n_columns, "--text-column")
    label = guess_label if label_column is None else column_index(label_column, header, n_columns, "--label-column")
    if text is None or label is None or text == label:
        common.fail(f"{path}: cannot tell which column holds the tweet and which the label "
                    f"({shape}); name them with --text-column and --label-column")
    return header, n_columns, text, label, f"{shape}: text in column {text}, label in column {label}"


def read_tweet_csv(path, text_column=None, label_column=None):
    """Read one tweet file, whatever its layout (module docstring), line by line: every line
    becomes one tweet or one counted problem (blank line, missing label, label outside the
    scheme, empty tweet). A file with no tweet at all is an error."""
    path = Path(path)
    if not path.exists():
        common.fail(f"no tweet file at {path}: get Sentiment140 (http://help.sentiment140.com/"
                    "for-students) or the course's tweets_train.csv / tweets_test.csv and pass "
                    "--train-csv and --test-csv (or --data-dir)")
    if path.is_dir():
        common.fail(f"{path} is a folder, not a tweet file (--train-csv and --test-csv name files)")
    data = path.read_bytes()
    if b"\x00" in data[:4096]:  # text never holds NUL; binary files almost always do
        common.fail(f"{path} is a binary file, not a text file of tweets")
    text = data.decode("utf-8-sig", errors="replace")  # drops a byte-order mark
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # LF or CRLF
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        common.fail(f"{path} holds no tweets (it is empty)")
    if looks_like_semeval(numbered[:1000]):
        return read_semeval_tsv(path, numbered, lines)
    first_rows = [next(csv.reader([line]), []) for _, line in numbered[:1000]]
    header, n_columns, text_at, label_at, layout = detect_layout(first_rows, text_column,
                                                                 label_column, path)
    if header:
        numbered = numbered[1:]
    problems = {}
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        problems["blank line"] = blank
    parsed, split_at_commas = [], []
    for n, line in numbered:
        result = parse_line(line, n_columns, text_at)
        if result is None:
            problems.setdefault("missing label (too few columns)", []).append(n)
            continue
        fields, was_split = result
        if was_split:
            split_at_commas.append(n)
        parsed.append((n, fields[text_at], normalise(fields[label_at])))
    scheme = label_scheme([label for _, _, label in parsed])
    mapping = LABEL_SCHEMES[scheme]
    texts, labels, bad_lines, bad_values = [], [], [], Counter()
    for n, tweet, label in parsed:
        if label not in mapping:
            bad_lines.append(n)
            bad_values[label] += 1
        elif not tweet:
            problems.setdefault("empty tweet", []).append(n)
        else:
            texts.append(tweet)
            labels.append(mapping[label])
    if bad_lines:
        seen = ", ".join(f"{value!r} x{count}" for value, count in bad_values.most_common(3))
        problems[f"label not {scheme} ({seen})"] = bad_lines
    if not texts:
        common.fail(f"{path}: no line holds a tweet with a {scheme} label ({layout})")
    return TweetFile(texts, labels, f"{layout}; labels {scheme}", problems, split_at_commas,
                     len(lines))


SEMEVAL_LABELS = {"negative": 0, "positive": 1}  # "neutral" rows are skipped and counted
ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")  # a literal \u2019 written into the text


def looks_like_semeval(numbered):
    """SemEval-2017 task 4A's layout: id<TAB>label<TAB>text, no header, labels
    positive/negative/neutral (true of most of the first lines)."""
    rows = [line.split("\t") for _, line in numbered]
    return sum(len(r) >= 3 and normalise(r[1]) in ("positive", "negative", "neutral") for r in rows) > len(rows) / 2


def read_semeval_tsv(path, numbered, lines):
    """Tab-separated tweets as SemEval publishes them, quirks included: no CSV quoting (a double
    quote opening a text is the tweet's own); a stray trailing tab is an empty extra field (the
    tweet is read, the line counted); literal \\uXXXX escapes become the character they name
    (then the usual non-ASCII rule); neutral rows are skipped and counted."""
    texts, labels, problems, notes = [], [], {}, {}
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        problems["blank line"] = blank
    for n, line in numbered:
        fields = line.split("\t")
        if len(fields) < 3:
            problems.setdefault("not id<TAB>label<TAB>text", []).append(n)
            continue
        label, extra = normalise(fields[1]), fields[3:]
        if extra and not any(extra):
            notes.setdefault("a stray trailing tab (an empty extra field)", []).append(n)
        text = "\t".join([fields[2]] + [f for f in extra if f])  # a tab inside a tweet stays
        if label == "neutral":
            problems.setdefault("neutral (a positive/negative classifier skips them)", []).append(n)
            continue
        if label not in SEMEVAL_LABELS:
            problems.setdefault("label not positive/negative/neutral", []).append(n)
            continue
        if ESCAPE.search(text):
            notes.setdefault("literal \\uXXXX escapes, read as the characters they name", []).append(n)
            text = ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
        if not text.strip():
            problems.setdefault("empty tweet", []).append(n)
            continue
        texts.append(text)
        labels.append(SEMEVAL_LABELS[label])
    if not texts:
        common.fail(f"{path}: no line holds a positive or negative tweet (SemEval layout "
                    "id<TAB>label<TAB>text)")
    return TweetFile(texts, labels, "SemEval layout (id<TAB>label<TAB>text, no header); labels "
                     "negative/positive, neutral skipped", problems, [], len(lines), notes)


def count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def line_numbers(numbers):
    more = " ..." if len(numbers) > SHOWN_LINES else ""
    return f"line{'s' if len(numbers) > 1 else ''} " + ", ".join(map(str, numbers[:SHOWN_LINES])) + more


def report(path, tweets):
    """What was read and what was not, in a few lines for the log."""
    lines = [f"{path}: {count(len(tweets.texts), 'tweet')} from {count(tweets.lines, 'line')}; "
             f"{tweets.layout}"]
    for reason, numbers in tweets.problems.items():
        lines.append(f"  skipped {count(len(numbers), 'line')}: {reason} ({line_numbers(numbers)})")
    if tweets.split_at_commas:
        lines.append(f"  {count(len(tweets.split_at_commas), 'line')} with an unbalanced quote or "
                     f"an unquoted comma, read by cutting at the outer commas "
                     f"({line_numbers(tweets.split_at_commas)})")
    for quirk, numbers in tweets.notes.items():
        lines.append(f"  {count(len(numbers), 'line')} with {quirk} ({line_numbers(numbers)})")
    return "\n".join(lines)


NON_ASCII = re.compile(r"[^\x00-\x7f]")


def encode(texts, max_len):
    """Tweets → (codes (N, T) uint8 padded with 0, lengths (N,) int64, counts). Characters
    outside ASCII become PLACEHOLDER; tweets longer than max_len are cut. Counts: how many tweets
    had a character outside ASCII, how many were cut."""
    lengths = [min(len(t), max_len) for t in texts]
    width = max(lengths)
    buffer = bytearray(len(texts) * width)  # one row of `width` bytes per tweet, zero = padding
    non_ascii = truncated = 0
    for i, tweet in enumerate(texts):
        truncated += len(tweet) > max_len
        non_ascii += NON_ASCII.search(tweet) is not None
        row = NON_ASCII.sub(chr(PLACEHOLDER), tweet[:max_len]).encode("ascii")
        buffer[i * width:i * width + len(row)] = row
    codes = torch.frombuffer(buffer, dtype=torch.uint8).view(len(texts), width)
    return codes, torch.tensor(lengths), {"non_ascii_tweets": non_ascii,
                                          "truncated_tweets": truncated}


def load_split(paths, args, device):
    """Files → (codes on device, lengths on the CPU, labels on device), each reported as it is
    read, joined in the order given. The lengths stay on the CPU: batch() cuts each minibatch to
    its longest tweet from them."""
    texts, labels = [], []
    for path in paths:
        tweets = read_tweet_csv(path, args.text_column, args.label_column)
        print(report(path, tweets))
        texts.extend(tweets.texts)
        labels.extend(tweets.labels)
    if len(paths) > 1:
        print(f"  {count(len(texts), 'tweet')} from {len(paths)} files")
    texts, labels = texts[:args.limit], labels[:args.limit]
    codes, lengths, counts = encode(texts, args.max_len)
    if counts["non_ascii_tweets"]:
        print(f"  {count(counts['non_ascii_tweets'], 'tweet')} with characters outside ASCII, "
              f"each such character read as code {PLACEHOLDER} (SUB)")
    if counts["truncated_tweets"]:
        print(f"  {count(counts['truncated_tweets'], 'tweet')} longer than {args.max_len} "
              f"characters cut to {args.max_len} (--max-len)")
    return (codes.to(device), lengths, torch.tensor(labels, device=device)), counts


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    generator = common.seed_everything(args.seed)
    out, name = common.out_dir(args), run_name(args)
    checkpoint = common.load_checkpoint(args.load, KIND) if args.load else None
    if checkpoint:  # read first: a wrong file fails at once, and its run's flags decide the model
        common.use_run_args(args, checkpoint, RUN_ARGS, args.load)
    train, train_counts = load_split(args.train_csv, args, device)
    test, test_counts = load_split(args.test_csv, args, device)
    train_sample = sample(train, args.train_sample, args.seed)
    model = CharLSTM(args.hidden).to(device)
    if args.load:
        run = common.load_run(args.load, KIND, {"model": model}, unit="iteration", checkpoint=checkpoint)
    else:
        run = fit(model, train, train_sample, test, args, device, generator, out / name)
    final = {"iterations": run.history[-1]["iteration"], "train_tweets": len(train[2]),
             "test_tweets": len(test[2]), "train_sample": len(train_sample[2])}
    for prefix, split in (("train", train_sample), ("train_all", train), ("test", test)):
        final.update({f"{prefix}_{k}": v for k, v in evaluate(model, split).items()})
    majority = int(train[2].float().mean().item() >= 0.5)  # the training set's majority class
    final["test_majority_class_acc"] = (test[2] == majority).float().mean().item()
    plot_history(run.history, args, out / f"{name}_curves.png")
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history, final,
                        weights=str(args.load or out / f"{name}.pt"), trained_with=run.trained_with,
                        reading={"train": train_counts, "test": test_counts})
    print(f"final: train acc {final['train_acc']:.4f} ({len(train_sample[2])} tweets), "
          f"{final['train_all_acc']:.4f} (all {len(train[2])}) | test acc "
          f"{final['test_acc']:.4f}, balanced {final['test_balanced_acc']:.4f} (always the training "
          f"majority: {final['test_majority_class_acc']:.4f}) | test loss {final['test_loss']:.4f} | "
          f"{run.seconds:.0f} s of training")


if __name__ == "__main__":
    common.run_main(main)