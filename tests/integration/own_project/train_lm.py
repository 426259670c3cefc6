"""A plain PyTorch training script that knows nothing of labq, in the shape of
the public word-language-model example: it trains, saves the model to
``model.pt`` in its working directory, loads it back and reports test
perplexity on stdout.  Run side by side in one shared directory, each run
would evaluate whichever model was written last."""

import argparse
import math
import time

import torch
from torch import nn

from lmdata import Corpus

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--data", default="data/corpus.txt")
parser.add_argument("--save", default="model.pt")
parser.add_argument("--pause", type=float, default=0.0, help="seconds between saving and loading the model")
args = parser.parse_args()

torch.manual_seed(args.seed)
corpus = Corpus(args.data)
ntokens = len(corpus.vocab)


class Bigram(nn.Module):
    def __init__(self, n: int, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(n, dim)
        self.out = nn.Linear(dim, n)

    def forward(self, x):
        return self.out(self.embed(x))


def evaluate(model, tokens):
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(tokens[:-1]), tokens[1:])
    return loss.item()


model = Bigram(ntokens)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
for epoch in range(1, args.epochs + 1):
    model.train()
    for start in range(0, len(corpus.train) - 1, 64):
        chunk = corpus.train[start:start + 65]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(chunk[:-1]), chunk[1:])
        loss.backward()
        optimizer.step()
    val = evaluate(model, corpus.valid)
    print(f"| end of epoch {epoch:3d} | valid loss {val:5.2f} | valid ppl {math.exp(val):8.2f}")

torch.save({"state": model.state_dict(), "lr": args.lr}, args.save)
time.sleep(args.pause)  # another run in the same directory would overwrite the file now
saved = torch.load(args.save)
model.load_state_dict(saved["state"])
test = evaluate(model, corpus.test)
print(f"loaded the model trained with lr {saved['lr']}")
print(f"| End of training | test loss {test:5.2f} | test ppl {math.exp(test):8.2f}")
