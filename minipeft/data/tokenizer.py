"""Tokenizer: byte-level BPE trained with Hugging Face `tokenizers`, and a small wrapper around it.

Text -> token ids happens here, on the host. Everything this wrapper returns is a valid id in
[0, vocab_size). Ids that come from anywhere else (a user's array, a file) should go through
`validate_ids` before they reach the model: on a GPU, CuPy does not raise for an out-of-range
index, it silently wraps it, and the model trains on the wrong embedding row.

minipeft's own tokenizers (`train_tokenizer`, the shipped data/tokenizer.json) have the special
tokens at fixed ids:

    0 <pad>   1 <bos>   2 <eos>   3 <sep>   4 <cls>   5 <mask>   6 <unk>

then the 256 byte symbols (ids 7..262), then the learned merges. Byte-level means every string
can be encoded with no unknown token: text is UTF-8 bytes, each byte has a symbol, and BPE merges
frequent pairs of symbols into longer tokens ("Ġ" in a token is the byte of a space).

Someone else's tokenizer.json (GPT-2's, BERT's, ...) loads too. Its special tokens are found by
their usual names (`COMMON_NAMES`): GPT-2's `<|endoftext|>` serves as bos, eos and pad; BERT's
`[PAD] [CLS] [SEP] [MASK] [UNK]` as pad, cls, sep, mask, unk. A role with no token is None, and
only a feature that needs it (padding needs pad, add_bos needs bos, ...) raises an error.

Special-token strings inside the text (for example a literal "<sep>") are read as the special
token itself, as Hugging Face tokenizers do.

Train the shipped tokenizer from the command line:

    python -m minipeft.data.tokenizer --train data/pretrain/train.txt --vocab-size 2048 \\
        --out data/tokenizer.json
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from minipeft import backend

np = backend.host()

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>", "<cls>", "<mask>", "<unk>")  # ids 0..6
ROLES = ("pad", "bos", "eos", "sep", "cls", "mask", "unk")

# Names tried, in order, for each role when a tokenizer.json is loaded.
COMMON_NAMES = {
    "pad": ("<pad>", "[PAD]", "<|endoftext|>"),
    "bos": ("<bos>", "<s>", "<|endoftext|>"),
    "eos": ("<eos>", "</s>", "<|endoftext|>"),
    "sep": ("<sep>", "[SEP]", "</s>"),
    "cls": ("<cls>", "[CLS]", "<s>"),
    "mask": ("<mask>", "[MASK]"),
    "unk": ("<unk>", "[UNK]"),
}

# where `python -m minipeft.data.tokenizer` writes and `load_default` reads (repository's data/)
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "data" / "tokenizer.json"


# ----------------------------------------------------------------------------- id validation

def validate_ids(ids, vocab_size: int, where: str = "token ids"):
    """Check on the host that every id is an integer in [0, vocab_size); return them as int64.

    Raises ValueError naming the first bad position and its value. Model code should call this
    on user-provided ids before moving them to the device (CuPy wraps out-of-range indices
    silently instead of raising). `where` names the input in the message.
    """
    try:
        a = np.asarray(backend.to_numpy(ids))
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{where}: ids must form a rectangular array ({e}); "
                         f"pad them to one length with Tokenizer.batch") from None
    if a.size == 0:
        return a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{where}: token ids must be integers, got dtype {a.dtype}")
    bad = (a < 0) | (a >= vocab_size)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        pos = tuple(int(i) for i in np.unravel_index(first, a.shape))
        pos_text = str(pos[0]) if a.ndim == 1 else str(pos)
        raise ValueError(f"{where}: token id {int(a.flat[first])} at position {pos_text} is out of "
                         f"range; expected every id in [0, {vocab_size}). Use ids from the "
                         f"tokenizer the model was built for (model vocab_size >= tokenizer "
                         f"vocab_size)")
    return a.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------- batches

@dataclass
class Batch:
    """Padded token ids, all host int64 arrays.

    ids: (B, T) token ids, padding = pad_id;  attention_mask: (B, T) 1 for a real token, 0 for
    padding;  lengths: (B,) real tokens per row;  token_type_ids: (B, T) segment 0/1 for pairs
    (None for single texts).
    """
    ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    token_type_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lengths)


def _truncate(ids: list[int], n: int, side: str) -> list[int]:
    """Keep n tokens: the first n (side='right' cuts the end) or the last n (side='left')."""
    if len(ids) <= n:
        return ids
    return ids[:n] if side == "right" else ids[len(ids) - n:]


def pad_rows(rows, pad_id: int, pad_to: int | None = None, padding_side: str = "right",
             type_rows=None) -> Batch:
    """Stack lists of ids of different lengths into a Batch of (B, T) host arrays, T = pad_to or
    the longest row; padding = pad_id (e.g. -100 to pad targets). type_rows: each row's segment
    ids, padded with 0 into token_type_ids."""
    lengths = [len(r) for r in rows]
    T = max(lengths) if pad_to is None else pad_to
    for i, n in enumerate(lengths):
        if n > T:
            raise ValueError(f"row {i} has {n} tokens, more than pad_to={pad_to}; "
                             f"pass max_len={pad_to} to truncate it")
    B = len(rows)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    types = None if type_rows is None else np.zeros((B, T), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(row)
        cols = slice(0, n) if padding_side == "right" else slice(T - n, T)
        ids[i, cols] = row
        mask[i, cols] = 1
        if types is not None:
            types[i, cols] = type_rows[i]
    return Batch(ids, mask, np.array(lengths, dtype=np.int64), types)


def _check_choice(name: str, value: str, choices=("right", "left")) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# ----------------------------------------------------------------------------- the wrapper

class Tokenizer:
    """A Hugging Face `tokenizers.Tokenizer` with minipeft's conventions.

    `encode` never adds special tokens by itself (a BERT tokenizer.json's own [CLS]/[SEP]
    template is switched off): add them with add_bos/add_eos, or use `encode_pair`.
    """

    def __init__(self, hf_tokenizer, special_tokens: dict[str, str] | None = None):
        # A tokenizer.json may carry its own padding and truncation (many do: fixed padding to 128,
        # truncation to 512). Left on, `encode_batch` would pad every row and cut long texts without
        # a word. This wrapper pads, cuts and builds the attention mask itself, so it switches both
        # off on a copy (the caller's object is left as it was) and keeps what they were, to read.
        from tokenizers import Tokenizer as HFTokenizer
        self.source_padding, self.source_truncation = hf_tokenizer.padding, hf_tokenizer.truncation
        if self.source_padding is not None or self.source_truncation is not None:
            hf_tokenizer = HFTokenizer.from_str(hf_tokenizer.to_str())
            hf_tokenizer.no_padding()
            hf_tokenizer.no_truncation()
        self.hf = hf_tokenizer
        vocab = hf_tokenizer.get_vocab(with_added_tokens=True)
        # rows an embedding table needs: every id must be < vocab_size
        self._vocab_size = max(vocab.values()) + 1
        special_tokens = dict(special_tokens or {})
        unknown = set(special_tokens) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown special-token roles {sorted(unknown)}; expected some of {ROLES}")
        for role, token in special_tokens.items():
            if token not in vocab:
                raise ValueError(f"special token {token!r} for {role} is not in the vocabulary")
        self._special = {}      # role -> token string, or None when the tokenizer has none
        for role in ROLES:
            names = (special_tokens[role],) if role in special_tokens else COMMON_NAMES[role]
            self._special[role] = next((s for s in names if s in vocab), None)

    # ---- construction and saving

    @classmethod
    def from_file(cls, path, special_tokens: dict[str, str] | None = None) -> "Tokenizer":
        """Load a tokenizer.json (minipeft's, GPT-2's, BERT's, ...).

        special_tokens: {role: token string} to name special tokens that the usual names in
        COMMON_NAMES miss, e.g. {"pad": "<|padding|>"}.
        """
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}; train one with `python -m "
                                    f"minipeft.data.tokenizer --train FILE --out {path}`")
        return cls(HFTokenizer.from_file(str(path)), special_tokens)

    def save(self, path) -> None:
        """Write the tokenizer as JSON (the format `from_file` reads)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(path))

    def __repr__(self) -> str:
        found = ", ".join(f"{r}={self.special_id(r)}" for r in ROLES if self._special[r])
        return f"Tokenizer(vocab_size={self.vocab_size}, {found})"

    # ---- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1): the rows of the model's embedding table."""
        return self._vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(int(i))

    def special_id(self, role: str) -> int | None:
        """Id of the special token playing `role` ('pad', 'bos', ...), or None if there is none."""
        if role not in ROLES:
            raise ValueError(f"unknown special-token role {role!r}; expected one of {ROLES}")
        tok = self._special[role]
        return None if tok is None else self.hf.token_to_id(tok)

    def require(self, role: str, feature: str) -> int:
        """Id of a special token that `feature` needs; a clear error when the tokenizer lacks it."""
        i = self.special_id(role)
        if i is None:
            raise ValueError(f"{feature} needs a {role} token, but this tokenizer has none (looked "
                             f"for {', '.join(COMMON_NAMES[role])}). Name one when loading: "
                             f"Tokenizer.from_file(path, special_tokens={{'{role}': TOKEN}})")
        return i

    pad_id = property(lambda self: self.special_id("pad"))
    bos_id = property(lambda self: self.special_id("bos"))
    eos_id = property(lambda self: self.special_id("eos"))
    sep_id = property(lambda self: self.special_id("sep"))
    cls_id = property(lambda self: self.special_id("cls"))
    mask_id = property(lambda self: self.special_id("mask"))
    unk_id = property(lambda self: self.special_id("unk"))

    # ---- text <-> ids

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        bos = [self.require("bos", "add_bos")] if add_bos else []
        eos = [self.require("eos", "add_eos")] if add_eos else []
        return bos + ids + eos

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Text -> list of token ids, optionally with <bos> first and <eos> last."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a string, got {type(text).__name__}")
        return self._wrap(self.hf.encode(text, add_special_tokens=False).ids, add_bos, add_eos)

    def decode(self, ids, skip_special: bool = True) -> str:
        """Ids (list, NumPy or CuPy array, 1-D) -> text; special tokens dropped by default."""
        ids = validate_ids(ids, self.vocab_size, where="decode")
        if ids.ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {ids.shape}; "
                             f"decode each row of a batch separately")
        return self.hf.decode(ids.tolist(), skip_special_tokens=skip_special)

    def encode_pair(self, a: str, b: str, max_len: int | None = None) -> tuple[list[int], list[int]]:
        """BERT-style pair: ids = <cls> a <sep> b <sep>, token_type_ids 0 up to the first <sep>
        included and 1 after it. With max_len, tokens are cut from the end of the longer text,
        one at a time, until the pair fits ("longest first", as in BERT)."""
        cls_, sep = self.require("cls", "encode_pair"), self.require("sep", "encode_pair")
        ta, tb = self.encode(a), self.encode(b)
        if max_len is not None:
            if max_len < 3:
                raise ValueError(f"max_len={max_len} leaves no room: a pair needs 3 special tokens")
            while len(ta) + len(tb) + 3 > max_len:
                if len(ta) >= len(tb):
                    ta.pop()
                else:
                    tb.pop()
        ids = [cls_] + ta + [sep] + tb + [sep]
        types = [0] * (len(ta) + 2) + [1] * (len(tb) + 1)
        return ids, types

    # ---- batches

    def batch(self, texts, max_len: int | None = None, pad_to: int | None = None,
              truncation: str = "right", padding_side: str = "right",
              add_bos: bool = False, add_eos: bool = False) -> Batch:
        """Encode texts and pad them into a Batch of (B, T) int64 host arrays.

        max_len: cut each row to at most max_len tokens, <bos>/<eos> included (they are kept;
            the text is cut). truncation='right' keeps the start of the text, 'left' keeps the end.
        pad_to: pad every row to exactly this length T (an error if a row is longer: set max_len);
            by default T is the longest row.
        padding_side: 'right' puts padding after the tokens (training), 'left' before them
            (batched generation, so every row ends at the same position).
        """
        _check_choice("truncation", truncation)
        _check_choice("padding_side", padding_side)
        if isinstance(texts, str):
            raise TypeError("batch expects a list of strings; wrap a single text as [text]")
        texts = list(texts)
        if not texts:
            raise ValueError("batch got no texts; expected a non-empty list of strings")
        pad_id = self.require("pad", "batch (padding)")
        rows = [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]
        if max_len is not None:
            room = max_len - int(add_bos) - int(add_eos)
            if room < 0:
                raise ValueError(f"max_len={max_len} is too short for the <bos>/<eos> tokens")
            rows = [_truncate(r, room, truncation) for r in rows]
        rows = [self._wrap(r, add_bos, add_eos) for r in rows]
        return pad_rows(rows, pad_id, pad_to, padding_side)

    def batch_pairs(self, pairs, max_len: int | None = None, pad_to: int | None = None,
                    padding_side: str = "right") -> Batch:
        """Encode (a, b) text pairs with `encode_pair` and pad them; the Batch has token_type_ids."""
        _check_choice("padding_side", padding_side)
        pairs = list(pairs)
        if not pairs:
            raise ValueError("batch_pairs got no pairs; expected a non-empty list of (a, b)")
        pad_id = self.require("pad", "batch_pairs (padding)")
        encoded = [self.encode_pair(a, b, max_len) for a, b in pairs]
        return pad_rows([e[0] for e in encoded], pad_id, pad_to, padding_side,
                    type_rows=[e[1] for e in encoded])


