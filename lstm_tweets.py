"""Assignment D, part 3: a character-level LSTM that reads a tweet and says positive or negative.

Each tweet is a sequence of ASCII codes, one-hot (size 128) at every step; one LSTM layer of 128
hidden units reads it, a linear layer maps the hidden state after its last character to 2 outputs,
and the loss is the negative log-likelihood of their log-softmax. Batch 32, learning rate 1e-4,
100,000 iterations; training and test accuracy every 1000. Choices the assignment leaves open:
- Adam (Kingma & Ba, 2015), a "related optimizer": at lr 1e-4 plain SGD hardly moves an LSTM in
  100,000 steps (--optimizer sgd to see it).
- Tweets of different lengths share a zero-padded batch, and the prediction is read at each
  tweet's own last character (position length - 1). The LSTM reads left to right, so the padding
  after it cannot change that state: packed sequences give the same (forward_packed, tested), but
  are not used to train (open bugs on Apple's MPS; the padded batch is faster).
- Minibatches from length buckets (--bucket, bucketed_order): little padding is read.
- The assignment's plain NLL; --class-weighted weighs each tweet by N / (2 N_class).
- Balanced accuracy beside accuracy (the classes are imbalanced); training accuracy on a fixed
  sample of --train-sample tweets, test accuracy on the whole test file.
- Characters outside ASCII become code 26 (ASCII's SUB); tweets longer than --max-len are cut.
Tweet files of every layout (CSV, Sentiment140, SemEval's TSV) are read by common.read_tweet_files.

Run: python lstm_tweets.py --train-csv ../shared/data/tweets/semeval2017/train/*.tsv --test-csv FILE
"""
import re
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
    parser.add_argument("--train-csv", nargs="+", metavar="FILE", help="training tweet files, "
                        "joined (default: tweets_train.csv in --data-dir)")
    parser.add_argument("--test-csv", nargs="+", metavar="FILE",
                        help="test tweet files (default: tweets_test.csv in --data-dir)")
    parser.add_argument("--text-column", help="the tweet's column: a header name or a 0-based "
                                              "position (default: detected)")
    parser.add_argument("--label-column", help="the label's column: a header name or a 0-based "
                                               "position (default: detected)")
    parser.add_argument("--max-len", type=common.positive_int, default=280,
                        help="cut tweets after this many characters (and say how many were cut)")
    parser.add_argument("--train-sample", type=common.positive_int, default=2000,
                        help="training accuracy is measured on this many tweets, drawn once")
    parser.add_argument("--bucket", type=common.positive_int, default=50, metavar="BATCHES",
                        help="draw minibatches of similar lengths from buckets of this many "
                             "minibatches (bucketed_order); 1 draws plain random minibatches")
    parser.add_argument("--class-weighted", action="store_true", help="weight each tweet's loss "
                        "by N / (2 N_class), so both classes count alike (off: the plain NLL)")
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
    """The tweets at `idx` (a CPU index tensor), cut to the longest of them (read from the
    lengths' CPU copy), with their lengths and labels, all on the split's device."""
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
    kept, rest = order[:n_batches * batch_size], order[n_batches * batch_size:]  # rest: random
    # each bucket (`bucket` minibatches' worth of tweets) sorted by length within itself
    by_length = torch.cat([chunk[lengths[chunk].argsort(stable=True)]
                           for chunk in kept.split(bucket * batch_size)])
    minibatches = by_length.view(n_batches, batch_size)  # one row: tweets of similar length
    shuffled = minibatches[torch.randperm(n_batches, generator=generator)].flatten()  # rows mixed
    return torch.cat([shuffled, rest])


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
        print(f"--class-weighted: negative x{class_weights[0]:.3f}, "
              f"positive x{class_weights[1]:.3f}")
    if args.resume:  # the pass under way when the checkpoint was written, from where it stopped
        order, position = run.extra["order"].long(), run.extra["position"]
    else:
        order, position = bucketed_order(train[1], args.batch_size, args.bucket, generator), 0
    model.train()
    losses = torch.empty(args.eval_every, device=device)  # minibatch losses since the last record
    start = run.done  # the last recorded iteration; iteration i's loss: losses[i - start - 1]
    steps = range(run.done + 1, args.iterations + 1)
    for iteration in common.progress(steps, len(steps), "iterations"):
        if position + args.batch_size > n:  # a new pass; the tail of the last one is dropped
            order, position = bucketed_order(train[1], args.batch_size, args.bucket, generator), 0
        codes, lengths, labels = batch(train, order[position:position + args.batch_size])
        position += args.batch_size
        losses[iteration - start - 1] = train_step(model, optimizer, codes, lengths, labels,
                                                   class_weights, args, device)
        if iteration % args.eval_every == 0 or iteration == args.iterations:
            since = losses[:iteration - start]  # the iterations since the last record
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


