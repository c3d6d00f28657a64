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

The yardstick, in every run: a bag-of-words logistic regression (word unigrams and bigrams, L-BFGS)
on the same training and test tweets: how far a character LSTM is from the simplest word model.
Beyond the assignment, flags for what a character LSTM needs to reach that line (each off by
default, so the default command is the assignment's run): --readout max|mean (read every step's
state, not only the last), --dropout, --val-fraction (early stopping on held-out training tweets,
never the test file), --lr-schedule cosine, --pretrain-iterations (first a character language
model on the training files' text, neutral tweets included; Dai & Le 2015).

Page: docs/lstm_tweets.md (what it does, results, answers, every flag)
Run: python lstm_tweets.py --train-csv ../shared/data/tweets/semeval2017/train/*.tsv --test-csv FILE
"""
import copy
import math
import re
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence  # forward_packed only: the reference

import common

KIND = "lstm_tweets"  # written into the checkpoint; --load refuses weights of any other kind
VOCAB = 128           # ASCII: the one-hot size
# --load takes these flags from the run that wrote the file: its model and its data selection
RUN_ARGS = ("hidden", "readout", "seed", "limit", "max_len", "train_sample", "val_fraction",
            "eval_every", "text_column", "label_column")


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
    v = parser.add_argument_group("beyond the assignment (each off by default)")
    v.add_argument("--readout", choices=["last", "max", "mean"], default="last",
                   help="what the linear layer reads: the state after the last character (the "
                        "assignment), or each unit's max or mean over every character's state")
    v.add_argument("--dropout", type=common.fraction, default=0.0,
                   help="dropout on the read-out state, before the linear layer")
    v.add_argument("--val-fraction", type=common.fraction, default=0.0, metavar="F",
                   help="hold out this share of the training tweets (drawn once by --seed) as a "
                        "validation set: --patience watches its loss instead of the test file's, "
                        "and the run ends with the weights of its best evaluation")
    v.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="constant --lr, or a cosine decay from --lr to 0 over --iterations")
    v.add_argument("--pretrain-iterations", type=common.nonnegative_int, default=0, metavar="N",
                   help="first train the LSTM for N minibatches as a character language model "
                        "(predict each next character) on the training tweets' text, neutral "
                        "SemEval tweets included, at --lr; then the classifier from there")
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    if args.patience and not args.val_fraction:
        print("note: --patience without --val-fraction watches the test file's loss")
    data_dir = Path(args.data_dir)
    args.train_csv = args.train_csv or [str(data_dir / "tweets_train.csv")]
    args.test_csv = args.test_csv or [str(data_dir / "tweets_test.csv")]
    return args


# ----------------------------------------------------------------------------------------------
# MODEL
# ----------------------------------------------------------------------------------------------
class CharLSTM(nn.Module):
    """one-hot(128) per character → LSTM(128 hidden) → state after the last real character →
    Linear(hidden, 2) → log-softmax. readout "max"/"mean" reads every real character's state
    instead (read_out); dropout acts on what is read, before the linear layer."""

    def __init__(self, hidden=128, readout="last", dropout=0.0):
        super().__init__()
        self.lstm = nn.LSTM(VOCAB, hidden, batch_first=True)
        self.readout, self.dropout = readout, nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 2)

    def forward(self, codes, lengths):
        """codes: (B, T) character codes, zero-padded; lengths: (B,) on the same device → (B, 2)
        log-probs. Only the states before any padding are read."""
        x = F.one_hot(codes.long(), VOCAB).float()                          # (B, T, 128)
        output, _ = self.lstm(x)                       # (B, T, hidden): the state after each step
        state = read_out(output, lengths, self.readout)                     # (B, hidden)
        return F.log_softmax(self.out(self.dropout(state)), dim=1)          # (B, 2)

    def forward_packed(self, codes, lengths):
        """The same log-probs through packed sequences, which stop the LSTM at each tweet's own
        last character: the reference forward is tested against (and benchmarks/lstm_speed.py
        times). pack_padded_sequence wants the lengths on the CPU."""
        x = F.one_hot(codes.long(), VOCAB).float()                          # (B, T, 128)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)      # h_n: (1, B, hidden), each tweet's own last step
        return F.log_softmax(self.out(h_n[0]), dim=1)                       # (B, 2)


def read_out(output, lengths, how):
    """What the linear layer reads of the LSTM's states output (B, T, hidden), whose positions
    t < length are real characters: "last", the state at t = length - 1 (the assignment: the
    whole tweet must be squeezed into one state); "max", each unit's largest value over the real
    steps (a unit that fires on "love" anywhere in the tweet keeps that); "mean", their average.
    Max and mean send gradient to every real step directly, not only through the last."""
    if how == "last":
        return output[torch.arange(len(output), device=output.device), lengths - 1]
    real = (torch.arange(output.shape[1], device=output.device) < lengths[:, None])[..., None]
    if how == "max":
        return output.masked_fill(~real, float("-inf")).amax(1)
    return (output * real).sum(1) / lengths[:, None].to(output.dtype)


# ----------------------------------------------------------------------------------------------
# LOSS
# ----------------------------------------------------------------------------------------------
def nll_loss(log_probs, labels, class_weights=None):
    """The assignment's softmax + negative log-likelihood: L = -(1/B) Σ_b log p(y_b | tweet_b),
    with log p the log-softmax of the two outputs. Averaged over the batch.

    With class_weights w (--class-weighted), each tweet's term is weighted by its class's w and
    the sum divided by the weights' sum: L = -Σ_b w[y_b] log p(y_b | tweet_b) / Σ_b w[y_b]."""
    return F.nll_loss(log_probs, labels, weight=class_weights, reduction="mean")


def next_character_loss(model, head, codes, lengths):
    """--pretrain-iterations' objective, a character language model (Dai & Le 2015, "Semi-
    supervised sequence learning"): from the LSTM's state after characters 1..t, `head` (a
    Linear(hidden, 128) used only here) predicts character t + 1. L = -(1/M) Σ_b Σ_{t < L_b}
    log p(c_{t+1} | c_1..c_t), the cross-entropy averaged over the M predicted characters of the
    batch (each tweet of length L_b gives L_b - 1)."""
    output, _ = model.lstm(F.one_hot(codes.long(), VOCAB).float())        # (B, T, hidden)
    predicted = torch.arange(codes.shape[1] - 1, device=codes.device) < (lengths - 1)[:, None]
    logits = head(output[:, :-1][predicted])                              # (M, 128)
    return F.cross_entropy(logits.float(), codes[:, 1:][predicted].long())


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


def fit(model, train, train_sample, val, test, args, device, generator, stem, language_model=()):
    """args.iterations minibatches, drawn in shuffled passes over the training tweets; every
    --eval-every iterations the accuracies and losses are recorded and a checkpoint is written,
    with the current pass's order and position, so --resume continues the same stream; stops
    early when the watched loss (validation with --val-fraction, else test) has not improved for
    --patience evaluations. With a validation set, the run ends with the weights of its best
    evaluation (kept in the checkpoint as it goes). `language_model`: pretrain's history, kept in
    the files. Returns the Run."""
    optimizer = make_optimizer(model, args)
    run = common.Run(args, stem, KIND, {"model": model}, {"optimizer": optimizer}, generator,
                     unit="iteration", total=args.iterations)
    if language_model:
        run.extra["language_model"] = language_model
    splits = {"train": train_sample, **({"val": val} if val else {}), "test": test}
    watched = "val_loss" if val else "test_loss"
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
        if args.lr_schedule == "cosine":
            common.set_lr(optimizer, common.cosine_lr(args.lr, iteration - 1, args.iterations))
        if position + args.batch_size > n:  # a new pass; the tail of the last one is dropped
            order, position = bucketed_order(train[1], args.batch_size, args.bucket, generator), 0
        codes, lengths, labels = batch(train, order[position:position + args.batch_size])
        position += args.batch_size
        losses[iteration - start - 1] = train_step(model, optimizer, codes, lengths, labels,
                                                   class_weights, args, device)
        if iteration % args.eval_every == 0 or iteration == args.iterations:
            since = losses[:iteration - start]  # the iterations since the last record
            record = {"batch_loss": since.mean().item()}
            for name, split in splits.items():
                record.update({f"{name}_{k}": v for k, v in evaluate(model, split).items()})
            start = iteration
            common.check_finite(iteration, run.weights_path, unit="iteration", nll=since)
            run.log(iteration, record)
            if val and record["val_loss"] <= min(r["val_loss"] for r in run.history):
                run.extra["best"] = {"iteration": iteration, "model": copy.deepcopy(model.state_dict())}
            run.save(iteration, order=order.int(), position=position)  # where --resume goes on
            if common.stop_early(run.history, watched, args.patience):
                break
    best = run.extra.pop("best", None)
    if best:  # the weights of the best validation loss, in the files from here on
        model.load_state_dict(best["model"])
        run.save(run.history[-1]["iteration"], best_iteration=best["iteration"])
        print(f"kept the weights of iteration {best['iteration']}: the lowest validation loss")
    return run


def pretrain(model, corpus, args, device, generator):
    """--pretrain-iterations minibatches of next_character_loss on `corpus` (codes, lengths: the
    training tweets' text), drawn in bucketed passes like fit's, Adam at --lr on the LSTM and a
    throw-away head. Its mean loss every --eval-every iterations is printed and returned (the
    metrics keep it). Not checkpointed: a run killed here starts again."""
    head = nn.Linear(model.lstm.hidden_size, VOCAB).to(device)
    optimizer = torch.optim.Adam([*model.lstm.parameters(), *head.parameters()], lr=args.lr)
    codes, lengths = corpus[0].to(device), corpus[1]
    no_labels = torch.zeros(len(lengths), dtype=torch.long, device=device)  # batch() cuts labels too
    history, losses, start = [], [], time.perf_counter()
    order, position = bucketed_order(lengths, args.batch_size, args.bucket, generator), 0
    for iteration in common.progress(range(1, args.pretrain_iterations + 1),
                                     args.pretrain_iterations, "language model"):
        if position + args.batch_size > len(lengths):
            order, position = bucketed_order(lengths, args.batch_size, args.bucket, generator), 0
        x, x_lengths, _ = batch((codes, lengths, no_labels), order[position:position + args.batch_size])
        position += args.batch_size
        with common.autocast(args, device):
            loss = next_character_loss(model, head, x, x_lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if iteration % args.eval_every == 0 or iteration == args.pretrain_iterations:
            mean = torch.stack(losses).mean().item()
            common.check_finite(iteration, unit="language-model iteration", next_character=torch.stack(losses))
            history.append({"iteration": iteration, "next_character_loss": mean,
                            "seconds": round(time.perf_counter() - start, 2)})
            print(f"language model {iteration}/{args.pretrain_iterations} | next-character "
                  f"cross-entropy {mean:.3f} nats ({mean / math.log(2):.2f} bits per character)", flush=True)
            losses = []
    return history


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


def final_metrics(model, train, train_sample, val, test, iterations):
    """The run's final block: evaluate on the training sample, the whole training set, the
    validation set (if any) and the test set, and the test accuracy of always answering the
    training set's majority class (what imbalanced classes give for free, at balanced accuracy
    0.5)."""
    final = {"iterations": iterations, "train_tweets": len(train[2]), "test_tweets": len(test[2]),
             "train_sample": len(train_sample[2]), "val_tweets": len(val[2]) if val else 0}
    splits = {"train": train_sample, "train_all": train, **({"val": val} if val else {}), "test": test}
    for prefix, split in splits.items():
        final.update({f"{prefix}_{k}": v for k, v in evaluate(model, split).items()})
    majority = int(train[2].float().mean().item() >= 0.5)  # 1: most training tweets are positive
    final["test_majority_class_acc"] = (test[2] == majority).float().mean().item()
    return final


def take(split, chosen):
    """The tweets of `split` at the CPU indices `chosen`, as a split."""
    codes, lengths, labels = split
    on_device = chosen.to(codes.device)  # once, at setup
    return codes[on_device], lengths[chosen], labels[on_device]


def sample(split, n, seed):
    """A fixed random subset of n tweets of `split` (all of it when n is larger), as a split."""
    return take(split, torch.randperm(len(split[2]), generator=torch.Generator().manual_seed(seed))[:n])


def hold_out(n, fraction, seed):
    """--val-fraction: (training, validation) indices of n training tweets, the validation share
    drawn at random once by `seed` (its own stream: the training stream is unchanged)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    n_val = round(n * fraction)
    return order[n_val:].sort().values, order[:n_val].sort().values


# ----------------------------------------------------------------------------------------------
# THE YARDSTICK: a bag-of-words logistic regression on the same tweets
# ----------------------------------------------------------------------------------------------
WORD = re.compile(r"\w+|[^\w\s]")  # a run of letters, digits and _, or one other visible character


def ngrams(text):
    """The set of a tweet's word unigrams and bigrams, lower-cased:
    "I love it!" → {i, love, it, !, "i love", "love it", "it !"}."""
    words = WORD.findall(text.lower())
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def bag_of_words(train_texts, *others, min_tweets=2):
    """The vocabulary: the n-grams found in at least `min_tweets` training tweets. Returns a
    sparse 0/1 matrix (tweets × vocabulary, float64) for the training tweets and for each of
    `others` (n-grams never seen in training are left out), and the vocabulary's size."""
    grams = [ngrams(t) for t in train_texts]
    counts = Counter(g for tweet in grams for g in tweet)
    vocabulary = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= min_tweets))}

    def matrix(tweets):
        rows, cols = [], []
        for row, tweet in enumerate(tweets):
            found = [vocabulary[g] for g in tweet if g in vocabulary]
            rows.extend([row] * len(found))
            cols.extend(found)
        return torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long),
                                       torch.ones(len(rows), dtype=torch.float64),
                                       (len(tweets), len(vocabulary)), check_invariants=True).coalesce()

    return [matrix(grams)] + [matrix([ngrams(t) for t in texts]) for texts in others], len(vocabulary)


def logistic_regression(x, labels, l2=1e-4, max_iter=500):
    """Weights w and bias b minimising the class-weighted mean logistic loss plus an L2 penalty
    on w (not b): L(w, b) = Σ_i c_{y_i} log(1 + exp(-s_i (x_i·w + b))) / Σ_i c_{y_i} + (l2/2)|w|²,
    with s_i = ±1 the label and c the inverse_frequency class weights. The problem is convex;
    L-BFGS with a strong-Wolfe line search (float64) runs to a gradient below ~1e-6. The gradient
    is written out, ∂L/∂w = Xᵀ r + l2·w and ∂L/∂b = Σ r with r = c_y (σ(Xw + b) - y) / Σ c_y, as
    two products with X in compressed-row form: 20x faster than autograd through a sparse X."""
    y = labels.double()
    weights = inverse_frequency(labels)[labels].double()
    with warnings.catch_warnings():  # "CSR support is in beta": a matrix product is all it does
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        rows, columns = x.to_sparse_csr(), x.t().coalesce().to_sparse_csr()  # X and Xᵀ
    w = torch.zeros(x.shape[1], 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def objective():
        logits = (rows @ w).squeeze(1) + b
        loss = (weights * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        residual = weights * (torch.sigmoid(logits) - y) / weights.sum()  # ∂L/∂logits
        w.grad = columns @ residual.unsqueeze(1) + l2 * w
        b.grad = residual.sum().reshape(1)
        return loss / weights.sum() + l2 / 2 * w.pow(2).sum()

    optimizer.step(objective)
    return w.detach(), b.detach()


def bag_of_words_baseline(train_texts, train_labels, test_texts, test_labels):
    """The yardstick beside every LSTM number: a logistic regression on bag_of_words of the same
    training tweets, scored on the same test tweets (on the CPU, a few seconds)."""
    start = time.perf_counter()
    (x_train, x_test), n_features = bag_of_words(train_texts, test_texts)
    train_labels, test_labels = train_labels.cpu(), test_labels.cpu()
    w, b = logistic_regression(x_train, train_labels)
    predicted = ((x_test @ w).squeeze(1) + b > 0).long()
    hits = torch.bincount(test_labels[predicted == test_labels], minlength=2).double()
    totals = torch.bincount(test_labels, minlength=2).double()
    result = {"bag_of_words_features": n_features,
              "bag_of_words_test_acc": (hits.sum() / totals.sum()).item(),
              "bag_of_words_test_balanced_acc": balanced_accuracy(hits, totals)}
    print(f"bag-of-words logistic regression ({n_features:,} unigrams and bigrams): test acc "
          f"{result['bag_of_words_test_acc']:.4f}, balanced {result['bag_of_words_test_balanced_acc']:.4f} "
          f"({time.perf_counter() - start:.1f} s)")
    return result


# ----------------------------------------------------------------------------------------------
# THE RUN'S NAME AND ITS FIGURE
# ----------------------------------------------------------------------------------------------
# The flags' short tags in a run's name; the data files and their columns stay out of it.
NAME_TAGS = {"hidden": "h", "iterations": "it", "eval_every": "eval", "max_len": "maxlen",
             "train_sample": "sample", "bucket": "bucket", "class_weighted": "weighted",
             "optimizer": "", "readout": "", "dropout": "drop", "val_fraction": "val",
             "lr_schedule": "", "pretrain_iterations": "lm"}
DATA_FLAGS = ("train_csv", "test_csv", "text_column", "label_column")


def run_name(args):
    """What this run's files are called: with --load, the loaded file's own name; otherwise
    "lstm_tweets" plus every knob that differs from the defaults (lstm_tweets_h64,
    lstm_tweets_lr0.001_it30000_weighted): a quick edit writes beside the committed run."""
    if args.load:
        return Path(args.load).stem
    return common.run_name(KIND, args, vars(parse_args([])), NAME_TAGS, skip=DATA_FLAGS)


def plot_history(history, final, args, name, path):
    """Accuracy, balanced accuracy and NLL against the iteration, for the test file, the training
    sample (and the validation set); the bag-of-words line drawn across the accuracy panels; a
    caption with the two files' class shares (the gap it makes between train and test accuracy)."""
    its = [r["iteration"] for r in history]
    series = lambda key: (its, [r[key] for r in history])
    splits = {"test": "test", "train": f"training ({args.train_sample} fixed tweets)"}
    if "val_loss" in history[-1]:
        splits["val"] = f"validation ({final['val_tweets']} held-out training tweets)"
    bow = "bag-of-words logistic regression (test)"
    line = lambda key: {bow: ([its[0], its[-1]], [final[f"bag_of_words_test_{key}"]] * 2)}
    panels = {"accuracy": {**{label: series(f"{s}_acc") for s, label in splits.items()}, **line("acc")},
              "balanced accuracy": {**{label: series(f"{s}_balanced_acc") for s, label in splits.items()},
                                    **line("balanced_acc")},
              "negative log-likelihood (nats per tweet)": {
                  **{label: series(f"{s}_loss") for s, label in splits.items()},
                  f"minibatches (mean over {args.eval_every})": series("batch_loss")}}
    what = "the assignment's run" if name == KIND else f"run {name}"
    kept = f"; weights kept from iteration {final['weights_from_iteration']}" if "weights_from_iteration" in final else ""
    more = len(args.train_csv) - 1
    files = Path(args.train_csv[0]).name + (f" and {more} more" if more else "")
    caption = (f"Training tweets ({files}) are {final['train_positive_share']:.0%} positive, the test "
               f"file {final['test_positive_share']:.0%} positive: accuracy rewards the majority "
               f"class, so train and test accuracy differ by the class shift as well; balanced "
               f"accuracy (the mean of the two class recalls, 0.5 for any constant answer) does not.")
    common.plot_panels(path, panels, xlabel="iteration", title=f"Character LSTM on tweets: {what}{kept}",
                       markers=len(history) <= 30, caption=caption, legend_below=True,
                       styles={bow: {"color": "0.3", "linestyle": "--", "marker": None}})


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
    """Files → (codes on device, lengths on the CPU, labels on device), the encoding's counts, the
    texts (for the bag-of-words yardstick) and the neutral tweets' texts (for the language model).
    The lengths stay on the CPU: batch() cuts each minibatch to its longest tweet from them."""
    texts, labels, neutral = common.read_tweet_files(paths, args.text_column, args.label_column)
    texts, labels = texts[:args.limit], labels[:args.limit]
    codes, lengths, counts = encode(texts, args.max_len)
    if counts["non_ascii_tweets"]:
        print(f"  {common.plural(counts['non_ascii_tweets'], 'tweet')} with characters outside "
              f"ASCII, each such character read as code {PLACEHOLDER} (SUB)")
    if counts["truncated_tweets"]:
        print(f"  {common.plural(counts['truncated_tweets'], 'tweet')} longer than {args.max_len} "
              f"characters cut to {args.max_len} (--max-len)")
    return (codes.to(device), lengths, torch.tensor(labels, device=device)), counts, texts, neutral[:args.limit]


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    generator = common.seed_everything(args.seed)
    out, name = common.out_dir(args), run_name(args)
    checkpoint = common.load_checkpoint(args.load, KIND) if args.load else None
    if checkpoint:  # read first: a wrong file fails at once, and its run's flags decide the model
        common.use_run_args(args, checkpoint, RUN_ARGS, args.load)
    train, train_counts, train_texts, neutral = load_split(args.train_csv, args, device)
    test, test_counts, test_texts, _ = load_split(args.test_csv, args, device)
    val = None
    if args.val_fraction:  # held out before anything sees the training tweets
        kept, held = hold_out(len(train[2]), args.val_fraction, args.seed)
        train, val, train_texts = take(train, kept), take(train, held), [train_texts[i] for i in kept]
        print(f"--val-fraction: {len(held)} training tweets held out for validation")
    train_sample = sample(train, args.train_sample, args.seed)
    model = CharLSTM(args.hidden, args.readout, args.dropout).to(device)
    pretrained = ()
    if args.load:
        run = common.load_run(args.load, KIND, {"model": model}, unit="iteration",
                              checkpoint=checkpoint)
    else:
        if args.pretrain_iterations and not args.resume:
            corpus = [t for t in train_texts + neutral if len(t) >= 2]  # ≥ 1 character to predict
            print(f"language model on {len(corpus)} training tweets' text ({len(neutral)} neutral)")
            pretrained = pretrain(model, encode(corpus, args.max_len)[:2], args, device, generator)
        run = fit(model, train, train_sample, val, test, args, device, generator, out / name, pretrained)
    final = final_metrics(model, train, train_sample, val, test, run.history[-1]["iteration"])
    if "best_iteration" in run.extra:
        final["weights_from_iteration"] = run.extra["best_iteration"]
    final.update(train_positive_share=train[2].float().mean().item(),
                 test_positive_share=test[2].float().mean().item(),
                 **bag_of_words_baseline(train_texts, train[2], test_texts, test[2]))
    plot_history(run.history, final, args, name, out / f"{name}_curves.png")
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history, final,
                        weights=str(args.load or out / f"{name}.pt"), **run.provenance(),
                        reading={"train": train_counts, "test": test_counts},
                        language_model=run.extra.get("language_model"))
    print(f"final: train acc {final['train_acc']:.4f} ({len(train_sample[2])} tweets), "
          f"{final['train_all_acc']:.4f} (all {len(train[2])}) | test acc {final['test_acc']:.4f}, "
          f"balanced {final['test_balanced_acc']:.4f} (always the training majority: "
          f"{final['test_majority_class_acc']:.4f}) | test loss {final['test_loss']:.4f} | "
          f"{run.seconds:.0f} s of training | bag-of-words line: balanced "
          f"{final['bag_of_words_test_balanced_acc']:.4f}")


if __name__ == "__main__":
    common.run_main(main)