"""Shapes text-to-image alignment (eval/alignment.py) and the caption grammar / holdout it rests on (data/shapes.py).

The matching logic is checked exactly with an oracle "network" that reads an image's true caption; the trained
attribute network only in a reduced form (fewer kinds and colours, at most two shapes, a few seconds of
training): its accuracies here bound nothing about the full network, whose numbers are in the report.
"""

import dataclasses

import numpy as np
import pytest
import torch

from denoisekit.data.shapes import (COLOURS, DEFAULT_HOLDOUT, KINDS, SIZES, Caption, CaptionShape, ShapesDataset,
                                    parse_caption, region_phrase, relation_phrase)
from denoisekit.eval import alignment as al
from denoisekit.eval.alignment import (HEADS, alignment_prompts, attribute_accuracy, caption_labels, prompt_match,
                                       rendered_shapes, shapes_attribute_network, text_alignment)

# ------------------------------------------------------------------------------------------ caption grammar


@pytest.mark.slow  # renders many captions (~1 s)
def test_parse_caption_round_trips_and_agrees_with_labels():
    ds = ShapesDataset(length=1500, size=16, supersample=1, max_shapes=5, return_masks=False, label_from="none")
    counts = set()
    for i in range(len(ds)):
        item = ds[i]
        c = parse_caption(item["caption"])
        assert c.text() == item["caption"]
        n = int(item["count"])
        counts.add(n)
        assert c.count == n
        for k, s in enumerate(c.shapes):
            assert (s.kind, s.colour, s.size) == (KINDS[item["kinds"][k]], tuple(COLOURS)[item["colours"][k]],
                                                  SIZES[item["sizes"][k]])
        pos = item["positions"][:n].tolist()
        if n == 1:
            assert c.text().endswith(region_phrase(*pos[0])) and c.relation is None and c.order is None
        elif n == 2:
            assert c.relation == relation_phrase(pos[0], pos[1]) and c.region is None
        else:
            assert c.order in ("from left to right", "from top to bottom")
    assert counts == {1, 2, 3, 4, 5}


def test_parse_caption_normalises_case_and_space_and_names_bad_prompts():
    c = parse_caption("  A Large  red circle   LEFT OF a small blue square ")
    assert c == Caption((CaptionShape("large", "red", "circle"), CaptionShape("small", "blue", "square")),
                        relation="left of")
    bad = {"a large magenta circle on the left": "unknown word.*'magenta'",
           "a large red circle": "<shape> <where>",                      # no region
           "a small red circle and a large blue square from left to right": "<relation>",  # two need a relation
           "a red circle on the left": "<size>",                          # size is not optional
           "": "<shape>"}
    for prompt, match in bad.items():
        with pytest.raises(ValueError, match=match) as err:
            parse_caption(prompt)
        assert repr(prompt) in str(err.value)
    with pytest.raises(TypeError):
        parse_caption(None)
    with pytest.raises(ValueError, match="needs a relation"):
        Caption((CaptionShape("large", "red", "circle"),) * 2).text()


# ------------------------------------------------------------------------------------------ holdout


def test_holdout_excludes_pairs_and_redraws_only_where_needed():
    held = {tuple(p.split()) for p in DEFAULT_HOLDOUT}
    plain = ShapesDataset(length=1200, size=16, supersample=1, return_masks=False)
    ds = ShapesDataset(length=1200, size=16, supersample=1, return_masks=False, holdout=list(DEFAULT_HOLDOUT))
    seen, identical = set(), 0
    for i in range(len(ds)):
        s = ds.render(i)
        pairs = {(ds.colours[x.colour], ds.kinds[x.kind]) for x in s.shapes}
        assert not pairs & held, (i, s.caption)
        assert not any(f"{c} {k}" in s.caption for c, k in held)
        seen |= pairs
        p = plain.render(i)
        if not {(plain.colours[x.colour], plain.kinds[x.kind]) for x in p.shapes} & held:
            identical += 1
            assert np.array_equal(s.image, p.image) and s.caption == p.caption  # no draw was redone
    assert seen == {(c, k) for c in COLOURS for k in KINDS} - held  # every other pair still occurs
    assert identical > 0.5 * len(ds)
    # deterministic per (seed, index), whatever the length
    short = ShapesDataset(length=5, size=16, supersample=1, holdout=DEFAULT_HOLDOUT)
    assert all(short.render(i).caption == ds.render(i).caption for i in range(5))