def load_default() -> Tokenizer:
    """The shipped tokenizer, data/tokenizer.json (vocab 2048, trained on data/pretrain)."""
    return Tokenizer.from_file(DEFAULT_PATH)


# ----------------------------------------------------------------------------- training

def train_tokenizer(files, vocab_size: int = 2048, out_path=None, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on text files; save it as JSON when out_path is given.

    BPE starts from the 256 byte symbols and repeatedly merges the most frequent adjacent pair
    (seen at least min_frequency times) into a new token until there are vocab_size ids,
    the 7 special tokens included. The result is deterministic: the same files and settings
    give the same JSON. The vocabulary ends smaller when no pair is frequent enough any more.
    """
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    files = [files] if isinstance(files, (str, Path)) else list(files)
    if not files:
        raise ValueError("train_tokenizer got no files; expected one or more text files")
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"training file {f} does not exist")
    smallest = len(SPECIAL_TOKENS) + 256
    if vocab_size < smallest:
        raise ValueError(f"vocab_size={vocab_size} is too small: the {len(SPECIAL_TOKENS)} special "
                         f"tokens and 256 byte symbols alone need {smallest}")

    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split + bytes
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train([str(f) for f in files], trainer)
    for i, tok in enumerate(SPECIAL_TOKENS):  # the fixed ids this module promises
        assert hf.token_to_id(tok) == i, (tok, hf.token_to_id(tok))
    tok = Tokenizer(hf)
    if out_path is not None:
        tok.save(out_path)
    return tok


def chars_per_token(tok: Tokenizer, lines) -> float:
    """Average characters per token over lines of text: how much the tokenizer compresses."""
    lines = [line for line in lines if line.strip()]
    n_tokens = sum(len(tok.encode(line)) for line in lines)
    return sum(len(line) for line in lines) / max(n_tokens, 1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m minipeft.data.tokenizer",
                                description="Train a byte-level BPE tokenizer (special ids 0..6).")
    p.add_argument("--train", nargs="+", required=True, help="text file(s) to train on")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--out", default="data/tokenizer.json")
    p.add_argument("--eval", help="a text file to report characters per token on")
    args = p.parse_args(argv)
    tok = train_tokenizer(args.train, args.vocab_size, args.out, args.min_frequency)
    print(f"trained {tok!r} on {', '.join(args.train)}; saved {args.out}")
    if args.eval:
        with open(args.eval, encoding="utf-8") as f:
            print(f"{args.eval}: {chars_per_token(tok, f.read().splitlines()):.3f} characters per token")


if __name__ == "__main__":
    main()
