"""Tokenise a text file into train/valid/test tensors (the user's own module)."""

import torch


class Corpus:
    def __init__(self, path: str):
        with open(path, encoding="utf-8") as f:
            words = f.read().split()
        self.vocab = {w: i for i, w in enumerate(sorted(set(words)))}
        ids = torch.tensor([self.vocab[w] for w in words])
        n = len(ids)
        self.train, self.valid, self.test = ids[: n * 8 // 10], ids[n * 8 // 10: n * 9 // 10], ids[n * 9 // 10:]
