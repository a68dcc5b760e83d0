"""Synthetic moving-shapes data: determinism, exact masks, the held-out split, and the prompt analyser."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from delta_cache.synthetic import analyse, check_video, make_video, prompts
from delta_cache.synthetic.videos import SPEED_FRACTION_PER_FRAME


def test_same_index_same_video_and_indices_differ():
    a, b = make_video(7), make_video(7)
    assert a.prompt == b.prompt and np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.object_masks, b.object_masks)
    assert a.frames.shape == (17, 128, 128, 3) and a.frames.dtype == np.uint8
    others = [make_video(i) for i in range(8, 12)] + [make_video(7, "eval")]
    assert all(not np.array_equal(a.frames, o.frames) for o in others)


def test_masks_are_exactly_the_object_pixels():
    for index in range(20):
        video = make_video(index)
        scene, frames, masks = video.scene, video.frames, video.object_masks
        assert masks.shape == (len(scene.objects),) + frames.shape[:3]
        assert not (masks.sum(axis=0) > 1).any()  # objects never overlap
        assert np.all(frames[~video.mask] == prompts.BACKGROUND_COLOURS[scene.background])
        for obj, mask in zip(scene.objects, masks):
            assert mask.sum(axis=(1, 2)).min() > 200  # visible in every frame
            assert np.all(frames[mask] == prompts.OBJECT_COLOURS[obj.colour])
            assert not mask[:, :2].any() and not mask[:, -2:].any()  # the border stays background
            assert not mask[:, :, :2].any() and not mask[:, :, -2:].any()


def test_objects_move_as_prompted():
    for index in range(20):
        video = make_video(index)
        for obj, mask in zip(video.scene.objects, video.object_masks):
            ys, xs = np.nonzero(mask[0])
            ye, xe = np.nonzero(mask[-1])
            dx, dy = (xe.mean() - xs.mean()) / 16, (ye.mean() - ys.mean()) / 16  # pixels per frame
            expected = SPEED_FRACTION_PER_FRAME[obj.speed] * 128
            moved = {"left": -dx, "right": dx, "up": -dy, "down": dy}[obj.direction]
            across = dy if obj.direction in ("left", "right") else dx
            assert moved == pytest.approx(expected, abs=0.15) and abs(across) < 0.15


def test_prompt_grammar():
    words = set(prompts.vocabulary())
    for index in range(100):
        scene = make_video(index, num_frames=1).scene
        assert set(scene.prompt.split()) <= words
        colours = [o.colour for o in scene.objects]
        assert len(set(colours)) == len(colours) and scene.background not in colours
        assert scene.prompt.endswith(f"on a {scene.background} background")
    two = make_video(0, num_objects=2, num_frames=1).scene
    assert len(two.objects) == 2 and " and a " in two.prompt


def test_held_out_split_is_disjoint_and_about_ten_percent():
    singles = [prompts.SceneSpec((prompts.ObjectSpec(c, s, d, v),), b)
               for c, s, d, v, b in itertools.product(prompts.OBJECT_COLOURS, prompts.SHAPES, prompts.DIRECTIONS,
                                                      prompts.SPEEDS, prompts.BACKGROUND_COLOURS)]
    share = np.mean([s.held_out for s in singles])
    assert 0.06 < share < 0.14
    train = {make_video(i, num_frames=1).scene.combination_key() for i in range(1500)}
    evaluation = [make_video(i, "eval", num_frames=1).scene for i in range(40)]
    assert all(s.held_out for s in evaluation)
    assert not train & {s.combination_key() for s in evaluation}
    # the order in which two objects are named does not change the combination
    a, b = prompts.ObjectSpec("red", "circle", "left", "slow"), prompts.ObjectSpec("blue", "square", "up", "fast")
    assert prompts.SceneSpec((a, b), "black").held_out == prompts.SceneSpec((b, a), "black").held_out


def test_palettes_are_far_apart():
    def distances(pairs):
        return [np.linalg.norm(np.subtract(x, y)) for x, y in pairs]

    objects, backgrounds = prompts.OBJECT_COLOURS, prompts.BACKGROUND_COLOURS
    assert min(distances(itertools.combinations(objects.values(), 2))) > 120
    assert min(distances((objects[o], backgrounds[b]) for o in objects for b in backgrounds if o != b)) > 120


@pytest.mark.parametrize("num_objects", [1, 2])
def test_analyser_recognises_ground_truth(num_objects):
    for split in ("train", "eval"):
        for index in range(30):
            video = make_video(index, split, num_objects=num_objects)
            check = check_video(video.frames, video.scene)
            assert check.agrees, (video.prompt, check.matches, check.analysis.objects)


def _blur_and_noise(frames, rng):
    x = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    blurred = sum(x[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return np.clip(blurred + rng.normal(0, 10, blurred.shape), 0, 255).astype(np.uint8)


def test_analyser_tolerates_blur_and_noise():
    rng = np.random.default_rng(0)
    videos = [make_video(i) for i in range(40)]
    agree = [check_video(_blur_and_noise(v.frames, rng), v.scene).agrees for v in videos]
    assert np.mean(agree) >= 0.95


def test_analyser_rejects_videos_that_disagree():
    video = make_video(3, num_objects=1)
    obj, scene = video.scene.objects[0], video.scene
    reversed_time = check_video(video.frames[::-1].copy(), scene)
    assert not reversed_time.agrees and reversed_time.matches["direction"] is False
    assert reversed_time.matches["shape"] and reversed_time.matches["colour"] and reversed_time.matches["speed"]

    frozen = check_video(np.repeat(video.frames[:1], 17, axis=0), scene)
    assert frozen.analysis.objects[0].direction == "static" and not frozen.agrees

    other_shape = next(s for s in prompts.SHAPES if s != obj.shape)
    other_colour = next(c for c in prompts.OBJECT_COLOURS if c not in (obj.colour, scene.background))
    other_background = next(b for b in prompts.BACKGROUND_COLOURS if b not in (scene.background, obj.colour))
    other_speed = "fast" if obj.speed == "slow" else "slow"

    def scene_with(*objects, background=scene.background):
        return prompts.SceneSpec(objects, background)

    for wrong, attribute in [
        (scene_with(replace(obj, shape=other_shape)), "shape"),
        (scene_with(replace(obj, colour=other_colour)), "colour"),
        (scene_with(replace(obj, speed=other_speed)), "speed"),
        (scene_with(obj, background=other_background), "background"),
        (scene_with(obj, replace(obj, colour=other_colour)), "count"),
    ]:
        check = check_video(video.frames, wrong)
        assert not check.agrees and check.matches[attribute] is False, attribute
        if attribute not in ("count", "colour"):  # everything else still matches (a missing colour fails all)
            assert sum(not m for m in check.matches.values()) == 1, (attribute, check.matches)


def test_analyser_on_blank_video_and_bad_input():
    blank = np.zeros((5, 64, 64, 3), np.uint8)
    analysis = analyse.analyse_video(blank)
    assert analysis.background == "black" and analysis.objects == []
    assert not check_video(blank, make_video(0, num_frames=5, height=64, width=64).scene).agrees
    with pytest.raises(ValueError):
        analyse.analyse_video(blank.astype(np.float32))