def test_holdout_validation():
    assert ShapesDataset(length=2, holdout="red star").config.holdout == ("red star",)  # a YAML scalar
    with pytest.raises(ValueError, match="allowed: .*star"):
        ShapesDataset(holdout=["red stars"])
    with pytest.raises(ValueError, match="'colour kind' string"):
        ShapesDataset(holdout=["red"])
    with pytest.raises(ValueError, match="must not repeat"):
        ShapesDataset(holdout=["red star", "red  star"])
    with pytest.raises(ValueError, match="leaves no"):
        ShapesDataset(kinds=["circle"], colours=["red", "blue"], holdout=["red circle", "blue circle"])
    ShapesDataset(kinds=["circle"], holdout=DEFAULT_HOLDOUT)  # pairs of kinds not drawn are simply unused


# ------------------------------------------------------------------------------------------ matching


class Oracle(torch.nn.Module):
    """Stands in for the attribute network: returns the true labels of images it has been shown."""

    def __init__(self, images, captions):
        super().__init__()
        self.num_classes = [n for _, n in HEADS]
        self.table = {al.as_images(images[i:i + 1]).numpy().tobytes(): caption_labels(c)
                      for i, c in enumerate(captions)}

    def predict(self, x):
        return torch.tensor([self.table[x[i:i + 1].numpy().tobytes()] for i in range(x.shape[0])])


def test_caption_labels_are_canonical():
    a = caption_labels("a large red circle left of a small blue square")
    assert a == caption_labels("a small blue square right of a large red circle")
    assert a != caption_labels("a small blue square left of a large red circle")
    one = caption_labels("a small green star in the top right")
    assert one[al._H["region"]] == 2 and one[al._H["axis"]] == -1
    assert one[al._H["first_kind"]:al._H["first_kind"] + 3] == one[al._H["last_kind"]:al._H["last_kind"] + 3]
    three = caption_labels("a small red circle, a large red star and a small blue cross from top to bottom")
    assert three == [2] + [-1] * (len(HEADS) - 1)  # three shapes teach the count only
    with pytest.raises(ValueError, match="counts 1 to 3 shapes"):
        caption_labels("a small red circle, a small red circle, a small red circle and a small red circle "
                       "from left to right")


def test_prompt_match_attributes_errors_to_the_right_attribute():
    target = caption_labels("a large red circle left of a small blue square")

    def check(image_caption):
        return prompt_match(caption_labels(image_caption), target)

    assert all(check("a small blue square right of a large red circle").values())
    swapped = check("a small blue square left of a large red circle")  # right shapes, wrong places
    assert swapped == {"count": True, "kind": True, "colour": True, "size": True, "position": False}
    recoloured = check("a large blue circle left of a small red square")  # colours bound to the wrong shapes
    assert recoloured == {"count": True, "kind": True, "colour": False, "size": True, "position": True}
    vertical = check("a large red circle above a small blue square")
    assert not vertical["position"] and vertical["kind"] and vertical["colour"]
    extra = caption_labels("a small blue square right of a large red circle")
    extra[al._H["count"]] = 2  # the network sees a third shape
    assert prompt_match(extra, target) == {"count": False, "kind": True, "colour": True, "size": True,
                                           "position": True}
    one = prompt_match(caption_labels("a small red star in the centre"),
                       caption_labels("a small red star at the top"))
    assert one == {"count": True, "kind": True, "colour": True, "size": True, "position": False}


def test_text_alignment_with_an_oracle_is_one_and_shuffled_is_low():
    images, captions = rendered_shapes(300, seed=3, size=16, supersample=1, max_shapes=2)
    oracle = Oracle(images, captions)
    own = text_alignment(images, captions, oracle)
    assert own["alignment"] == 1 and all(own[a] == 1 for a in al.ATTRIBUTES) and own["n"] == 300
    assert set(own["by_count"]) == {1, 2}
    shuffled = [captions[i] for i in np.random.default_rng(0).permutation(300)]
    low = text_alignment(images, shuffled, oracle)
    assert low["alignment"] < 0.02 and low["count"] < 0.6 and low["kind"] < 0.4  # count: 1 or 2, chance 1/2
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # float input, same answer
    assert text_alignment(floats, shuffled, oracle)["alignment"] == low["alignment"]
    assert torch.equal(low["per_image"]["alignment"], text_alignment(images, shuffled, oracle)["per_image"]
                       ["alignment"])


def test_text_alignment_input_errors():
    images, captions = rendered_shapes(2, seed=0, size=16, supersample=1, max_shapes=2)
    oracle = Oracle(images, captions)
    with pytest.raises(ValueError, match="'a big red circle on the left'.*<shape>"):
        text_alignment(images, [captions[0], "a big red circle on the left"], oracle)
    three = "a small red circle, a large red star and a small blue cross from top to bottom"
    with pytest.raises(ValueError, match=f"prompt '{three}' names 3 shapes; .* one or two"):
        text_alignment(images, [captions[0], three], oracle)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        text_alignment(images, captions[:1], oracle)
    with pytest.raises(TypeError, match="sequence of str"):
        text_alignment(images, captions[0], oracle)
    with pytest.raises(ValueError, match="C = 3"):
        text_alignment(images[..., :1], captions, oracle)


