"""Selection strategies against hand-written references."""

import pytest
import torch

from hsk_cache.config.specs import LayerSpec, TokenSpec
from hsk_cache.errors import ConfigError
from hsk_cache.select import length
from hsk_cache.select.depth import layer_map, uniform_layer_map


def test_all_tokens_marks_padding():
    index = length.all_tokens(torch.tensor([3, 1]), 4)
    assert index.tolist() == [[0, 1, 2, -1], [0, -1, -1, -1]]


def test_cls_importance_averages_heads_of_the_cls_row():
    probs = torch.zeros(1, 2, 3, 3)
    probs[0, 0, 0] = torch.tensor([0.2, 0.5, 0.3])
    probs[0, 1, 0] = torch.tensor([0.4, 0.1, 0.5])
    probs[0, :, 1:] = 1.0  # other query rows must be ignored
    assert torch.allclose(length.cls_importance(probs), torch.tensor([[0.3, 0.3, 0.4]]))


def test_topk_excludes_sep_and_padding_and_orders_by_importance():
    # tokens: [CLS] a b c [SEP] pad ; [SEP] gets the most attention, pad the second most
    importance = torch.tensor([[0.10, 0.05, 0.30, 0.20, 0.90, 0.80]])
    input_ids = torch.tensor([[101, 7, 8, 9, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]]).bool()
    eligible = mask & ~torch.isin(input_ids, torch.tensor([102]))
    index = length.topk_tokens(importance, eligible, torch.tensor([3]), 3)
    assert index.tolist() == [[2, 3, 0]]
    with_sep = length.topk_tokens(importance, mask, torch.tensor([3]), 3)
    assert with_sep.tolist() == [[4, 2, 3]]


def test_topk_pads_with_minus_one_when_too_few_eligible_tokens():
    importance = torch.tensor([[0.5, 0.2, 0.3, 0.0]])
    eligible = torch.tensor([[True, False, True, False]])
    index = length.topk_tokens(importance, eligible, torch.tensor([4]), 5)
    assert index.tolist() == [[0, 2, -1, -1, -1]]


def test_topk_ties_are_broken_by_position():
    index = length.topk_tokens(torch.ones(1, 4), torch.ones(1, 4).bool(), torch.tensor([2]), 2)
    assert index.tolist() == [[0, 1]]


def test_percentage_of_real_length_rounds_up():
    spec = TokenSpec.parse("topk:10%")
    assert length.tokens_per_example(spec, torch.tensor([5, 10, 11, 128])).tolist() == [1, 1, 2, 13]
    assert spec.kept_tokens(128) == 13


def test_gather_tokens_zeroes_missing_positions():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    picked = length.gather_tokens(hidden, torch.tensor([[2, 0], [1, -1]]))
    assert picked.tolist() == [[[4, 5], [0, 1]], [[8, 9], [0, 0]]]


def test_uniform_layer_map_rounds_halves_up():
    assert uniform_layer_map(3, 6) == {1: 2, 2: 4, 3: 6}
    assert uniform_layer_map(4, 6) == {1: 2, 2: 3, 3: 5, 4: 6}  # 1.5→2, 4.5→5
    assert uniform_layer_map(4, 12) == {1: 3, 2: 6, 3: 9, 4: 12}


def test_layer_map_keeps_cached_pairs_and_rejects_missing_layers():
    assert layer_map("uniform", 3, 6, (6,)) == {3: 6}
    assert layer_map("1:2,3:6", 3, 6, (2, 4, 6)) == {1: 2, 3: 6}
    with pytest.raises(ConfigError, match="teacher layer 3"):
        layer_map("1:3", 3, 6, (2, 4, 6))
    with pytest.raises(ConfigError, match="needs teacher layers"):
        layer_map("uniform", 3, 6, (1,))
    with pytest.raises(ConfigError, match="student has layers"):
        layer_map("5:6", 3, 6, (6,))


@pytest.mark.parametrize("text,resolved", [("last", (6,)), ("all", tuple(range(7))), ("4,2,2", (2, 4))])
def test_layer_spec_resolves(text, resolved):
    assert LayerSpec.parse(text).resolve(6) == resolved


@pytest.mark.parametrize(
    "bad", ["topk:0", "topk:-3", "topk:x", "topk:0%", "topk:101%", "first:3", "topk", "left+sop:3"]
)
def test_token_spec_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        TokenSpec.parse(bad)


def test_token_spec_rejects_k_beyond_max_length():
    with pytest.raises(ConfigError, match="max_length 16"):
        TokenSpec.parse("topk:17").check(16)
    with pytest.raises(ConfigError, match="outside the teacher's 0..6"):
        LayerSpec.parse("7").resolve(6)