# ----------------------------------------------------------------------------------------------
# EVALUATION: the assignment's accuracies, and the balanced accuracy that imbalanced classes need
# ----------------------------------------------------------------------------------------------
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
        totals += torch.bincount(y, minlength=2)                        # tweets of each class
        hits += torch.bincount(y[log_probs.argmax(1) == y], minlength=2)  # ... predicted right
    model.train()
    hits, totals = hits.cpu(), totals.cpu()
    recall = (hits / totals.clamp(min=1)).tolist()  # a class absent from the split: recall 0
    return {"loss": loss_sum.item() / len(labels), "acc": (hits.sum() / len(labels)).item(),
            "balanced_acc": balanced_accuracy(hits, totals),
            "negative_recall": recall[0], "positive_recall": recall[1]}


def final_metrics(model, train, train_sample, test, iterations):
    """The run's final block: evaluate on the training sample, the whole training set and the test
    set, and the test accuracy of always answering the training set's majority class (the
    baseline that imbalanced classes give for free, at balanced accuracy 0.5)."""
    final = {"iterations": iterations, "train_tweets": len(train[2]), "test_tweets": len(test[2]),
             "train_sample": len(train_sample[2])}
    for prefix, split in (("train", train_sample), ("train_all", train), ("test", test)):
        final.update({f"{prefix}_{k}": v for k, v in evaluate(model, split).items()})
    majority = int(train[2].float().mean().item() >= 0.5)  # 1: most training tweets are positive
    final["test_majority_class_acc"] = (test[2] == majority).float().mean().item()
    return final


def sample(split, n, seed):
    """A fixed random subset of n tweets of `split` (all of it when n is larger), as a split."""
    chosen = torch.randperm(len(split[2]), generator=torch.Generator().manual_seed(seed))[:n]
    codes, lengths, labels = split
    on_device = chosen.to(codes.device)  # once, at setup
    return codes[on_device], lengths[chosen], labels[on_device]


# ----------------------------------------------------------------------------------------------
# THE RUN'S NAME AND ITS FIGURE
# ----------------------------------------------------------------------------------------------
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


def plot_history(history, args, path):
    its = [r["iteration"] for r in history]
    series = lambda key: (its, [r[key] for r in history])
    sampled = f"training ({args.train_sample} fixed tweets)"
    more = len(args.train_csv) - 1
    files = Path(args.train_csv[0]).name + (f" and {more} more" if more else "")
    common.plot_panels(path, {
        "accuracy": {"test (whole test file)": series("test_acc"), sampled: series("train_acc")},
        "balanced accuracy (mean of the two class recalls)": {
            "test": series("test_balanced_acc"), sampled: series("train_balanced_acc")},
        "negative log-likelihood": {
            "test": series("test_loss"), sampled: series("train_loss"),
            f"minibatches (mean over {args.eval_every})": series("batch_loss")},
    }, xlabel="iteration", title=f"Character LSTM on tweets ({files})", markers=len(history) <= 30)


# ----------------------------------------------------------------------------------------------
# TWEETS AS ASCII CODES (the files and their layouts: common.read_tweet_files)
# ----------------------------------------------------------------------------------------------
PLACEHOLDER = 26      # ASCII SUB, "substitute": every character outside ASCII becomes this code
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
    """Files → (codes on device, lengths on the CPU, labels on device), and the encoding's counts.
    The lengths stay on the CPU: batch() cuts each minibatch to its longest tweet from them."""
    texts, labels = common.read_tweet_files(paths, args.text_column, args.label_column)
    texts, labels = texts[:args.limit], labels[:args.limit]
    codes, lengths, counts = encode(texts, args.max_len)
    if counts["non_ascii_tweets"]:
        print(f"  {common.plural(counts['non_ascii_tweets'], 'tweet')} with characters outside "
              f"ASCII, each such character read as code {PLACEHOLDER} (SUB)")
    if counts["truncated_tweets"]:
        print(f"  {common.plural(counts['truncated_tweets'], 'tweet')} longer than {args.max_len} "
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
        run = common.load_run(args.load, KIND, {"model": model}, unit="iteration",
                              checkpoint=checkpoint)
    else:
        run = fit(model, train, train_sample, test, args, device, generator, out / name)
    final = final_metrics(model, train, train_sample, test, run.history[-1]["iteration"])
    plot_history(run.history, args, out / f"{name}_curves.png")
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history, final,
                        weights=str(args.load or out / f"{name}.pt"), trained_with=run.trained_with,
                        reading={"train": train_counts, "test": test_counts})
    print(f"final: train acc {final['train_acc']:.4f} ({len(train_sample[2])} tweets), "
          f"{final['train_all_acc']:.4f} (all {len(train[2])}) | test acc {final['test_acc']:.4f}, "
          f"balanced {final['test_balanced_acc']:.4f} (always the training majority: "
          f"{final['test_majority_class_acc']:.4f}) | test loss {final['test_loss']:.4f} | "
          f"{run.seconds:.0f} s of training")


if __name__ == "__main__":
    common.run_main(main)