# ------------------------------------------------------------------------------------------ prompts


def test_alignment_prompts_seen_and_unseen():
    held = set(DEFAULT_HOLDOUT)
    seen, unseen = alignment_prompts("seen", 200, seed=1), alignment_prompts("unseen", 200, seed=1)
    assert alignment_prompts("seen", 50, seed=1) == seen[:50]  # prompt i depends on (seed, i) only
    assert alignment_prompts("seen", 50, seed=2) != seen[:50] and len(set(seen)) > 150
    for kind, prompts in (("seen", seen), ("unseen", unseen)):
        parsed = [parse_caption(p) for p in prompts]
        assert {c.count for c in parsed} == {1, 2}
        for c in parsed:
            pairs = {f"{s.colour} {s.kind}" for s in c.shapes}
            assert (pairs & held) if kind == "unseen" else not (pairs & held), c.text()
    assert {f"{s.colour} {s.kind}" for p in unseen for s in parse_caption(p).shapes} >= held
    with pytest.raises(ValueError, match="allowed: seen, unseen"):
        alignment_prompts("novel", 3)
    with pytest.raises(ValueError, match="at least one held-out"):
        alignment_prompts("unseen", 3, holdout=())


# ------------------------------------------------------------------------------------------ the network

REDUCED = {"max_shapes": 2, "kinds": ["circle", "square", "cross"], "colours": ["red", "green", "blue"]}
REDUCED_CONFIG = dataclasses.replace(al.ATTRIBUTE_RECIPES[32][0], epochs=4, feature_dim=64)


@pytest.fixture(scope="module")
def reduced_network(tmp_path_factory):
    # ~6 s of CPU on one idle thread: fewer kinds and colours and at most two shapes so that it learns something
    return shapes_attribute_network(32, config=REDUCED_CONFIG, n_train=1500, count_weights=(1, 1),
                                    cache_dir=tmp_path_factory.mktemp("cache"), **REDUCED)


@pytest.mark.slow  # trains (the module's attribute network)
def test_reduced_network_accuracy_on_fresh_renders(reduced_network):
    acc = attribute_accuracy(reduced_network, 400, seed=11, **REDUCED)
    # thresholds well below what this configuration reaches (numbers in the comment), far above chance
    assert acc["count"] > 0.8            # 0.88 (chance 1/2)
    assert acc["axis"] > 0.8             # 0.94
    assert acc["first_colour@1"] > 0.9   # 1.0 (chance 1/3)
    assert acc["first_size@1"] > 0.8     # 0.95
    assert acc["region"] > 0.45          # 0.71 (chance 1/9)
    assert reduced_network.info["cache_status"] == "trained"
    cache_dir = reduced_network.info["cache"].split("/features/")[0]
    again = dict(config=REDUCED_CONFIG, n_train=1500, count_weights=(1, 1), cache_dir=cache_dir, **REDUCED)
    assert shapes_attribute_network(32, **again) is reduced_network  # memoised in the process
    al._MEMO.clear()
    loaded = shapes_attribute_network(32, **again)  # from the cache folder, not retrained
    assert loaded.info["cache_status"] == "loaded" and torch.equal(loaded.predict(torch.zeros(1, 3, 32, 32)),
                                                                   reduced_network.predict(torch.zeros(1, 3, 32, 32)))


@pytest.mark.slow  # trains (the module's attribute network)
def test_reduced_network_alignment_real_captions_high_shuffled_low(reduced_network):
    images, captions = rendered_shapes(400, seed=12, **REDUCED)
    own = text_alignment(images, captions, reduced_network)
    shuffled = [captions[i] for i in np.random.default_rng(1).permutation(400)]
    low = text_alignment(images, shuffled, reduced_network)
    # measured: own alignment 0.17, count 0.92, colour 0.79, position 0.79; shuffled alignment 0.007 (kinds are
    # barely learnt in this budget; the full network reaches 0.97 against 0.001, see eval/alignment.py)
    assert own["count"] > 0.8 and own["colour"] > 0.6 and own["position"] > 0.6
    assert own["alignment"] > 0.1 and low["alignment"] < 0.03
    for a in ("count", "colour", "size", "position"):
        assert own[a] > low[a] + 0.2, a
